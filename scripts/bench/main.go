// Command bench runs sluice's benchmark suite and prints one table of the
// figures each benchmark measured against its own baseline in the same run
// (ratios, percentiles, memory): `make bench`.
//
// The broker benchmarks (Kafka) run when SLUICE_TEST_KAFKA is set, as
// `make bench` does through scripts/brokers/with-brokers.sh; without it they
// are skipped and the table says so. The JetStream benchmark uses an
// embedded server. Flags: -list prints the steps without running them;
// -run REGEXP runs only the steps whose name matches.
//
//	go run ./scripts/bench              # what make bench runs
//	go run ./scripts/bench -run Kafka   # one group
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// step is one `go test -bench` invocation.
type step struct {
	name      string
	pkg       string
	bench     string // -bench regexp
	benchtime string
	needs     string // environment variable the step needs, "" for none
}

// steps are run in this order, one at a time (the machine is shared by
// both sides of every ratio; running two steps at once would skew both).
var steps = []step{
	{"dispatcher", "./integration/", "^BenchmarkDispatcherVsSemaphore$", "200000x", ""},
	{"engine", "./integration/", "^(BenchmarkThrottledResume)$", "1000x", ""},
	{"fairness", "./integration/", "^BenchmarkScopeFairness$", "5x", ""},
	{"lanes", "./shard/", "^BenchmarkLaneScaling$", "2x", ""},
	{"memory", "./integration/", "^BenchmarkMemoryPer(Shard|Scope)$", "1x", ""},
	{"jetstream", "./consumer/nats/", "^BenchmarkStreamVsBareFetch(1P)?$", "5x", ""},
	{"cluster", "./cluster/", "^BenchmarkClusterAcquireVsLocal$", "200000x", ""},
	{"cluster-handoff", "./cluster/", "^BenchmarkClusterHandOff$", "20x", ""},
	{"kafka", "./integration/", "^BenchmarkKafkaPipeline(AsyncCommit|Depth8)?$", "3x", "SLUICE_TEST_KAFKA"},
	{"kafka-http", "./integration/", "^BenchmarkKafkaPipelineHTTP$", "2x", "SLUICE_TEST_KAFKA"},
	{"kafka-partitions", "./integration/", "^BenchmarkKafkaPartitions$", "1x", "SLUICE_TEST_KAFKA"},
}

// row is one line of the table: what a benchmark measured and its baseline.
type row struct {
	what, metric, baseline string
}

// unitRow is the row of one unit of a benchmark's result line.
type unitRow struct {
	unit string
	row  row
}

