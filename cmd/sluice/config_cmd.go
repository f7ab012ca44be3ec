package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/config"
)

func newConfigCmd() *cobra.Command {
	return groupCmd("config", "Check configuration files", newConfigValidateCmd(), newConfigShowCmd())
}

func newConfigShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show [-c FILE]",
		Short: "Print the configuration as sluice sees it, with defaults and overrides applied",
		Long: `Print the configuration as 'sluice run' would see it: the files given with -c,
the SLUICE_ environment variables and the flags, with every default filled in,
as YAML that sluice reads back. Keys at their zero value are left out;
secrets (tokens, header values, keys) are not printed, only where they are
kept, and passwords and query values in URLs show as xxxxx. Exits 2 if it is
not valid.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			b, err := c.YAML()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
}

func newConfigValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate -c FILE",
		Short: "Check a configuration without running it",
		Long: `Check a configuration without running it: the files given with -c, with the
SLUICE_ environment variables and flags applied as 'sluice run' would.
Exits 0 and prints a summary if it is valid; exits 2 and prints every problem,
one per line, otherwise.`,
		Example: `  sluice config validate -c sluice.yaml
  sluice config validate -c base.yaml -c prod.yaml --set account.concurrency=500`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if files, _ := cmd.Flags().GetStringArray(flagConfig); len(files) == 0 {
				return usagef(cmd, "-c/--config FILE is required")
			}
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "config OK: %s\n", summary(c))
			return err
		},
	}
}

// summary counts what a configuration defines, e.g. "1 function, 3
// sources, 2 brokers, 2 dead-letter destinations, 2 rules, 2 admin tokens".
func summary(c *config.Config) string {
	count := func(n int, one, many string) string {
		if n == 1 {
			return "1 " + one
		}
		return fmt.Sprintf("%d %s", n, many)
	}
	brokers := count(len(c.Brokers), "broker", "brokers")
	if c.OnlyEmbedded() {
		brokers = "the embedded NATS broker"
	}
	return strings.Join([]string{
		count(len(c.Functions), "function", "functions"),
		count(len(c.Sources), "source", "sources"),
		brokers,
		count(len(c.DeadLetters), "dead-letter destination", "dead-letter destinations"),
		count(len(c.Rules), "rule", "rules"),
		count(len(c.Admin.Tokens), "admin token", "admin tokens"),
	}, ", ")
}
