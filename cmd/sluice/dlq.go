package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
)

func newDLQCmd() *cobra.Command {
	cmd := groupCmd("dlq", "List, show and replay dead letters", newDLQListCmd(), newDLQShowCmd(), newDLQReplayCmd())
	cmd.Long = `The dead-letter destinations (dead_letters in the configuration) hold one JSON
envelope per record or event sluice could not deliver (docs/concepts.md,
"Dead letters").

A replay records its outcome in the destination itself, so that it works from
any machine and survives restarts: a letter delivered gets a small resolution
record (header sluice-resolved: <id>) and is skipped from then on; a letter
that fails again is written again with replays+1 (the newest envelope of an id
wins). Running the same replay again therefore delivers only what did not
succeed, and a replay interrupted with Ctrl-C continues where it stopped.`
	return cmd
}

// Flag names of the dlq commands.
const (
	flagSource      = "source"
	flagFunction    = "function"
	flagCondition   = "condition"
	flagSince       = "since"
	flagUntil       = "until"
	flagDestination = "destination"
	flagJSON        = "json"
	flagAll         = "all"
	flagRate        = "rate"
	flagDryRun      = "dry-run"
	flagTo          = "to"
	flagParallel    = "parallel"
)

// dlqFlags are the flags list and replay share.
type dlqFlags struct {
	source, function, condition, since, until string
	destinations                              []string
	json                                      bool
}

func (f *dlqFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.source, flagSource, "", "only letters of this `source`")
	fs.StringVar(&f.function, flagFunction, "", "only letters of this `function`")
	fs.StringVar(&f.condition, flagCondition, "", "only letters of this `condition`: "+conditionList())
	fs.StringVar(&f.since, flagSince, "", "only letters dead-lettered at or after `TIME` (RFC 3339, a date, or a duration ago like 2h)")
	fs.StringVar(&f.until, flagUntil, "", "only letters dead-lettered before `TIME` (RFC 3339, a date, or a duration ago like 30m)")
	fs.StringArrayVar(&f.destinations, flagDestination, nil, "only this dead-letter `destination` (a dead_letters name); repeatable; default all")
	fs.BoolVar(&f.json, flagJSON, false, "print one JSON envelope per line instead of a table (the same as -o json)")
	addOutputFlag(cmd, outTable)
	_ = cmd.RegisterFlagCompletionFunc(flagSource, completeSources) // cannot fail: the flags were just added
	_ = cmd.RegisterFlagCompletionFunc(flagFunction, completeFunctions)
	_ = cmd.RegisterFlagCompletionFunc(flagCondition, fixed(conditionNames()...))
	_ = cmd.RegisterFlagCompletionFunc(flagDestination, completeDestinations)
}

// format returns the output format of list and of a dry run: --json is -o
// json.
func (f *dlqFlags) format(cmd *cobra.Command) (string, error) {
	if f.json {
		return outJSON, nil
	}
	return outputOf(cmd)
}

// checkNames refuses a --source or --function filter that names nothing
// known: neither in the configuration nor in any letter read.
func (f *dlqFlags) checkNames(cmd *cobra.Command, cfg *config.Config, idxs []*retention.Index) error {
	check := func(flag, value, what string, configured []string, of func(*retention.Envelope) string) error {
		if value == "" || slices.Contains(configured, value) {
			return nil
		}
		for _, idx := range idxs {
			for _, l := range idx.Letters {
				if of(l.Envelope) == value {
					return nil
				}
			}
		}
		return usagef(cmd, "--%s: %q is not a %s of the configuration nor of any dead letter (%ss: %s)", flag, value, what, what, list(configured))
	}
	if err := check(flagSource, f.source, "source", sortedNames(cfg.Sources), func(e *retention.Envelope) string { return e.Source }); err != nil {
		return err
	}
	return check(flagFunction, f.function, "function", sortedNames(cfg.Functions), func(e *retention.Envelope) string { return e.Function })
}

func sortedNames[V any](m map[string]V) []string { return names(m, "") }

