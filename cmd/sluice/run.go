package main

import (
	"os/signal"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/config"
)

func newRunCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Run the sources, the dispatcher and the admin API until SIGINT or SIGTERM",
		Long: `run loads and checks the configuration, starts the dispatcher and the admin
API (/metrics, /healthz, /readyz on admin.listen), and runs until SIGINT or
SIGTERM. On a signal it stops taking new work, lets in-flight invocations end
within the shutdown grace, and exits 0.

SIGHUP reloads the limits (account, reserved concurrency, rules) from the
configuration without stopping: running invocations keep their slots, and
changes made through the admin API stay on top. Other sections need a restart.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			hup := catchSIGHUP()
			defer signal.Stop(hup)
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			a, err := wire(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			stop := a.reloadOnSIGHUP(cmd.Context(), hup, func() (*config.Config, error) { return loadConfig(cmd) })
			defer stop()
			return a.run(cmd.Context())
		},
	}
}