// rows says, per benchmark (without the -N suffix) and unit, what the figure
// means. Units not listed are left out of the table (they are in the log).
var rows = map[string][]unitRow{
	"BenchmarkKafkaPipeline": {
		{"x-bare", row{"Kafka pipeline, in-process no-op function (4 partitions, 200k records)", "ratio", "÷ bare franz-go poll loop, rec/s (1.0 = as fast)"}},
		{"sluice-rec/s", row{"  sluice", "rec/s", ""}},
		{"bare-rec/s", row{"  bare franz-go", "rec/s", ""}},
		{"x-bare-cpu", row{"Kafka pipeline, in-process no-op function: CPU cost", "ratio", "bare CPU time ÷ sluice CPU time (1.0 = as cheap)"}},
		{"sluice-cpu-ns/rec", row{"  sluice", "CPU ns/rec", ""}},
		{"bare-cpu-ns/rec", row{"  bare franz-go", "CPU ns/rec", ""}},
		{"sluice-allocs/rec", row{"  sluice, heap allocations", "allocs/rec", "whole process"}},
		{"bare-allocs/rec", row{"  bare franz-go, heap allocations", "allocs/rec", "whole process"}},
		{"sluice-decoded/rec", row{"  sluice, records read from fetches", "per record", "above 1: fetched data dropped at a pause and fetched again"}},
	},
	"BenchmarkKafkaPipelineAsyncCommit": {
		{"x-bare", row{"Kafka pipeline, AsyncCommit (commit ~1 s later)", "ratio", "÷ bare franz-go poll loop, rec/s"}},
		{"x-bare-cpu", row{"Kafka pipeline, AsyncCommit: CPU cost", "ratio", "bare CPU time ÷ sluice CPU time"}},
		{"sluice-cpu-ns/rec", row{"  sluice, AsyncCommit", "CPU ns/rec", ""}},
	},
	"BenchmarkKafkaPipelineDepth8": {
		{"x-bare", row{"Kafka pipeline, CommitPipelineDepth 8 (≤ 9 batches redelivered per lane)", "ratio", "÷ bare franz-go poll loop, rec/s"}},
		{"x-bare-cpu", row{"Kafka pipeline, CommitPipelineDepth 8: CPU cost", "ratio", "bare CPU time ÷ sluice CPU time"}},
	},
	"BenchmarkStreamVsBareFetch": {
		{"med-x-bare", row{"JetStream pipeline, in-process no-op function (4 partitions, 50k msgs), acks confirmed per batch (as `sluice run`)", "ratio", "÷ bare jetstream Fetch+Ack loops, msg/s, median of the rounds"}},
		{"med-x-bare-piped", row{"  acks pipelined (Go option StreamOptions.AckPipelineDepth 2, not used by `sluice run`)", "ratio", "÷ bare, median of the rounds"}},
		{"sluice-msg/s", row{"  sluice, acks confirmed per batch", "msg/s", ""}},
		{"piped-msg/s", row{"  sluice, acks pipelined", "msg/s", ""}},
		{"bare-msg/s", row{"  bare jetstream", "msg/s", ""}},
		{"piped-cpu-ns/msg", row{"  CPU, acks pipelined", "ns/msg", "the process (embedded server included)"}},
		{"sluice-cpu-ns/msg", row{"  CPU, acks confirmed per batch", "ns/msg", ""}},
		{"bare-cpu-ns/msg", row{"  CPU, bare", "ns/msg", ""}},
	},
	"BenchmarkStreamVsBareFetch1P": {
		{"med-x-bare", row{"JetStream pipeline, 1 partition, acks confirmed per batch (as `sluice run`)", "ratio", "÷ bare, median of the rounds"}},
		{"med-x-bare-piped", row{"  acks pipelined", "ratio", "÷ bare, median of the rounds"}},
		{"sluice-cpu-ns/msg", row{"  CPU, acks confirmed per batch", "ns/msg", ""}},
		{"piped-cpu-ns/msg", row{"  CPU, acks pipelined", "ns/msg", ""}},
		{"bare-cpu-ns/msg", row{"  CPU, bare", "ns/msg", ""}},
	},
	"BenchmarkKafkaPipelineHTTP": {
		{"x-bare", row{"Kafka pipeline to a local no-op HTTP function (4 partitions, 100k records)", "ratio", "÷ bare HTTP client loop posting the same batches, rec/s"}},
		{"sluice-rec/s", row{"  sluice", "rec/s", ""}},
		{"bare-rec/s", row{"  bare HTTP loop", "rec/s", ""}},
	},
	"BenchmarkKafkaPartitions/p=1": {
		{"x-bare", row{"Kafka, 1 partition (100k records)", "ratio", "÷ bare franz-go"}},
		{"sluice-rec/s", row{"  sluice, 1 partition", "rec/s", ""}},
		{"x-bare-cpu", row{"  CPU cost, 1 partition", "ratio", "bare CPU ÷ sluice CPU"}},
	},
	"BenchmarkKafkaPartitions/p=4": {
		{"x-bare", row{"Kafka, 4 partitions", "ratio", "÷ bare franz-go"}},
		{"sluice-rec/s", row{"  sluice, 4 partitions", "rec/s", ""}},
		{"x-bare-cpu", row{"  CPU cost, 4 partitions", "ratio", "bare CPU ÷ sluice CPU"}},
	},
	"BenchmarkKafkaPartitions/p=16": {
		{"x-bare", row{"Kafka, 16 partitions", "ratio", "÷ bare franz-go"}},
		{"sluice-rec/s", row{"  sluice, 16 partitions", "rec/s", ""}},
		{"x-bare-cpu", row{"  CPU cost, 16 partitions", "ratio", "bare CPU ÷ sluice CPU"}},
	},
	"BenchmarkKafkaPartitions/p=64": {
		{"x-bare", row{"Kafka, 64 partitions", "ratio", "÷ bare franz-go"}},
		{"sluice-rec/s", row{"  sluice, 64 partitions", "rec/s", ""}},
		{"x-bare-cpu", row{"  CPU cost, 64 partitions", "ratio", "bare CPU ÷ sluice CPU"}},
	},
	"BenchmarkDispatcherVsSemaphore/uncontended": {
		{"x-semaphore", row{"Dispatcher acquire+release, uncontended", "time ratio", "× x/sync/semaphore, interleaved (1 = as fast)"}},
		{"limiter-ns/op", row{"  dispatcher", "ns/op", ""}},
		{"semaphore-ns/op", row{"  x/sync/semaphore", "ns/op", ""}},
	},
	"BenchmarkDispatcherVsSemaphore/contended-8": {
		{"x-semaphore", row{"Dispatcher acquire+release, 8 goroutines on 4 slots", "time ratio", "× x/sync/semaphore, interleaved"}},
		{"limiter-ns/op", row{"  dispatcher", "ns/op", ""}},
	},
	"BenchmarkDispatcherVsSemaphore/1000-scopes-8": {
		{"x-semaphore", row{"Dispatcher acquire+release, 8 goroutines, 4 slots, 1,000 scopes (\"*\" rule)", "time ratio", "× one x/sync/semaphore (no scopes), interleaved"}},
		{"limiter-ns/op", row{"  dispatcher", "ns/op", ""}},
	},
	"BenchmarkClusterAcquireVsLocal": {
		{"x-local", row{"Cluster mode acquire+release (a held share, JetStream KV engine)", "time ratio", "× the local Limiter, same run (target ≤ 2)"}},
		{"local-ns/op", row{"  local Limiter", "ns/op", ""}},
	},
	"BenchmarkClusterHandOff": {
		{"p50-ms", row{"Cluster hand-off: idle capacity of one member to another's waiter, p50", "ms", "two members, embedded JetStream KV"}},
		{"p99-ms", row{"Cluster hand-off, p99", "ms", ""}},
	},
	"BenchmarkThrottledResume": {
		{"p50-µs", row{"Resume of a throttled shard after a slot frees, p50", "µs", "shard + dispatcher in process"}},
		{"p99-µs", row{"Resume of a throttled shard after a slot frees, p99", "µs", ""}},
	},
	"BenchmarkScopeFairness": {
		{"jain", row{"Fairness across 100 scopes of unequal demand (1–8 waiters each), 10 slots", "Jain index", "1 = even shares"}},
		{"jain-semaphore", row{"  same load on one x/sync/semaphore", "Jain index", "FIFO over goroutines: demand decides"}},
	},
	"BenchmarkLaneScaling": {
		{"x-pf1", row{"One shard, parallelization_factor 10, 5 ms function (shard engine only)", "ratio", "÷ parallelization_factor 1, interleaved (10 = perfect)"}},
		{"pf1-rec/s", row{"  parallelization_factor 1", "rec/s", ""}},
		{"pf10-rec/s", row{"  parallelization_factor 10", "rec/s", ""}},
	},
	"BenchmarkMemoryPerShard": {
		{"B/shard", row{"Memory per idle shard (10,000 running shard workers)", "bytes", "heap + goroutine stack"}},
	},
	"BenchmarkMemoryPerScope": {
		{"B/scope", row{"Memory per active scope (10,000 scopes, each holding a slot)", "bytes", "heap, lease included"}},
	},
}