func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func conditionList() string {
	names := make([]string, len(retention.Conditions))
	for i, c := range retention.Conditions {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// filter checks the filter flags; a bad value is a usage error naming the
// flag and what it accepts.
func (f *dlqFlags) filter(cmd *cobra.Command, now time.Time) (retention.Filter, error) {
	flt := retention.Filter{Source: f.source, Function: f.function, Condition: event.Condition(f.condition)}
	if f.condition != "" && !retention.IsCondition(flt.Condition) {
		return flt, usagef(cmd, "--%s: %q is not one of %s", flagCondition, f.condition, conditionList())
	}
	var err error
	if flt.Since, err = parseWhen(f.since, now); err != nil {
		return flt, usagef(cmd, "--%s: %v", flagSince, err)
	}
	if flt.Until, err = parseWhen(f.until, now); err != nil {
		return flt, usagef(cmd, "--%s: %v", flagUntil, err)
	}
	if !flt.Since.IsZero() && !flt.Until.IsZero() && !flt.Since.Before(flt.Until) {
		return flt, usagef(cmd, "--%s %s is not before --%s %s", flagSince, f.since, flagUntil, f.until)
	}
	return flt, nil
}

// parseWhen reads a --since/--until value: RFC 3339 (with or without
// fractional seconds), a date (UTC midnight), or a duration meaning that long
// ago. "" is no bound.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (RFC 3339 like 2026-11-01T12:00:00Z, a date like 2026-11-01, or a duration ago like 2h)", s)
}

// destinationNames returns the destinations asked for, all by default.
func (f *dlqFlags) destinationNames(cmd *cobra.Command, cfg *config.Config) ([]string, error) {
	all := make([]string, 0, len(cfg.DeadLetters))
	for n := range cfg.DeadLetters {
		all = append(all, n)
	}
	slices.Sort(all)
	if len(all) == 0 {
		return nil, usagef(cmd, "the configuration has no dead_letters destinations")
	}
	if len(f.destinations) == 0 {
		return all, nil
	}
	for _, n := range f.destinations {
		if !slices.Contains(all, n) {
			return nil, usagef(cmd, "--%s: %q is not one of %s", flagDestination, n, strings.Join(all, ", "))
		}
	}
	return slices.Compact(slices.Sorted(slices.Values(f.destinations))), nil
}

// dlqSession is what the dlq commands share: the configuration, a logger and
// an app to hold connections (a full wire for replay, a bare one otherwise).
func dlqSession(cmd *cobra.Command) (*config.Config, *slog.Logger, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, nil, err
	}
	log, err := newLogger(cmd)
	if err != nil {
		return nil, nil, err
	}
	return cfg, log, nil
}

// bareApp is an app without dispatcher or sources, for list and show.
func bareApp(cfg *config.Config, log *slog.Logger) *app {
	return &app{cfg: cfg, log: log}
}

func (a *app) closeConns() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}

// load reads every letter of the destinations f selects (what list and show
// look at), closing the broker connections again before it returns; it
// also returns the destinations' names.
func (f *dlqFlags) load(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) ([]*retention.Index, []string, error) {
	names, err := f.destinationNames(cmd, cfg)
	if err != nil {
		return nil, nil, err
	}
	a := bareApp(cfg, log)
	defer a.closeConns()
	dests, err := a.openDestinations(cmd.Context(), names)
	if err != nil {
		return nil, nil, err
	}
	idxs, err := loadAll(cmd.Context(), dests, log)
	return idxs, names, err
}

// loadAll reads every named destination.
func loadAll(ctx context.Context, dests []dlqDest, log *slog.Logger) ([]*retention.Index, error) {
	out := make([]*retention.Index, 0, len(dests))
	for _, d := range dests {
		idx, err := retention.Load(ctx, d.name, d.reader)
		if err != nil {
			return nil, fmt.Errorf("dlq: %w", err)
		}
		if idx.Malformed > 0 {
			log.Warn("records that are not dead letters were skipped", "destination", d.name, "count", idx.Malformed)
		}
		out = append(out, idx)
	}
	return out, nil
}

