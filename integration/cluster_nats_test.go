package integration

// Cluster-wide limits on the real nats-server (issue "limits that hold
// across every sluice process"): three `sluice run` processes of one
// cluster share a JetStream source of 12 partition subjects calling one
// function with a reservation of 6 and a "*" rule of 2 per tenant over 5
// tenants. The function itself counts the requests running at once,
// overall and per tenant, across the three processes; the test fails on
// any instant above 6 overall or 2 for a tenant (1 for tenant-0 once its
// rule is lowered), through: a steady phase, a rule change through process
// 1's API, kill -9 of a process holding capacity, a 20 s stop of the
// nats-server, and a restart of all three.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"
)

// concFn is the counting function: every request sleeps hold and counts,
// for its duration, as one running invocation of its Sluice-Scope. It runs
// every request it received to the end, as a function behind a load
// balancer does, even when sluice gave up on it (an invocation abandoned at
// a stop, or its process killed): sluice must not grant that capacity
// again while the function may still be running it. It notes the records
// of every stream batch it ran to the end (nothing lost).
type concFn struct {
	hold time.Duration
	srv  *httptest.Server

	mu        sync.Mutex
	cur       int
	scope     map[string]int
	limit     map[string]int // the per-tenant limit in force (checked from since on)
	since     time.Time      // per-tenant limits are checked for requests starting after this
	over      []string       // every violation seen
	maxAll    int
	maxScope  map[string]int
	requests  int
	weighted  float64 // ∫ cur dt over the window
	windowAt  time.Time
	lastAt    time.Time
	reached6  time.Time // last time cur reached 6
	lastStart time.Time
	running   map[*http.Request]time.Time // the requests running now, by start
	delivered map[string]int              // record key (k<n>, its subject's last token) → batches that carried it, run to the end
}

func newConcFn(t *testing.T, hold time.Duration) *concFn {
	f := &concFn{hold: hold, scope: map[string]int{}, limit: map[string]int{}, maxScope: map[string]int{},
		running: map[*http.Request]time.Time{}, delivered: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() { f.srv.CloseClientConnections(); f.srv.Close() })
	return f
}

func (f *concFn) advanceLocked(now time.Time) {
	if !f.windowAt.IsZero() {
		f.weighted += float64(f.cur) * now.Sub(f.lastAt).Seconds()
	}
	f.lastAt = now
}

// batchSubjects returns the subjects of the records of a JetStream batch
// (nil for an ingress call).
func batchSubjects(r *http.Request, body []byte) []string {
	if r.Header.Get("Sluice-Source") == "" {
		return nil
	}
	var ev struct {
		Records map[string][]struct {
			Subject string `json:"subject"`
		} `json:"records"`
	}
	if json.Unmarshal(body, &ev) != nil {
		return nil
	}
	var out []string
	for _, recs := range ev.Records {
		for _, rec := range recs {
			out = append(out, rec.Subject)
		}
	}
	return out
}

func (f *concFn) serve(w http.ResponseWriter, r *http.Request) {
	sc := r.Header.Get("Sluice-Scope")
	body, _ := io.ReadAll(r.Body)
	now := time.Now()
	f.mu.Lock()
	f.advanceLocked(now)
	f.cur++
	f.scope[sc]++
	f.requests++
	f.lastStart = now
	f.maxAll = max(f.maxAll, f.cur)
	f.maxScope[sc] = max(f.maxScope[sc], f.scope[sc])
	f.running[r] = now
	if f.cur > 6 {
		f.over = append(f.over, fmt.Sprintf("%s: %d running (limit 6; %s)", now.Format("15:04:05.000"), f.cur, f.runningLocked(now)))
	}
	lim := 2
	if n, ok := f.limit[sc]; ok && !f.since.IsZero() && now.After(f.since) {
		lim = n
	}
	if f.scope[sc] > lim {
		f.over = append(f.over, fmt.Sprintf("%s: tenant %s has %d running (limit %d; %s)", now.Format("15:04:05.000"), sc, f.scope[sc], lim, f.runningLocked(now)))
	}
	if f.cur == 6 {
		f.reached6 = now
	}
	f.mu.Unlock()
	// The invocation runs for hold, whether or not sluice is still waiting
	// for its answer.
	time.Sleep(f.hold)
	f.mu.Lock()
	f.advanceLocked(time.Now())
	f.cur--
	f.scope[sc]--
	delete(f.running, r)
	for _, s := range batchSubjects(r, body) {
		f.delivered[s[lastDot(s)+1:]]++
	}
	f.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// runningLocked describes the requests running at now: for each, its
// tenant, the client's address and how long it has been running.
func (f *concFn) runningLocked(now time.Time) string {
	var out []string
	for r, at := range f.running {
		out = append(out, fmt.Sprintf("%s from %s for %s", r.Header.Get("Sluice-Scope"), r.RemoteAddr, now.Sub(at).Round(time.Millisecond)))
	}
	slices.Sort(out)
	return "running: " + strings.Join(out, ", ")
}

// window starts a time-weighted average of the concurrency.
func (f *concFn) window() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.weighted, f.windowAt, f.lastAt = 0, time.Now(), time.Now()
}

