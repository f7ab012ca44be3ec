package integration

// TestChaosCluster: three `sluice run` processes of one cluster (the setup
// of TestClusterNATS: a reservation of 6, a "*" rule of 2 over 5 tenants, a
// JetStream stream source of 12 partitions, and synchronous ingress load on
// every process) while a process holding capacity, picked at random, is
// killed with kill -9 and started again, over and over (every second
// round also a graceful stop and start of a holder). Checked: never
// more than 6 running at the function, nor 2 for one tenant; after each
// kill the survivors hold the whole reservation again within lease +
// rebalance (measured; fails beyond lease + 2 s); every record the stream
// confirmed reaches the function (nothing lost). SLUICE_CHAOS=short (make
// chaos-short, CI): 3 kills, about a minute and a half; long (make chaos):
// 12 kills.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestChaosCluster(t *testing.T) {
	mode := os.Getenv(chaosEnv)
	if mode == "" {
		t.Skipf("%s is not set: the cluster chaos run kills processes over and over, run it with `make chaos-short` or `make chaos`", chaosEnv)
	}
	kills := map[string]int{"short": 3, "long": 12}[mode]
	if kills == 0 {
		t.Fatalf("%s=%q: want short or long", chaosEnv, mode)
	}
	const lease = 3 * time.Second // writeClusterConfig's
	env, fn, procs := startCluster(t, natsURL(t))
	pubCtx, stopPub := context.WithCancel(t.Context())
	defer stopPub()
	go env.publish(pubCtx, fn, 150)

	var aliveMu sync.Mutex
	alive := func(i int) *sluiceProc {
		aliveMu.Lock()
		defer aliveMu.Unlock()
		return procs[i%3]
	}
	lctx, stopLoad := context.WithCancel(t.Context())
	lwg := ingressLoad(lctx, 9, alive)
	defer func() { stopLoad(); lwg.Wait() }()
	check := func(phase string) { fn.check(t, phase) }
	fn.waitCalled(t, 60*time.Second)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var shareBack, running6 []time.Duration
	fn.window()
	// holder picks a process holding a share of fn at random.
	holder := func() int {
		var holders []int
		eventually(t, 20*time.Second, "a process holds a share of fn", func() error {
			holders = holders[:0]
			for i, p := range procs {
				if fnShare(p) > 0 {
					holders = append(holders, i)
				}
			}
			if len(holders) == 0 {
				return fmt.Errorf("none")
			}
			return nil
		})
		return holders[rng.IntN(len(holders))]
	}
	restart := func(i int, name string) {
		p := startSluice(t, name, env.cfgs[i])
		aliveMu.Lock()
		procs[i] = p
		aliveMu.Unlock()
		time.Sleep(3 * time.Second) // the restarted process wins a share back
	}
	stops := 0
	for k := range kills {
		victim := holder()
		held := fnShare(procs[victim])
		back, ran6 := killHolder(t, &aliveMu, procs, victim, fn, 30*time.Second)
		shareBack = append(shareBack, back)
		running6 = append(running6, ran6)
		t.Logf("kill %d: process %d held %v of 6; the survivors hold all 6 after %s, the function sees 6 running after %s",
			k+1, victim+1, held, back.Round(time.Millisecond), ran6.Round(time.Millisecond))
		if back > lease+2*time.Second {
			t.Errorf("kill %d: the survivors took %s to hold the whole reservation again, want lease (%s) + about a second", k+1, back, lease)
		}
		check(fmt.Sprintf("kill %d", k+1))
		restart(victim, fmt.Sprintf("sluice %d (after kill %d)", victim+1, k+1))
		if k%2 == 1 {
			// Every second round, a graceful stop (SIGTERM) of a holder
			// too: its sources abandon invocations the function still
			// runs, and nobody may be granted that capacity meanwhile.
			stops++
			i := holder()
			aliveMu.Lock()
			p := procs[i]
			procs[i] = nil
			aliveMu.Unlock()
			if code := p.stop(syscall.SIGTERM); code != 0 {
				t.Fatalf("process %d exited %d after SIGTERM, want 0", i+1, code)
			}
			check(fmt.Sprintf("SIGTERM %d", stops))
			restart(i, fmt.Sprintf("sluice %d (after SIGTERM %d)", i+1, stops))
			check(fmt.Sprintf("restart after SIGTERM %d", stops))
		}
	}
	avg := fn.average()
	stopLoad()
	lwg.Wait()
	stopPub()
	env.waitAllDelivered(t, fn, 120*time.Second)
	check("drain")
	slices.Sort(shareBack)
	slices.Sort(running6)
	fn.mu.Lock()
	t.Logf("%d kill -9 and %d SIGTERM restarts (lease %s): the survivors held all 6 again after %v (max %s); 6 running again after %v; "+
		"time-weighted average concurrency %.2f of 6; over-admission 0 (max running %d, max per tenant %v) over %d requests",
		kills, stops, lease, shareBack, shareBack[len(shareBack)-1].Round(time.Millisecond), running6, avg, fn.maxAll, fn.maxScope, fn.requests)
	fn.mu.Unlock()
}