func newDLQListCmd() *cobra.Command {
	var f dlqFlags
	var all bool
	cmd := &cobra.Command{
		Use:   "list [filters]",
		Short: "List dead letters that are waiting for a replay",
		Long: `List the dead letters of every destination (or those given with --destination)
that match the filters, oldest first. Letters a replay already delivered are
left out unless --all is given. -o json (or --json) prints the latest
envelope of each letter, one per line; -o yaml prints them as a YAML list.`,
		Example: `  sluice dlq list -c sluice.yaml --source orders --since 24h
  sluice dlq list -c sluice.yaml --condition PermanentError --json`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := dlqSession(cmd)
			if err != nil {
				return err
			}
			flt, err := f.filter(cmd, time.Now())
			if err != nil {
				return err
			}
			format, err := f.format(cmd)
			if err != nil {
				return err
			}
			idxs, _, err := f.load(cmd, cfg, log)
			if err != nil {
				return err
			}
			if err := f.checkNames(cmd, cfg, idxs); err != nil {
				return err
			}
			var letters []*retention.Letter
			for _, idx := range idxs {
				pending, resolved := idx.Select(flt)
				letters = append(letters, pending...)
				if all {
					letters = append(letters, resolved...)
				}
			}
			sortLetters(letters)
			return printLettersAs(cmd.OutOrStdout(), letters, format)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&all, flagAll, false, "also list letters a replay already delivered")
	return cmd
}

