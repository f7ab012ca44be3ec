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
	{"dispatcher", "./dispatch/", "^BenchmarkAcquireRelease", "1s", ""},
	{"engine", "./integration/", "^(BenchmarkThrottledResume)$", "1000x", ""},
	{"fairness", "./integration/", "^BenchmarkScopeFairness$", "5x", ""},
	{"memory", "./integration/", "^BenchmarkMemoryPer(Shard|Scope)$", "1x", ""},
	{"jetstream", "./consumer/nats/", "^BenchmarkStreamVsBareFetch$", "3x", ""},
	{"kafka", "./integration/", "^BenchmarkKafkaPipeline(AsyncCommit)?$", "3x", "SLUICE_TEST_KAFKA"},
	{"kafka-http", "./integration/", "^BenchmarkKafkaPipelineHTTP$", "2x", "SLUICE_TEST_KAFKA"},
	{"kafka-partitions", "./integration/", "^BenchmarkKafkaPartitions$", "1x", "SLUICE_TEST_KAFKA"},
}

// row is one line of the table: what a benchmark measured and its baseline.
type row struct {
	what, metric, baseline string
}

// rows says, per benchmark (without the -N suffix) and unit, what the figure
// means. Units not listed are left out of the table (they are in the log).
var rows = map[string]map[string]row{
	"BenchmarkKafkaPipeline": {
		"x-bare":       {"Kafka pipeline, in-process no-op function (4 partitions, 200k records)", "ratio", "÷ bare franz-go poll loop, rec/s (1.0 = as fast)"},
		"sluice-rec/s": {"  sluice", "rec/s", ""},
		"bare-rec/s":   {"  bare franz-go", "rec/s", ""},
	},
	"BenchmarkKafkaPipelineAsyncCommit": {
		"x-bare": {"Kafka pipeline, AsyncCommit (commit ~1 s later)", "ratio", "÷ bare franz-go poll loop, rec/s"},
	},
	"BenchmarkStreamVsBareFetch": {
		"x-bare":       {"JetStream pipeline, in-process no-op function (4 partitions, 50k msgs)", "ratio", "÷ bare jetstream Fetch+Ack loops, msg/s"},
		"sluice-msg/s": {"  sluice", "msg/s", ""},
		"bare-msg/s":   {"  bare jetstream", "msg/s", ""},
	},
	"BenchmarkKafkaPipelineHTTP": {
		"x-bare":       {"Kafka pipeline to a local no-op HTTP function (4 partitions, 100k records)", "ratio", "÷ bare HTTP client loop posting the same batches, rec/s"},
		"sluice-rec/s": {"  sluice", "rec/s", ""},
		"bare-rec/s":   {"  bare HTTP loop", "rec/s", ""},
	},
	"BenchmarkKafkaPartitions/p=1":  {"x-bare": {"Kafka, 1 partition (100k records)", "ratio", "÷ bare franz-go"}, "sluice-rec/s": {"  sluice, 1 partition", "rec/s", ""}},
	"BenchmarkKafkaPartitions/p=4":  {"x-bare": {"Kafka, 4 partitions", "ratio", "÷ bare franz-go"}, "sluice-rec/s": {"  sluice, 4 partitions", "rec/s", ""}},
	"BenchmarkKafkaPartitions/p=16": {"x-bare": {"Kafka, 16 partitions", "ratio", "÷ bare franz-go"}, "sluice-rec/s": {"  sluice, 16 partitions", "rec/s", ""}},
	"BenchmarkKafkaPartitions/p=64": {"x-bare": {"Kafka, 64 partitions", "ratio", "÷ bare franz-go"}, "sluice-rec/s": {"  sluice, 64 partitions", "rec/s", ""}},
	"BenchmarkAcquireRelease": {
		"x-semaphore": {"Dispatcher acquire+release, uncontended", "time ratio", "× x/sync/semaphore (lower is faster)"},
	},
	"BenchmarkAcquireReleaseScoped": {
		"x-semaphore": {"Dispatcher acquire+release, uncontended, one scope under a \"*\" rule", "time ratio", "× x/sync/semaphore"},
	},
	"BenchmarkAcquireReleaseContended": {
		"x-semaphore": {"Dispatcher acquire+release, 8 goroutines on 4 slots", "time ratio", "× x/sync/semaphore"},
	},
	"BenchmarkAcquireRelease1000Scopes": {
		"x-semaphore": {"Dispatcher acquire+release, 8 goroutines, 4 slots, 1,000 scopes", "time ratio", "× one x/sync/semaphore (no scopes)"},
	},
	"BenchmarkThrottledResume": {
		"p50-µs": {"Resume of a throttled shard after a slot frees, p50", "µs", "shard + dispatcher in process"},
		"p99-µs": {"Resume of a throttled shard after a slot frees, p99", "µs", ""},
	},
	"BenchmarkScopeFairness": {
		"jain":           {"Fairness across 100 scopes of unequal demand (1–8 waiters each), 10 slots", "Jain index", "1 = even shares"},
		"jain-semaphore": {"  same load on one x/sync/semaphore", "Jain index", "FIFO over goroutines: demand decides"},
	},
	"BenchmarkMemoryPerShard": {
		"B/shard": {"Memory per idle shard (10,000 running shard workers)", "bytes", "heap + goroutine stack"},
	},
	"BenchmarkMemoryPerScope": {
		"B/scope": {"Memory per active scope (10,000 scopes, each holding a slot)", "bytes", "heap, lease included"},
	},
}

// order is the order of the table's sections.
var order = []string{
	"BenchmarkKafkaPipeline", "BenchmarkKafkaPipelineAsyncCommit", "BenchmarkStreamVsBareFetch", "BenchmarkKafkaPipelineHTTP",
	"BenchmarkAcquireRelease", "BenchmarkAcquireReleaseScoped", "BenchmarkAcquireReleaseContended", "BenchmarkAcquireRelease1000Scopes",
	"BenchmarkThrottledResume", "BenchmarkScopeFairness", "BenchmarkMemoryPerShard", "BenchmarkMemoryPerScope",
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
	if *list {
		return
	}
	printTable(os.Stdout, results)
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
		units := rows[name]
		// The ratio (or first figure) first, then the details.
		for _, unit := range sortedUnits(units) {
			v, ok := got[unit]
			if !ok {
				continue
			}
			r := units[unit]
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.what, format(v), r.metric, r.baseline)
		}
	}
}

// sortedUnits puts the rows with a baseline (the headline figures) first.
func sortedUnits(units map[string]row) []string {
	var head, rest []string
	for u, r := range units {
		if r.baseline != "" {
			head = append(head, u)
		} else {
			rest = append(rest, u)
		}
	}
	sortStrings(head)
	sortStrings(rest)
	return append(head, rest...)
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
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
