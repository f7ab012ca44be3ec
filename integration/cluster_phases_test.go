package integration

// The phases of the cluster acceptance tests that do not depend on the
// engine's broker: steady demand, uneven demand, a rule change through
// process 1's API, kill -9 of a process holding capacity, a stop of a
// broker, a restart of all three.
// TestClusterKafka and TestClusterNATS run them.

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// clusterRun is three `sluice run` processes of one cluster and the
// counting function they call.
type clusterRun struct {
	t    *testing.T
	fn   *concFn
	cfgs []string // one configuration per process

	mu    sync.Mutex // guards procs
	procs []*sluiceProc
}

// proc returns process i%3, nil while it is dead (for ingressLoad).
func (c *clusterRun) proc(i int) *sluiceProc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[i%len(c.procs)]
}

// check fails the test on any over-admission the function saw so far.
func (c *clusterRun) check(phase string) {
	c.t.Helper()
	c.fn.check(c.t, phase)
}

// steady measures the time-weighted concurrency the function sees over 8 s
// (want most of the 6 in use) and that GET /v1/cluster lists the three
// members.
func (c *clusterRun) steady() {
	t := c.t
	t.Helper()
	c.fn.window()
	time.Sleep(8 * time.Second)
	avg := c.fn.average()
	c.check("steady")
	var cv clusterView
	if err := api(c.proc(0), http.MethodGet, "/v1/cluster", nil, &cv); err != nil {
		t.Fatal(err)
	}
	t.Logf("steady: time-weighted average concurrency %.2f of 6 over 8s; %d members", avg, len(cv.Members))
	if len(cv.Members) != 3 {
		t.Errorf("GET /v1/cluster lists %d members, want 3", len(cv.Members))
	}
	if avg < 3 {
		t.Errorf("steady: average concurrency %.2f, want most of the 6 in use", avg)
	}
}

// unevenDemand puts ingress load on one process at a time, in the order
// given (process indexes); the time from a switch until the newly loaded
// process's share of fn reaches fair (its fair part beside the source's
// demand) is one hand-off, and each must take about a second.
func (c *clusterRun) unevenDemand(fair float64, order ...int) {
	t := c.t
	t.Helper()
	var (
		loadMu sync.Mutex
		loaded *sluiceProc
	)
	uctx, stopUneven := context.WithCancel(t.Context())
	uwg := ingressLoad(uctx, 6, func(int) *sluiceProc { loadMu.Lock(); defer loadMu.Unlock(); return loaded })
	var handoffs []time.Duration
	for _, i := range order {
		next := c.proc(i)
		loadMu.Lock()
		loaded = next
		loadMu.Unlock()
		switched := time.Now()
		eventually(t, 15*time.Second, "the loaded process holds its fair part", func() error {
			if v := fnShare(next); v < fair {
				return fmt.Errorf("share %v", v)
			}
			return nil
		})
		handoffs = append(handoffs, time.Since(switched))
		time.Sleep(1500 * time.Millisecond)
	}
	stopUneven()
	uwg.Wait()
	slices.Sort(handoffs)
	t.Logf("uneven demand: %d hand-offs to the newly loaded process (its share of fn ≥ %v of 6, from the switch of the load, metrics polled): %v; max %s",
		len(handoffs), fair, handoffs, handoffs[len(handoffs)-1].Round(time.Millisecond))
	if handoffs[len(handoffs)-1] > 3*time.Second {
		t.Errorf("a hand-off took %s, want about a second", handoffs[len(handoffs)-1])
	}
	c.check("uneven demand")
}