// average ends the window: the time-weighted average concurrency in it.
func (f *concFn) average() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.advanceLocked(now)
	avg := f.weighted / now.Sub(f.windowAt).Seconds()
	f.windowAt = time.Time{}
	return avg
}

func (f *concFn) violations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.over...)
}

// clusterEnv is the stream, the publisher and the configuration of the
// cluster test.
type clusterEnv struct {
	js             jetstream.JetStream
	stream, prefix string
	cfgs           []string // one configuration per process (own state_dir)
	published      int      // guarded by the function's mu
	acked          []string // the keys (k<n>) of the records the stream confirmed; guarded by the function's mu
}

// publish keeps about backlog records waiting: it publishes (at most 200
// a second) while fewer than backlog records are published and not yet
// invoked. Records carry tenants 0..4 in turn.
func (e *clusterEnv) publish(ctx context.Context, fn *concFn, backlog int) {
	seq := 0
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for range 10 {
			fn.mu.Lock()
			waiting := e.published - fn.requests
			fn.mu.Unlock()
			if waiting >= backlog {
				break
			}
			key := fmt.Sprintf("k%d", seq)
			m := nats.NewMsg(e.prefix + "." + key)
			m.Header.Set("tenant", fmt.Sprintf("tenant-%d", seq%5))
			m.Data = []byte("x")
			seq++
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if _, err := e.js.PublishMsg(pctx, m); err == nil { // the nats-server outage loses publishes: fine, nothing is checked on them
				fn.mu.Lock()
				e.published++
				e.acked = append(e.acked, key)
				fn.mu.Unlock()
			}
			cancel()
		}
	}
}

// ingressLoad runs clients synchronous invocations of fn through the HTTP
// ingress of the processes chosen by pick (called before each request),
// with tenants in turn; a 429 (no slot here now) is retried after 20 ms.
// It is the load that reaches every process, whichever owns the stream's
// partitions (JetStream pins them all to one process while it lives).
//
// Ending ctx stops the clients after their current request: none is
// cancelled in flight.
func ingressLoad(ctx context.Context, clients int, pick func(i int) *sluiceProc) *sync.WaitGroup {
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 15 * time.Second}
	for c := range clients {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				p := pick(c)
				if p == nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				url := fmt.Sprintf("http://%s/v1/scope/tenant-%d/functions/fn/invocations", p.admin, (c+n)%5)
				req, _ := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodPost, url, strings.NewReader("{}"))
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusTooManyRequests {
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
	return &wg
}

// waitAllDelivered waits until the function ran every record of the stream
// at least once (nothing lost), as the broker holds them (read back from
// the stream), and every record whose publication the stream confirmed is
// among them; then until the source's consumers are settled (nothing
// pending, nothing waiting for an ack). It reports the records run more
// than once.
func (e *clusterEnv) waitAllDelivered(t *testing.T, fn *concFn, within time.Duration) {
	t.Helper()
	start := time.Now()
	src := jsChaosSource{js: e.js, stream: e.stream, source: "orders", partitions: 12}
	var held, dups int
	eventually(t, within, "every record of the stream reaches the function", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		recs, err := src.Records(ctx)
		if err != nil {
			return err
		}
		fn.mu.Lock()
		defer fn.mu.Unlock()
		inStream := make(map[string]bool, len(recs))
		var missing []string
		dups = 0
		for _, r := range recs {
			inStream[r.Key] = true
			switch n := fn.delivered[r.Key]; {
			case n == 0:
				missing = append(missing, r.Key)
			case n > 1:
				dups++
			}
		}
		held = len(recs)
		for _, k := range e.acked {
			if !inStream[k] {
				return fmt.Errorf("record %s was confirmed by the stream but is not in it", k)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of the %d records of the stream not delivered, first %v", len(missing), len(recs), missing[:min(5, len(missing))])
		}
		return nil
	})
	eventually(t, 30*time.Second, "the source's consumers are settled", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		return src.Settled(ctx)
	})
	fn.mu.Lock()
	acked := len(e.acked)
	fn.mu.Unlock()
	t.Logf("nothing lost: all %d records of the stream (%d confirmed to the publisher) reached the function (%d more than once) and the consumers settled, %s after publishing stopped",
		held, acked, dups, time.Since(start).Round(time.Millisecond))
}

