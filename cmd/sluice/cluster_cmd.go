package main

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/cluster"
)

func newClusterCmd() *cobra.Command {
	cmd := clientCmd("cluster", "Members of the cluster: their shares of the limits, demand and lease age", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			var v cluster.Status
			if err := c.do(cmd.Context(), http.MethodGet, "/v1/cluster", nil, &v); err != nil {
				return err
			}
			return render(cmd, v, func(out io.Writer) error {
				fmt.Fprintf(out, "cluster %s on broker %s, lease %s\n\n", v.Name, v.Broker, v.Lease)
				w := table(out)
				fmt.Fprintln(w, "MEMBER\tLEASE AGE\tSHARES\tDEMAND\tIN FLIGHT")
				for _, m := range v.Members {
					id := m.ID
					if m.Self {
						id += " (this process)"
					}
					inFlight := 0
					for _, n := range m.InFlight {
						inFlight += n
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", id, m.LeaseAge, counts(m.Shares), counts(m.Demand), inFlight)
				}
				return w.Flush()
			})
		})
	addClientFlags(cmd)
	addOutputFlag(cmd, outTable)
	return cmd
}

// counts formats a map of counts as "k=n k=n", sorted by key; "-" when empty.
func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return orDash(strings.Join(parts, " "))
}
