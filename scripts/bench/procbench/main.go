// Command procbench measures `sluice run` out of process against the bare
// floor program (scripts/bench/floor) on a real Kafka broker: the same
// topic, the same HTTP function (served here, answering 200 after -delay),
// a fresh consumer group per run, runs of the two interleaved. Each run is
// timed from the first request the function receives to the last record
// of the topic; CPU (user + system) and peak RSS are the child process's
// own (getrusage). It prints one line per run and a table of medians and
// ratios. `make bench` runs it with 200k records (step "process");
// the 1M-record version:
//
//	SLUICE_TEST_KAFKA=127.0.0.1:9092 go run ./scripts/bench/procbench -records 1000000 -rounds 3
//
// The broker is SLUICE_TEST_KAFKA (scripts/brokers/with-brokers.sh sets it).
// Under with-brokers.sh (SLUICE_TEST_BROKERS_DIR) it also reports the
// broker's CPU per record during each run, read from /proc: the broker
// shares the machine, and the CPU it spends serving one side (commits,
// fetches) is CPU the function and that side lack.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// scenario is one configuration measured on both sides (the floor has no
// parallelization_factor: it keeps -inflight requests in flight).
type scenario struct {
	name  string
	batch int
	delay time.Duration
	pf    int // sluice's parallelization_factor
	floor bool
	// one reads the topic of one partition (a quarter of the records):
	// parallelization_factor compared on the same partition, where eight
	// partitions × pf 10 would measure only the CPUs of the machine.
	one bool
	// ordered runs the floor with -ordered: one request per partition in
	// flight, the order sluice keeps with parallelization_factor 1.
	ordered bool
}

var scenarios = []scenario{
	{"b100 0ms pf1", 100, 0, 1, true, false, false},
	{"b500 0ms pf1", 500, 0, 1, true, false, false},
	{"b500 0ms pf1 ordered floor", 500, 0, 1, true, false, true},
	// Two lanes a partition: 16 requests in flight, as the floor's, with
	// each key's order kept.
	{"b500 0ms pf2", 500, 0, 2, true, false, false},
	{"b100 5ms pf1", 100, 5 * time.Millisecond, 1, true, false, false},
	{"b100 5ms pf10", 100, 5 * time.Millisecond, 10, false, false, false}, // against the floor of "b100 5ms pf1"
	{"1p b100 5ms pf1", 100, 5 * time.Millisecond, 1, false, true, false},
	{"1p b100 5ms pf10", 100, 5 * time.Millisecond, 10, false, true, false},
}

type result struct {
	recPerSec float64
	perCall   float64 // records per request the function received
	cpuPerRec time.Duration
	rssMiB    float64
	// brokerPerRec is the broker's CPU during the run per record; -1 when
	// its process is not known.
	brokerPerRec time.Duration
	// fnPerRec is this process's CPU during the run per record: almost all
	// of it the function's (reading and counting the bodies), which grows
	// with what a side sends it.
	fnPerRec time.Duration
}

func main() {
	records := flag.Int("records", 200000, "records in the topic (200 bytes each, 10,000 keys)")
	partitions := flag.Int("partitions", 8, "partitions of the topic")
	rounds := flag.Int("rounds", 2, "interleaved rounds (floor, sluice, floor, ...)")
	run := flag.String("run", "", "only scenarios whose name contains this")
	depth := flag.Int("depth", -1, "commit_pipeline_depth for sluice (-1: its default)")
	flag.Parse()
	broker := os.Getenv("SLUICE_TEST_KAFKA")
	if broker == "" {
		fmt.Fprintln(os.Stderr, "procbench: SLUICE_TEST_KAFKA is not set (make bench sets it)")
		os.Exit(2)
	}
	if err := bench(broker, *records, *partitions, *rounds, *run, *depth); err != nil {
		fmt.Fprintln(os.Stderr, "procbench:", err)
		os.Exit(1)
	}
}

