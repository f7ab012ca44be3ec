package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/config"
)

// quickstartConfig is the pipeline the quick start runs: an embedded
// nats-server, a partitioned JetStream source keyed by tenant, per-tenant
// limits, and a dead-letter stream. %s: admin address, state dir, function
// URL.
const quickstartConfig = `# The sluice quick start: everything on an embedded NATS JetStream.
admin: {listen: "%s"}
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  thumbnail: {url: %q, timeout: 5s, reserved_concurrency: 6}
rules:
  - {pattern: "*", concurrency: 2, description: each tenant runs at most 2 at once}
  - {pattern: umbrella, concurrency: 1, description: a tenant held to 1}
sources:
  clicks:
    stream: CLICKS
    subject: "clicks.*"
    partitions: 4
    function: thumbnail
    scope: key
    batch_size: 5
    retry_backoff: {initial: 200ms, max: 2s}
    on_failure: dead
dead_letters:
  dead: {stream: DEAD, subject: "sluice.dead.>", retention: 1h}
`

// quickstartTenants publish clicks; the sample function throttles the
// ones listed in throttledTenants (429 with Retry-After) half of the time.
// They are chosen so that every one of the 4 partitions gets traffic
// (nats-server hashes the tenant token onto a partition: cyberdyne → 0,
// initech and umbrella → 1, globex → 2, acme → 3; a test checks it).
var (
	quickstartTenants = []string{"acme", "globex", "initech", "umbrella", "cyberdyne"}
	throttledTenants  = map[string]bool{"initech": true}
)

// quickstartAdmin is the admin address the quick start prefers: the
// default one, so that `sluice shards` works without --admin.
const quickstartAdmin = "127.0.0.1:9400"

// freeAdminAddr returns quickstartAdmin if it is free, else a free loopback
// port. The port is released before sluice listens on it; another process
// could take it in between, and then sluice fails to start, saying so.
func freeAdminAddr() (string, error) {
	for _, addr := range []string{quickstartAdmin, "127.0.0.1:0"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		a := ln.Addr().String()
		if err := ln.Close(); err != nil {
			return "", err
		}
		return a, nil
	}
	return "", errors.New("quickstart: no free port on 127.0.0.1 for the admin API")
}

