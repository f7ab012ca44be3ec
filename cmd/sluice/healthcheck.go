package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// defaultHealthURL is /readyz of the admin API on its default listen
// address, which is also where docker/sluice.yaml's 0.0.0.0:9400 answers
// inside the container.
const defaultHealthURL = "http://127.0.0.1:9400/readyz"

// newHealthcheckCmd is the probe of a container image without a shell or
// curl (the distroless one of docker/Dockerfile): it asks /readyz and exits
// 0 when sluice is ready, 1 otherwise, so that Docker's HEALTHCHECK and
// compose's healthcheck can run it as `sluice healthcheck`.
func newHealthcheckCmd() *cobra.Command {
	var (
		url     string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 if the sluice at --url answers /readyz with 200, else 1 (a container probe)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return usagef(cmd, "--url: %v", err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("healthcheck: %s answered %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s", body)
			return err
		},
	}
	cmd.Flags().StringVar(&url, "url", defaultHealthURL, "the /readyz URL to probe (/healthz to probe liveness only)")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "give up after this long")
	return cmd
}