func bench(broker string, records, partitions, rounds int, only string, depth int) error {
	dir, err := os.MkdirTemp("", "procbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sluiceBin, floorBin := filepath.Join(dir, "sluice"), filepath.Join(dir, "floor")
	for bin, pkg := range map[string]string{sluiceBin: "./cmd/sluice", floorBin: "./scripts/bench/floor"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", pkg, err, out)
		}
	}
	topic := fmt.Sprintf("procbench-%d", time.Now().UnixNano())
	if err := produce(broker, topic, records, partitions); err != nil {
		return err
	}
	defer deleteTopic(broker, topic)
	topic1, records1 := topic+"-1p", records/4
	if err := produce(broker, topic1, records1, 1); err != nil {
		return err
	}
	defer deleteTopic(broker, topic1)

	fn := newFunction()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: fn, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/"

	results := map[string][]result{}
	for r := 0; r < rounds; r++ {
		for _, sc := range scenarios {
			if only != "" && !strings.Contains(sc.name, only) {
				continue
			}
			fn.delay.Store(int64(sc.delay))
			sides := []string{"sluice", "floor"}
			if r%2 == 1 {
				sides = []string{"floor", "sluice"}
			}
			for _, side := range sides {
				if side == "floor" && !sc.floor {
					continue
				}
				group := fmt.Sprintf("procbench-%s-%d-%d", side, r, time.Now().UnixNano())
				topic, records := topic, records
				if sc.one {
					topic, records = topic1, records1
				}
				var cmd *exec.Cmd
				if side == "floor" {
					cmd = exec.Command(floorBin, "-brokers", broker, "-topic", topic, "-group", group, "-url", url,
						"-batch", fmt.Sprint(sc.batch), "-inflight", "16", fmt.Sprintf("-ordered=%t", sc.ordered))
				} else {
					cfg, err := sluiceConfig(dir, broker, topic, group, url, sc, depth)
					if err != nil {
						return err
					}
					cmd = exec.Command(sluiceBin, "run", "-c", cfg, "--log-level", "warn")
					cmd.Dir = dir
				}
				res, err := measure(cmd, fn, int64(records))
				if err != nil {
					return fmt.Errorf("%s %s: %w", sc.name, side, err)
				}
				key := sc.name + "|" + side
				results[key] = append(results[key], res)
				fmt.Printf("round %d %-14s %-6s %10.0f rec/s %7.2f µs CPU/rec %7.1f MiB peak RSS %6.1f rec/call %7s µs broker CPU/rec %5.2f µs function CPU/rec\n",
					r+1, sc.name, side, res.recPerSec, us(res.cpuPerRec), res.rssMiB, res.perCall, brokerUS(res.brokerPerRec), us(res.fnPerRec))
			}
		}
	}
	fmt.Printf("\n%d records, %d partitions, %d rounds, medians; ratios sluice ÷ floor (CPU: floor ÷ sluice)\n", records, partitions, rounds)
	fmt.Println("| scenario | sluice rec/s | floor rec/s | × floor | sluice CPU µs/rec | floor CPU µs/rec | CPU ratio (floor÷sluice) | sluice peak RSS MiB | floor peak RSS MiB | broker CPU µs/rec (sluice / floor) |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, sc := range scenarios {
		s, f := median(results[sc.name+"|sluice"]), median(results[sc.name+"|floor"])
		if f == nil && !sc.one {
			f = median(results[strings.Replace(sc.name, "pf10", "pf1", 1)+"|floor"]) // the floor has no lanes
		}
		if s == nil {
			continue
		}
		if f == nil {
			fmt.Printf("| %s | %.0f | | | %.2f | | | %.0f | | %s |\n", sc.name, s.recPerSec, us(s.cpuPerRec), s.rssMiB, brokerUS(s.brokerPerRec))
			continue
		}
		fmt.Printf("| %s | %.0f | %.0f | %.3f | %.2f | %.2f | %.3f | %.0f | %.0f | %s / %s |\n", sc.name, s.recPerSec, f.recPerSec,
			s.recPerSec/f.recPerSec, us(s.cpuPerRec), us(f.cpuPerRec), float64(f.cpuPerRec)/float64(s.cpuPerRec), s.rssMiB, f.rssMiB,
			brokerUS(s.brokerPerRec), brokerUS(f.brokerPerRec))
	}
	for _, p := range []string{"", "1p "} {
		if a, b := median(results[p+"b100 5ms pf1|sluice"]), median(results[p+"b100 5ms pf10|sluice"]); a != nil && b != nil {
			fmt.Printf("\nsluice %sb100 5ms: pf10 ÷ pf1 = %.2f\n", p, b.recPerSec/a.recPerSec)
		}
	}
	return nil
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// brokerUS formats a broker CPU per record in µs, "n/a" when the broker's
// process was not known (brokerCPU).
func brokerUS(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	return strconv.FormatFloat(us(d), 'f', 2, 64)
}

func median(rs []result) *result {
	if len(rs) == 0 {
		return nil
	}
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return &result{
		recPerSec:    pick(func(r result) float64 { return r.recPerSec }),
		cpuPerRec:    time.Duration(pick(func(r result) float64 { return float64(r.cpuPerRec) })),
		rssMiB:       pick(func(r result) float64 { return r.rssMiB }),
		brokerPerRec: time.Duration(pick(func(r result) float64 { return float64(r.brokerPerRec) })),
		fnPerRec:     time.Duration(pick(func(r result) float64 { return float64(r.fnPerRec) })),
	}
}

// measure runs cmd until the function received n records, then stops it
// with SIGTERM and reads its resource usage.
func measure(cmd *exec.Cmd, fn *function, n int64) (result, error) {
	fn.reset()
	b0, f0 := brokerCPU(), selfCPU()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for fn.records.Load() < n {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return result{}, fmt.Errorf("only %d of %d records after 10 min; its log:\n%s", fn.records.Load(), n, tail(stderr.String()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	end := time.Now()
	first := time.Unix(0, fn.first.Load())
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return result{}, fmt.Errorf("no resource usage")
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	brokerPerRec := time.Duration(-1)
	if b0 >= 0 {
		if b1 := brokerCPU(); b1 >= 0 {
			brokerPerRec = (b1 - b0) / time.Duration(n)
		}
	}
	return result{
		brokerPerRec: brokerPerRec,
		fnPerRec:     (selfCPU() - f0) / time.Duration(n),
		recPerSec:    float64(n) / end.Sub(first).Seconds(),
		perCall:      float64(fn.records.Load()) / float64(max(fn.calls.Load(), 1)),
		cpuPerRec:    cpu / time.Duration(n),
		rssMiB:       float64(ru.Maxrss) / 1024, // KiB on Linux
	}, nil
}

// selfCPU returns the CPU time (user + system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// brokerCPU returns the CPU time (user + system) the Kafka broker started
// by with-brokers.sh has used, or -1 when it is not known.
func brokerCPU() time.Duration {
	dir := os.Getenv("SLUICE_TEST_BROKERS_DIR")
	if dir == "" {
		return -1
	}
	pid, err := os.ReadFile(filepath.Join(dir, "kafka", "pid"))
	if err != nil {
		return -1
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(string(pid)), "stat"))
	if err != nil {
		return -1
	}
	// Fields after the command name (which may hold spaces): state is the
	// first, utime and stime the 12th and 13th, in clock ticks (USER_HZ,
	// 100 on Linux).
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return -1
	}
	var ticks int64
	for _, v := range f[11:13] {
		t, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return -1
		}
		ticks += t
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}

// function is the HTTP function both sides call: it counts the records of
// each request (the `"offset":` fields of either body), waits delay and
// answers 200 with an empty JSON object.
//
// It reads each body into a pooled buffer sized by Content-Length: with
// io.ReadAll (a buffer grown from 512 bytes, garbage of about twice the
// body per request) a 220 KB batch of 500 took the function 2.1–2.5 ms to
// read and a request waited ~6 ms for its answer, on either side; the
// function, not the side measured, set the pace (BENCHMARKS.md, branch
// speed4). Pooled, the read takes ~0.2 ms.
type function struct {
	delay   atomic.Int64
	records atomic.Int64
	calls   atomic.Int64
	first   atomic.Int64 // unix ns of the first request of the run
}

var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func newFunction() *function { return &function{} }

func (f *function) reset() { f.records.Store(0); f.calls.Store(0); f.first.Store(0) }

var offsetField = []byte(`"offset":`)

func (f *function) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.first.CompareAndSwap(0, time.Now().UnixNano())
	buf := bodies.Get().(*bytes.Buffer)
	defer bodies.Put(buf)
	buf.Reset()
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + bytes.MinRead) // ReadFrom reads to EOF without growing
	}
	_, err := buf.ReadFrom(r.Body)
	body := buf.Bytes()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if d := time.Duration(f.delay.Load()); d > 0 {
		time.Sleep(d)
	}
	f.records.Add(int64(bytes.Count(body, offsetField)))
	f.calls.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte("{}"))
}