func newDLQShowCmd() *cobra.Command {
	var dests []string
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Print one dead letter's envelope as indented JSON",
		Long: `Print the latest envelope of dead letter ID (as 'dlq list' shows it) as
indented JSON. Exits 1 if no destination holds it. -o yaml prints the same as YAML,
-o table its main fields.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, log, err := dlqSession(cmd)
			if err != nil {
				return err
			}
			f := dlqFlags{destinations: dests}
			format, err := outputOf(cmd)
			if err != nil {
				return err
			}
			idxs, names, err := f.load(cmd, cfg, log)
			if err != nil {
				return err
			}
			for _, idx := range idxs {
				if l := idx.Find(args[0]); l != nil {
					if l.Resolved {
						log.Info("this letter was replayed successfully", "destination", l.Destination, "at", l.ResolvedAt)
					}
					return writeAs(cmd.OutOrStdout(), format, l.Envelope, func(w io.Writer) error { return printEnvelope(w, l) })
				}
			}
			return fmt.Errorf("dlq: no dead letter with id %q in %s", args[0], strings.Join(names, ", "))
		},
	}
	cmd.Flags().StringArrayVar(&dests, flagDestination, nil, "look only in this dead-letter `destination`; repeatable")
	_ = cmd.RegisterFlagCompletionFunc(flagDestination, completeDestinations) // cannot fail: the flag was just added
	addOutputFlag(cmd, outJSON)
	cmd.ValidArgsFunction = completeLetterIDs
	return cmd
}

// replayFlags are replay's own flags.
type replayFlags struct {
	rate     float64
	dryRun   bool
	to       string
	parallel int
}

func newDLQReplayCmd() *cobra.Command {
	var (
		f  dlqFlags
		rf replayFlags
	)
	cmd := &cobra.Command{
		Use:   "replay [filters]",
		Short: "Send dead letters again, through the same dispatcher and limits as run",
		Long: `Replay the dead letters that match the filters, oldest first, and that no
earlier replay delivered. --to function (the default) invokes each letter's
function again through the dispatcher 'sluice run' builds from the same
configuration, so reservations, the account limit and scope rules apply;
--to source appends the original record to its source's topic or stream.

Each outcome is recorded in the destination: a letter delivered is not
replayed again; a letter that fails is written back with replays+1. Ctrl-C
stops starting new letters, lets those in flight finish (up to 15 s), and a
re-run continues with the rest. Exits 1 if any letter failed or the replay was
interrupted. A progress bar is shown on a terminal, progress lines otherwise;
a summary line goes to standard output.`,
		Example: `  sluice dlq replay -c sluice.yaml --source orders --dry-run
  sluice dlq replay -c sluice.yaml --source orders --rate 50
  sluice dlq replay -c sluice.yaml --condition RecordAgeExceeded --to source`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReplay(cmd, &f, &rf)
		},
	}
	f.register(cmd)
	fs := cmd.Flags()
	fs.Float64Var(&rf.rate, flagRate, 0, "at most `N` letters per second (0: as fast as the limits allow)")
	fs.BoolVar(&rf.dryRun, flagDryRun, false, "deliver nothing; list the letters that would be replayed")
	fs.StringVar(&rf.to, flagTo, retention.ToFunction, "where to send letters: function or source")
	_ = cmd.RegisterFlagCompletionFunc(flagTo, fixed(retention.ToFunction, retention.ToSource)) // cannot fail: the flag was just added
	fs.IntVar(&rf.parallel, flagParallel, retention.DefaultReplayParallel, "letters in flight at most (`N`, 1..1000); the dispatcher's limits apply to each")
	return cmd
}

func runReplay(cmd *cobra.Command, f *dlqFlags, rf *replayFlags) error {
	switch {
	case rf.to != retention.ToFunction && rf.to != retention.ToSource:
		return usagef(cmd, "--%s: %q is not one of function, source", flagTo, rf.to)
	case rf.rate < 0:
		return usagef(cmd, "--%s: %v is out of range (0 for no cap, or more)", flagRate, rf.rate)
	case rf.parallel < 1 || rf.parallel > 1000:
		return usagef(cmd, "--%s: %d is out of range (1..1000)", flagParallel, rf.parallel)
	}
	cfg, log, err := dlqSession(cmd)
	if err != nil {
		return err
	}
	flt, err := f.filter(cmd, time.Now())
	if err != nil {
		return err
	}
	format, err := f.format(cmd)
	if err != nil {
		return err
	}
	names, err := f.destinationNames(cmd, cfg)
	if err != nil {
		return err
	}
	ctx := cmd.Context()

	// The same wiring as run: dispatcher, limits, stream encoders. Nothing
	// consumes: the sources are built but never run.
	a, err := wire(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()
	dests, err := a.openDestinations(ctx, names)
	if err != nil {
		return err
	}
	idxs, err := loadAll(ctx, dests, log)
	if err != nil {
		return err
	}
	if err := f.checkNames(cmd, cfg, idxs); err != nil {
		return err
	}

	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if rf.dryRun {
		var pending []*retention.Letter
		skipped := 0
		for _, idx := range idxs {
			p, r := idx.Select(flt)
			pending, skipped = append(pending, p...), skipped+len(r)
		}
		sortLetters(pending)
		if err := printLettersAs(out, pending, format); err != nil {
			return err
		}
		_, err := fmt.Fprintf(errOut, "dry run: would replay %d to %s, %d skipped (already replayed)\n", len(pending), rf.to, skipped)
		return err
	}

	targets := a.replayTargets()
	deliver := targets.ToFunction
	if rf.to == retention.ToSource {
		deliver = targets.ToSource
	}
	var total retention.ReplaySummary
	skipped := 0
	for i, idx := range idxs {
		pending, resolved := idx.Select(flt)
		skipped += len(resolved)
		if len(pending) == 0 {
			continue
		}
		prog := newProgress(errOut, idx.Destination, len(pending))
		sum := retention.Replay(ctx, pending, dests[i].app, retention.ReplayOptions{
			Deliver: deliver, To: rf.to, Rate: rf.rate, Parallel: rf.parallel, Progress: prog.update,
		})
		prog.finish()
		total.Succeeded += sum.Succeeded
		total.Failed += sum.Failed
		total.Failures = append(total.Failures, sum.Failures...)
		if sum.Interrupted {
			total.Interrupted = true
			break
		}
	}
	for i, e := range total.Failures {
		if i == 5 {
			_, _ = fmt.Fprintf(errOut, "... and %d more failures\n", total.Failed-5)
			break
		}
		_, _ = fmt.Fprintln(errOut, e)
	}
	_, _ = fmt.Fprintf(out, "replayed %d: %d succeeded, %d failed, %d skipped\n",
		total.Succeeded+total.Failed, total.Succeeded, total.Failed, skipped)
	switch {
	case total.Interrupted:
		return errors.New("dlq replay: interrupted; run the same command again to continue")
	case total.Failed > 0:
		return fmt.Errorf("dlq replay: %d failed (written back with replays+1)", total.Failed)
	}
	return nil
}

// sortLetters orders letters by when they were dead-lettered, then by id.
func sortLetters(ls []*retention.Letter) {
	slices.SortStableFunc(ls, func(x, y *retention.Letter) int {
		if c := x.DeadLetteredAt.Compare(y.DeadLetteredAt); c != 0 {
			return c
		}
		return strings.Compare(x.Envelope.ID, y.Envelope.ID)
	})
}

// printLettersAs writes letters in an output format: a table, one JSON
// envelope per line, or a YAML list of envelopes.
func printLettersAs(w io.Writer, ls []*retention.Letter, format string) error {
	if format == outYAML {
		envs := make([]*retention.Envelope, len(ls))
		for i, l := range ls {
			envs[i] = l.Envelope
		}
		return writeAs(w, outYAML, envs, nil)
	}
	return printLetters(w, ls, format == outJSON)
}

// printEnvelope writes a letter's main fields, one per line.
func printEnvelope(w io.Writer, l *retention.Letter) error {
	e := l.Envelope
	status := "pending"
	if l.Resolved {
		status = "replayed"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, row := range [][2]string{
		{"id", e.ID}, {"destination", l.Destination}, {"dead-lettered", l.DeadLetteredAt.UTC().Format(time.RFC3339)},
		{"source", e.Source}, {"function", e.Function}, {"mode", string(e.Mode)}, {"condition", string(e.Condition)},
		{"attempts", fmt.Sprint(e.Attempts)}, {"replays", fmt.Sprint(e.Replays)}, {"status", status},
		{"last error", lastError(e.LastError)},
		{"record", recordWhere(&e.Record)},
		{"payload", payloadNote(&e.Record)},
	} {
		_, _ = fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// printLetters writes letters as a table, or as one JSON envelope per line.
func printLetters(w io.Writer, ls []*retention.Letter, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, l := range ls {
			if err := enc.Encode(l.Envelope); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "ID\tDEAD-LETTERED\tDESTINATION\tSOURCE\tFUNCTION\tCONDITION\tATTEMPTS\tREPLAYS\tSTATUS\tLAST ERROR")
	for _, l := range ls {
		e := l.Envelope
		status := "pending"
		if l.Resolved {
			status = "replayed"
		}
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", e.ID, l.DeadLetteredAt.UTC().Format(time.RFC3339),
			l.Destination, e.Source, e.Function, e.Condition, e.Attempts, e.Replays, status, lastError(e.LastError))
	}
	return tw.Flush()
}

// recordWhere names a letter's original record by its coordinates.
func recordWhere(r *retention.EnvelopeRecord) string {
	if r.Subject != "" {
		return fmt.Sprintf("stream %s sequence %d (subject %s)", r.Topic, r.Offset, r.Subject)
	}
	return fmt.Sprintf("topic %s partition %d offset %d", r.Topic, r.Partition, r.Offset)
}

// payloadNote says whether a letter carries its record.
func payloadNote(r *retention.EnvelopeRecord) string {
	if r.PayloadOmitted {
		return fmt.Sprintf("omitted (%d bytes, too large for the destination); `dlq replay` fetches it from the source while the source retains it", r.OriginalSize)
	}
	return fmt.Sprintf("%d bytes", len(r.Key)+len(r.Value))
}

func lastError(e event.ErrorInfo) string {
	s := string(e.Kind)
	if e.Status != 0 {
		s += fmt.Sprintf(" %d", e.Status)
	}
	if e.Message != "" {
		s += ": " + strings.Join(strings.Fields(e.Message), " ")
	}
	if r := []rune(s); len(r) > 60 {
		s = string(r[:59]) + "…"
	}
	return s
}

// progress shows a replay's progress: a bar on a terminal, otherwise a line
// at most every two seconds (and at the end).
type progress struct {
	w     io.Writer
	dest  string
	bar   *progressbar.ProgressBar
	last  time.Time
	state retention.ReplayProgress
}

func newProgress(w io.Writer, dest string, total int) *progress {
	p := &progress{w: w, dest: dest, last: time.Now(), state: retention.ReplayProgress{Total: total}}
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("replay "+dest),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { _, _ = fmt.Fprintln(w) }),
		)
	} else {
		_, _ = fmt.Fprintf(w, "replay %s: %d letters\n", dest, total)
	}
	return p
}

// update is the ReplayOptions.Progress callback (called one at a time).
func (p *progress) update(s retention.ReplayProgress) {
	p.state = s
	if p.bar != nil {
		_ = p.bar.Add(1)
		return
	}
	if time.Since(p.last) >= 2*time.Second {
		p.last = time.Now()
		p.line()
	}
}

func (p *progress) line() {
	s := p.state
	_, _ = fmt.Fprintf(p.w, "replay %s: %d/%d done (%d succeeded, %d failed)\n", p.dest, s.Succeeded+s.Failed, s.Total, s.Succeeded, s.Failed)
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Exit()
		return
	}
	p.line()
}