// ruleChange lowers tenant-0's rule to 1 through process 1's API and
// measures when processes 2 and 3 apply it (want ≤ 1s); from then on (plus
// one invocation) the function checks tenant-0 against 1.
func (c *clusterRun) ruleChange() {
	t := c.t
	t.Helper()
	changed := time.Now()
	if err := api(c.proc(0), http.MethodPut, "/v1/rules/tenant-0", map[string]any{"concurrency": 1}, nil); err != nil {
		t.Fatal(err)
	}
	var seenAt [3]time.Duration
	eventually(t, 10*time.Second, "processes 2 and 3 see the new rule", func() error {
		for i := 1; i < 3; i++ {
			if seenAt[i] > 0 {
				continue
			}
			var r struct {
				Concurrency int `json:"concurrency"`
			}
			if err := api(c.proc(i), http.MethodGet, "/v1/rules/tenant-0", nil, &r); err == nil && r.Concurrency == 1 {
				seenAt[i] = time.Since(changed)
			}
		}
		if seenAt[1] == 0 || seenAt[2] == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	t.Logf("rule change through process 1: seen by process 2 after %s, process 3 after %s",
		seenAt[1].Round(time.Millisecond), seenAt[2].Round(time.Millisecond))
	if seenAt[1] > time.Second || seenAt[2] > time.Second {
		t.Errorf("the rule change took more than 1s to apply on every process")
	}
	c.fn.mu.Lock()
	c.fn.limit["tenant-0"] = 1
	c.fn.since = changed.Add(max(seenAt[1], seenAt[2]) + c.fn.hold + 50*time.Millisecond)
	c.fn.mu.Unlock()
	time.Sleep(3 * time.Second)
	c.check("rule change")
}

// logHandoffs logs the hand-off latency the members measured.
func (c *clusterRun) logHandoffs(when string) {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	p50, n := histogramQuantile(c.t, procs, "sluice_cluster_rebalance_seconds", 0.5)
	p99, _ := histogramQuantile(c.t, procs, "sluice_cluster_rebalance_seconds", 0.99)
	c.t.Logf("hand-off (sluice_cluster_rebalance_seconds over the three processes, %s): %0.f hand-offs, p50 ≤ %.2fs, p99 ≤ %.2fs", when, n, p50, p99)
}

// killHolder kills -9 a process holding a share of fn and measures how
// long the others take to hold all 6 (shareBack) and until the function
// sees 6 running again (back); the dead process is started again after.
func (c *clusterRun) killHolder(wait time.Duration) (victim int, shareBack, back time.Duration) {
	t := c.t
	t.Helper()
	victim = -1
	for i := range 3 {
		if v, err := c.proc(i).metric("sluice_cluster_share", map[string]string{"function": "fn"}); err == nil && v > 0 {
			victim = i
			break
		}
	}
	if victim < 0 {
		t.Fatal("no process holds a share of fn")
	}
	shareBack, back = killHolder(t, &c.mu, c.procs, victim, c.fn, wait)
	c.check("kill -9")
	restarted := startSluice(t, fmt.Sprintf("sluice %d again", victim+1), c.cfgs[victim])
	c.mu.Lock()
	c.procs[victim] = restarted
	c.mu.Unlock()
	return victim, shareBack, back
}

// outage stops the run's broker component ("kafka", "nats") for 20 s and
// waits until the cluster calls the function again (within), with
// no restart of sluice.
func (c *clusterRun) outage(component string, within time.Duration) {
	t := c.t
	t.Helper()
	brokerCtl(t, "down.sh", component)
	stopped := time.Now()
	time.Sleep(20 * time.Second)
	brokerCtl(t, "up.sh", component)
	up := time.Now()
	c.fn.mu.Lock()
	before := c.fn.requests
	c.fn.mu.Unlock()
	eventually(t, within, "the cluster calls the function again after the outage", func() error {
		c.fn.mu.Lock()
		defer c.fn.mu.Unlock()
		if c.fn.requests < before+50 {
			return fmt.Errorf("%d requests since", c.fn.requests-before)
		}
		return nil
	})
	t.Logf("%s down %s: invocations flowing again %s after it was back, no restart", component, up.Sub(stopped).Round(time.Millisecond),
		time.Since(up).Round(time.Millisecond))
	c.check(component + " outage")
}

// restartAll stops the three processes (SIGTERM) and starts them again;
// the rule changed through the API (ruleChange) is still in force on each.
func (c *clusterRun) restartAll() {
	t := c.t
	t.Helper()
	for i := range 3 {
		c.proc(i).stop(syscall.SIGTERM)
	}
	for i := range 3 {
		p := startSluice(t, fmt.Sprintf("sluice %d restarted", i+1), c.cfgs[i])
		c.mu.Lock()
		c.procs[i] = p
		c.mu.Unlock()
	}
	for i := range 3 {
		var r struct {
			Concurrency int    `json:"concurrency"`
			Origin      string `json:"origin"`
		}
		if err := api(c.proc(i), http.MethodGet, "/v1/rules/tenant-0", nil, &r); err != nil {
			t.Fatalf("process %d after the restart: %v", i+1, err)
		}
		if r.Concurrency != 1 || r.Origin != "api" {
			t.Errorf("process %d after the restart: rule tenant-0 = %+v, want concurrency 1 from the api", i+1, r)
		}
	}
}