// sluiceConfig writes the configuration of one sluice run (JSON is YAML).
func sluiceConfig(dir, broker, topic, group, url string, sc scenario, depth int) (string, error) {
	src := map[string]any{
		"topic": topic, "mode": "stream", "function": "fn",
		"batch_size": sc.batch, "parallelization_factor": sc.pf, "starting_position": "trim_horizon",
	}
	if depth >= 0 {
		src["commit_pipeline_depth"] = depth
	}
	doc := map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": filepath.Join(dir, "state-"+group),
		"brokers":   map[string]any{"main": map[string]any{"kafka": map[string]any{"seeds": []string{broker}}}},
		"functions": map[string]any{"fn": map[string]any{"url": url, "timeout": "30s"}},
		"sources":   map[string]any{group: src}, // its consumer group: sluice-<source>
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, group+".yaml")
	return path, os.WriteFile(path, b, 0o600)
}

// produce creates topic and writes n records of 200 bytes over 10,000 keys.
func produce(broker, topic string, n, partitions int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ProducerLinger(5*time.Millisecond), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, int32(partitions), 1, nil, topic); err != nil {
		return fmt.Errorf("create topic: %w", err)
	}
	value := bytes.Repeat([]byte("x"), 200)
	var failed atomic.Value
	for i := range n {
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: fmt.Appendf(nil, "key-%d", i%10000), Value: value}, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Store(err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	if err, _ := failed.Load().(error); err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	return nil
}

func deleteTopic(broker, topic string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker))
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = kadm.NewClient(cl).DeleteTopics(ctx, topic)
}
