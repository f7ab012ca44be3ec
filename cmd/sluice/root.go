package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/config"
)

// usageError is a command line that cannot be run as written (unknown
// command or flag, missing argument): exit code 2, with a pointer to --help.
type usageError struct {
	cmd string // the command path, for "Run 'sluice config --help'"
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf(format, args...)}
}

// usageArgs makes an argument check's error a usage error.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &usageError{cmd: cmd.CommandPath(), err: err}
		}
		return nil
	}
}

// groupCmd returns a command that only holds subcommands: alone it prints
// its help; with an unknown subcommand it is a usage error (cobra would
// print the help and succeed).
func groupCmd(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  usageArgs(cobra.NoArgs),
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(subs...)
	return cmd
}

// Flag names shared by the commands.
const (
	flagConfig   = "config"
	flagLogLevel = "log-level"
)

func newRootCmd() *cobra.Command {
	root := groupCmd("sluice", "Consume Kafka and NATS JetStream, invoke functions under Lambda-like concurrency limits",
		newRunCmd(),
		newQuickstartCmd(),
		newConfigCmd(),
		newAccountCmd(),
		newConcurrencyCmd(),
		newFunctionsCmd(),
		newRulesCmd(),
		newLimitsCmd(),
		newShardsCmd(),
		newQueuesCmd(),
		newClusterCmd(),
		newDLQCmd(),
		newVersionCmd(),
		newHealthcheckCmd(),
	)
	root.Long = `sluice consumes event streams from Kafka or NATS JetStream and invokes functions
with them, under concurrency limits that behave like AWS Lambda's: an account
limit, reserved concurrency per function, and per-scope rules.

Configuration comes from the files given with -c (YAML, or TOML by a .toml
extension), then SLUICE_ environment variables (SLUICE_ACCOUNT__CONCURRENCY=500
sets account.concurrency: two underscores between levels), then flags
(--set sources.orders.batch_size=200). Bad configuration exits with status 2.`
	root.SilenceUsage = true  // errors are reported by run, without the usage dump
	root.SilenceErrors = true // run prints errors itself, one line per problem
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cmd: cmd.CommandPath(), err: err}
	})
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		_, err := newLogger(cmd)
		return err
	}

	pf := root.PersistentFlags()
	pf.StringArrayP(flagConfig, "c", nil, "configuration `FILE` (YAML: .yaml, .yml, .json; TOML: .toml); repeat to layer files, later ones win")
	pf.String(flagLogLevel, "info", "log `level`: debug, info, warn or error")
	config.RegisterFlags(pf)
	_ = root.RegisterFlagCompletionFunc(flagLogLevel, fixed("debug", "info", "warn", "error")) // cannot fail: the flag was just added
	_ = root.MarkPersistentFlagFilename(flagConfig, "yaml", "yml", "json", "toml")
	// cobra's completion command, made now so that, like every group, an
	// unknown shell is a usage error rather than help and exit 0.
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Args = usageArgs(cobra.NoArgs)
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
	}
	v, _ := buildInfo()
	root.Version = v
	root.SetVersionTemplate(versionText()) // the same as `sluice version`
	return root
}

// loadConfig loads and validates the configuration of the files given with
// -c, the environment and the flags. A SLUICE_ variable that matches no key
// is a warning (and ignored), except for the config commands, which are
// there to find such mistakes and fail on them.
func loadConfig(cmd *cobra.Command) (*config.Config, error) {
	files, err := cmd.Flags().GetStringArray(flagConfig)
	if err != nil {
		return nil, err
	}
	if p := cmd.Parent(); p != nil && p.Name() == "config" {
		return config.Load(files, cmd.Flags())
	}
	return config.Load(files, cmd.Flags(), config.WarnUnknownEnv(func(msg string) {
		if log, err := newLogger(cmd); err == nil {
			log.Warn("environment variable ignored: " + msg)
		}
	}))
}

// newLogger returns the logger --log-level asks for, writing to the
// command's stderr: text on a terminal, JSON otherwise (SPEC §6).
func newLogger(cmd *cobra.Command) (*slog.Logger, error) {
	name, _ := cmd.Flags().GetString(flagLogLevel)
	var level slog.Level
	if err := level.UnmarshalText([]byte(name)); err != nil {
		return nil, usagef(cmd, "--%s: %q is not one of debug, info, warn, error", flagLogLevel, name)
	}
	w := cmd.ErrOrStderr()
	opts := &slog.HandlerOptions{Level: level}
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