func writeClusterConfig(t *testing.T, url, clusterName, stream, prefix, fnURL string) string {
	t.Helper()
	doc := map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers":   map[string]any{"bus": map[string]any{"nats": map[string]any{"url": url, "ack_wait": "5s"}}},
		"cluster":   map[string]any{"name": clusterName, "broker": "bus", "lease": "3s"},
		"functions": map[string]any{"fn": map[string]any{"url": fnURL, "timeout": "10s", "reserved_concurrency": 6}},
		"rules":     []any{map[string]any{"pattern": "*", "concurrency": 2}},
		"sources": map[string]any{"orders": map[string]any{
			"stream": stream, "subject": prefix + ".*", "partitions": 12, "mode": "stream", "function": "fn",
			"scope": "header:tenant", "batch_size": 1,
			"retry_backoff": map[string]any{"initial": "50ms", "max": "200ms"},
		}},
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// api calls the admin API of p.
func api(p *sluiceProc, method, path string, body any, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+p.admin+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e bytes.Buffer
		_, _ = e.ReadFrom(resp.Body)
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, e.String())
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

type clusterView struct {
	Members []struct {
		ID       string         `json:"id"`
		Shares   map[string]int `json:"shares"`
		LeaseAge string         `json:"leaseAge"`
		Self     bool           `json:"self"`
	} `json:"members"`
}

// histogramQuantile estimates quantile q of a Prometheus histogram from
// its buckets (the upper bound of the bucket holding it).
func histogramQuantile(t *testing.T, procs []*sluiceProc, name string, q float64) (float64, float64) {
	bounds := []string{"0.05", "0.1", "0.2", "0.3", "0.5", "0.75", "1", "1.5", "2", "3", "5", "10", "30", "+Inf"}
	counts := make([]float64, len(bounds))
	for _, p := range procs {
		for i, b := range bounds {
			v, err := p.metric(name+"_bucket", map[string]string{"le": b})
			if err == nil {
				counts[i] += v
			}
		}
	}
	total := counts[len(counts)-1]
	if total == 0 {
		return math.NaN(), 0
	}
	for i, c := range counts {
		if c >= q*total {
			if bounds[i] == "+Inf" {
				return math.Inf(1), total
			}
			var f float64
			_, _ = fmt.Sscanf(bounds[i], "%g", &f)
			return f, total
		}
	}
	return math.Inf(1), total
}

// startCluster creates the 12-partition stream, the counting function and
// three `sluice run` processes of one cluster over them.
func startCluster(t *testing.T, url string) (*clusterEnv, *concFn, []*sluiceProc) {
	t.Helper()
	_, js := newJetStream(t)
	env := &clusterEnv{js: js}
	env.stream = strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "CL"), "_"))
	env.prefix = strings.ToLower(env.stream)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: env.stream, Subjects: []string{env.prefix + ".*"},
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: env.prefix + ".*",
			Destination: fmt.Sprintf("%s.{{partition(12,1)}}.{{wildcard(1)}}", env.prefix)},
		Storage: jetstream.FileStorage, MaxMsgs: 20000,
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		_ = js.DeleteStream(ctx, env.stream)
	})
	fn := newConcFn(t, 100*time.Millisecond)
	clusterName := unsafeName.ReplaceAllString(uniqueName(t, "c"), "_")
	procs := make([]*sluiceProc, 3)
	for i := range procs {
		env.cfgs = append(env.cfgs, writeClusterConfig(t, url, clusterName, env.stream, env.prefix, fn.srv.URL+"/invoke"))
		procs[i] = startSluice(t, fmt.Sprintf("sluice %d", i+1), env.cfgs[i])
	}
	return env, fn, procs
}

// check fails the test if the function ever saw more running than a limit.
func (f *concFn) check(t *testing.T, phase string) {
	t.Helper()
	if v := f.violations(); len(v) > 0 {
		t.Fatalf("%s: over-admitted %d times, first: %s", phase, len(v), strings.Join(v[:min(5, len(v))], "; "))
	}
}

// waitCalled waits (up to within) until the cluster called the function 50
// times.
func (f *concFn) waitCalled(t *testing.T, within time.Duration) {
	t.Helper()
	eventually(t, within, "the function is called by the cluster", func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.requests < 50 {
			return fmt.Errorf("%d requests", f.requests)
		}
		return nil
	})
}