// order is the order of the table's sections.
var order = []string{
	"BenchmarkKafkaPipeline", "BenchmarkKafkaPipelineDepth8", "BenchmarkKafkaPipelineAsyncCommit", "BenchmarkStreamVsBareFetch", "BenchmarkStreamVsBareFetch1P", "BenchmarkKafkaPipelineHTTP",
	"BenchmarkDispatcherVsSemaphore/uncontended", "BenchmarkDispatcherVsSemaphore/contended-8", "BenchmarkDispatcherVsSemaphore/1000-scopes-8",
	"BenchmarkThrottledResume", "BenchmarkScopeFairness", "BenchmarkLaneScaling", "BenchmarkMemoryPerShard", "BenchmarkMemoryPerScope",
	"BenchmarkKafkaPartitions/p=1", "BenchmarkKafkaPartitions/p=4", "BenchmarkKafkaPartitions/p=16", "BenchmarkKafkaPartitions/p=64",
}

func main() {
	list := flag.Bool("list", false, "print the steps and exit")
	only := flag.String("run", "", "run only the steps whose name matches this regexp")
	flag.Parse()
	var match *regexp.Regexp
	if *only != "" {
		var err error
		if match, err = regexp.Compile(*only); err != nil {
			fmt.Fprintf(os.Stderr, "bench: -run: %v\n", err)
			os.Exit(2)
		}
	}
	results := map[string]map[string]float64{}
	var skipped, failed []string
	start := time.Now()
	for _, s := range steps {
		if match != nil && !match.MatchString(s.name) {
			continue
		}
		args := []string{"test", "-run", "^$", "-bench", s.bench, "-benchtime", s.benchtime, "-timeout", "15m", s.pkg}
		if *list {
			fmt.Printf("%-17s go %s\n", s.name, strings.Join(args, " "))
			continue
		}
		if s.needs != "" && os.Getenv(s.needs) == "" {
			skipped = append(skipped, fmt.Sprintf("%s (needs %s)", s.name, s.needs))
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s: go %s\n", s.name, strings.Join(args, " "))
		t0 := time.Now()
		out, err := run(args)
		fmt.Fprintf(os.Stderr, "bench: %s: %s\n", s.name, time.Since(t0).Round(time.Second))
		parse(out, results)
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", s.name, err))
		}
	}
	// The out-of-process comparison (scripts/bench/procbench): `sluice run`
	// against the bare floor program, its own table.
	var process []byte
	if match == nil || match.MatchString("process") {
		args := []string{"run", "./scripts/bench/procbench"}
		switch {
		case *list:
			fmt.Printf("%-17s go %s\n", "process", strings.Join(args, " "))
		case os.Getenv("SLUICE_TEST_KAFKA") == "":
			skipped = append(skipped, "process (needs SLUICE_TEST_KAFKA)")
		default:
			fmt.Fprintf(os.Stderr, "bench: process: go %s\n", strings.Join(args, " "))
			t0 := time.Now()
			out, err := run(args)
			fmt.Fprintf(os.Stderr, "bench: process: %s\n", time.Since(t0).Round(time.Second))
			process = out
			if err != nil {
				failed = append(failed, fmt.Sprintf("process: %v", err))
			}
		}
	}
	if *list {
		return
	}
	printTable(os.Stdout, results)
	if len(process) > 0 {
		fmt.Printf("\n`sluice run` against the bare floor program (scripts/bench/floor), out of process:\n%s", process)
	}
	fmt.Printf("\n%s, %d CPUs, %s %s/%s; suite took %s\n", cpuModel(), runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH, time.Since(start).Round(time.Second))
	for _, s := range skipped {
		fmt.Printf("skipped: %s\n", s)
	}
	for _, f := range failed {
		fmt.Printf("FAILED: %s\n", f)
	}
	if len(failed) > 0 {
		os.Exit(1)
	}
}