func newQuickstartCmd() *cobra.Command {
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "quickstart",
		Short: "Run a complete pipeline on an embedded NATS JetStream, with a live view (Ctrl-C stops it)",
		Long: `quickstart needs nothing installed. It starts an embedded nats-server, a sample
HTTP function that answers 429 for one tenant half of the time, a producer
publishing clicks for five tenants, and sluice itself with per-tenant rules,
then prints every second what the shards and the limits are doing: shards
blocking (throttled) and resuming, tenants at their limit, and how many
records were published and delivered in how many invocations (batches). The
config it runs is printed first; copy it to start your own. It also prints
the admin API's URL (127.0.0.1:9400 when that port is free), the status
page's, and a 'sluice shards --admin URL' line for another terminal.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			return runQuickstart(ctx, cmd.OutOrStdout())
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", 0, "stop after this long (default: until Ctrl-C)")
	return cmd
}

func runQuickstart(ctx context.Context, out io.Writer) error {
	dir, err := os.MkdirTemp("", "sluice-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	fn, counts := sampleFunction()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fnSrv := &http.Server{Handler: fn, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = fnSrv.Serve(ln) }()
	defer fnSrv.Close()

	adminAddr, err := freeAdminAddr()
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "sluice.yaml")
	text := fmt.Sprintf(quickstartConfig, adminAddr, filepath.Join(dir, "state"), "http://"+ln.Addr().String()+"/invoke")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return err
	}
	cfg, err := config.Load([]string{path}, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "sluice quick start: the config it runs (%s)\n\n%s\n", path, text)

	// sluice's own logs go to a file: the terminal shows the live view.
	logFile, err := os.Create(filepath.Join(dir, "sluice.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	a, err := wire(ctx, cfg, slog.New(slog.NewTextHandler(logFile, nil)))
	if err != nil {
		return err
	}
	ran := make(chan error, 1) // run's one result
	go func() { ran <- a.run(ctx) }()

	url, err := a.brokerURL("local")
	if err != nil {
		return err
	}
	nc, err := natsgo.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	var published atomic.Int64
	go produce(ctx, nc, &published)
	fmt.Fprintf(out, "embedded NATS at %s — feed it yourself: nats pub -s %s clicks.<tenant> hello\n", url, url)
	adminURL := "http://" + adminAddr
	fmt.Fprintf(out, "admin API at %s (metrics at %s/metrics)\n", adminURL, adminURL)
	fmt.Fprintf(out, "status page at %s/ui/\n", adminURL)
	fmt.Fprintf(out, "in another terminal: %s shards --admin %s\n", cliName(), adminURL)
	fmt.Fprintln(out)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-ran:
			fmt.Fprintf(out, "\n%s; stopped\n", counts.summary(published.Load()))
			return err
		case <-tick.C:
			a.liveView(out, counts.summary(published.Load()))
		}
	}
}

// cliName is how to call this binary from a shell: "sluice", or "go run
// ./cmd/sluice" when it runs from a go run build.
func cliName() string {
	if exe, err := os.Executable(); err == nil && strings.Contains(exe, "go-build") {
		return "go run ./cmd/sluice"
	}
	return "sluice"
}

// fnCounts is what the sample function saw.
type fnCounts struct {
	invocations atomic.Int64 // requests (each one a batch)
	records     atomic.Int64 // records in the batches it answered 2xx
	throttled   atomic.Int64 // requests it answered 429
}

// summary counts records and invocations apart: an invocation carries a
// batch of up to batch_size records.
func (c *fnCounts) summary(published int64) string {
	return fmt.Sprintf("published %d records; function invoked %d times (batches of up to 5 records, %d throttled), %d records delivered",
		published, c.invocations.Load(), c.throttled.Load(), c.records.Load())
}

// sampleFunction answers after ~40 ms; for a batch holding a throttled
// tenant's clicks it answers 429 with Retry-After: 1 half of the time, which
// blocks that batch's shard until it goes through.
func sampleFunction() (http.Handler, *fnCounts) {
	c := &fnCounts{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.invocations.Add(1)
		time.Sleep(40 * time.Millisecond)
		var ev struct {
			Records map[string][]struct {
				Subject string `json:"subject"`
			} `json:"records"`
		}
		_ = json.NewDecoder(r.Body).Decode(&ev)
		throttled, n := false, 0
		for _, recs := range ev.Records {
			for _, rec := range recs {
				n++
				throttled = throttled || throttledTenants[rec.Subject[strings.LastIndexByte(rec.Subject, '.')+1:]]
			}
		}
		if throttled && rand.IntN(2) == 0 {
			c.throttled.Add(1)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		}
		c.records.Add(int64(n))
		w.WriteHeader(http.StatusOK)
	}), c
}

// produce publishes a click for a random tenant every 20 ms until ctx ends.
func produce(ctx context.Context, nc *natsgo.Conn, n *atomic.Int64) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		tenant := quickstartTenants[rand.IntN(len(quickstartTenants))]
		body, _ := json.Marshal(map[string]any{"tenant": tenant, "click": i})
		if nc.Publish("clicks."+tenant, body) == nil {
			n.Add(1)
		}
	}
}

// liveView prints the shards and the tenants' limits.
func (a *app) liveView(out io.Writer, summary string) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s  %s\n", time.Now().Format("15:04:05"), summary)
	fmt.Fprintln(tw, "SHARD\tSTATE\tFOR\tREASON\tDELIVERED\tBUFFERED")
	for _, s := range a.sources {
		for _, st := range s.Statuses() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", st.Shard, strings.ToUpper(string(st.State)),
				time.Since(st.Since).Truncate(100*time.Millisecond), st.Reason, st.Delivered, st.Buffered)
		}
	}
	scopes := a.disp.Limiter().Scopes()
	sort.Slice(scopes, func(i, j int) bool { return scopes[i].Scope < scopes[j].Scope })
	var limits []string
	for _, sc := range scopes {
		mark := ""
		if sc.Limit >= 0 && sc.InFlight >= sc.Limit {
			mark = " (at limit)"
		}
		limits = append(limits, fmt.Sprintf("%s %d/%d%s", sc.Scope, sc.InFlight, sc.Limit, mark))
	}
	fmt.Fprintf(tw, "tenants in flight: %s\n\n", strings.Join(limits, ", "))
	_ = tw.Flush()
}