// killHolder kills process victim (kill -9; procs[victim] becomes nil under
// mu) and measures how long until the survivors' shares of fn add up to
// the whole reservation (6) again, and until the function sees 6 running
// (each within wait).
func killHolder(t *testing.T, mu *sync.Mutex, procs []*sluiceProc, victim int, fn *concFn, wait time.Duration) (shareBack, running6 time.Duration) {
	t.Helper()
	mu.Lock()
	dead := procs[victim]
	procs[victim] = nil
	mu.Unlock()
	dead.kill()
	killed := time.Now()
	fn.mu.Lock()
	fn.reached6 = time.Time{}
	fn.mu.Unlock()
	eventually(t, wait, "the others' shares of fn reach 6 again", func() error {
		sum := 0.0
		for i := range procs {
			mu.Lock()
			p := procs[i]
			mu.Unlock()
			if p == nil {
				continue
			}
			v, err := p.metric("sluice_cluster_share", map[string]string{"function": "fn"})
			if err != nil {
				return err
			}
			sum += v
		}
		if sum < 6 {
			return fmt.Errorf("shares %v", sum)
		}
		shareBack = time.Since(killed)
		return nil
	})
	eventually(t, wait, "the others reach 6 running again", func() error {
		fn.mu.Lock()
		defer fn.mu.Unlock()
		if fn.reached6.After(killed) {
			running6 = fn.reached6.Sub(killed)
			return nil
		}
		return fmt.Errorf("max so far %d", fn.maxAll)
	})
	return shareBack, running6
}

// fnShare is process p's share of function fn (sluice_cluster_share); 0
// when it does not answer.
func fnShare(p *sluiceProc) float64 {
	v, _ := p.metric("sluice_cluster_share", map[string]string{"function": "fn"})
	return v
}

func TestClusterNATS(t *testing.T) {
	url := natsURL(t) // skipNoBroker without a nats-server
	brokersDir := os.Getenv("SLUICE_TEST_BROKERS_DIR")
	if brokersDir == "" && os.Getenv(envRequire) == "1" {
		// The outage phase stops and starts the run's own nats-server: a
		// run that must meet every broker may not leave it out.
		t.Fatalf("SLUICE_TEST_BROKERS_DIR is unset, so the nats-server outage phase cannot run "+
			"(run under scripts/brokers/with-brokers.sh; %s=1: a missing broker is a failure)", envRequire)
	}
	env, fn, procs := startCluster(t, url)
	c := &clusterRun{t: t, fn: fn, cfgs: env.cfgs, procs: procs}
	pubCtx, stopPub := context.WithCancel(t.Context())
	defer stopPub()
	go env.publish(pubCtx, fn, 150)

	// Phase 1: steady demand.
	fn.waitCalled(t, 60*time.Second)
	c.steady()

	// Uneven demand: processes 2 and 3 loaded in turn; the fair part of
	// the newly loaded one is 3 of 6 (process 1 owns the stream's
	// partitions and keeps their demand).
	c.unevenDemand(3, 1, 2, 1, 2, 1, 2)

	// From here on every process has demand: ingress load on all three
	// beside the stream on the process that owns its partitions.
	lctx, stopLoad := context.WithCancel(t.Context())
	lwg := ingressLoad(lctx, 6, c.proc)
	defer func() { stopLoad(); lwg.Wait() }()
	fn.window()
	time.Sleep(5 * time.Second)
	t.Logf("load on all three processes: time-weighted average concurrency %.2f of 6 over 5s", fn.average())
	c.check("load on all three")

	// Phase 2: a rule changed through process 1's API holds on 2 and 3.
	c.ruleChange()
	c.logHandoffs("before the kill")

	// Phase 3: kill -9 of a process holding capacity.
	victim, shareBack, back := c.killHolder(30 * time.Second)
	t.Logf("kill -9 of process %d holding capacity: the others hold all 6 after %s, the function sees 6 running again after %s (lease 3s; its partitions move after the pin TTL, 2 × ack_wait = 10s)",
		victim+1, shareBack.Round(time.Millisecond), back.Round(time.Millisecond))
	if shareBack > 3*time.Second+2*time.Second {
		t.Errorf("the others took %s to hold the whole reservation again, want lease (3s) + about a second", shareBack)
	}

	// Phase 4: the nats-server stops for 20 s.
	if brokersDir != "" {
		c.outage("nats", 60*time.Second)
	} else {
		t.Log("SLUICE_TEST_BROKERS_DIR unset: the nats-server outage phase needs scripts/brokers/with-brokers.sh")
	}

	// Phase 5: all three restart; the rule changed through the API is kept.
	stopLoad()
	lwg.Wait()
	c.restartAll()
	time.Sleep(3 * time.Second)
	stopPub()
	c.check("restart")
	// Nothing lost through the kill -9, the outage and the restarts: the
	// stream's records reach the function once the new processes own the
	// partitions (after the pin TTL, 2 × ack_wait, and ack_wait for the
	// redelivery of what the stopped processes had in flight).
	env.waitAllDelivered(t, fn, 90*time.Second)
	c.check("drain")
	fn.mu.Lock()
	t.Logf("overall: %d requests, max running %d (limit 6), max per tenant %v", fn.requests, fn.maxAll, fn.maxScope)
	fn.mu.Unlock()
}