// run runs go with args, copying its output to stderr as it comes (a long
// step shows progress), and returns the output.
func run(args []string) ([]byte, error) {
	cmd := exec.Command("go", args...)
	var buf bytes.Buffer
	cmd.Stdout = io.MultiWriter(&buf, os.Stderr)
	cmd.Stderr = io.MultiWriter(&buf, os.Stderr)
	err := cmd.Run()
	return buf.Bytes(), err
}

// benchLine matches a result line: name-P, iterations, then value/unit pairs.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// parse adds the metrics of out's result lines to results, by benchmark.
func parse(out []byte, results map[string]map[string]float64) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		fields := strings.Fields(m[2])
		metrics := results[m[1]]
		if metrics == nil {
			metrics = map[string]float64{}
			results[m[1]] = metrics
		}
		for i := 0; i+1 < len(fields); i += 2 {
			if v, err := strconv.ParseFloat(fields[i], 64); err == nil {
				metrics[fields[i+1]] = v
			}
		}
	}
}

func printTable(w io.Writer, results map[string]map[string]float64) {
	fmt.Fprintln(w, "| Measure | Value | Unit | Baseline (same run) |")
	fmt.Fprintln(w, "|---|---:|---|---|")
	for _, name := range order {
		got, ok := results[name]
		if !ok {
			continue
		}
		for _, u := range rows[name] {
			v, ok := got[u.unit]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", u.row.what, format(v), u.row.metric, u.row.baseline)
		}
	}
}

func format(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

// cpuModel returns the CPU model from /proc/cpuinfo, or GOARCH.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}
