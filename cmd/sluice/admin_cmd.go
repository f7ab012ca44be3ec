package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/dispatch"
)

// The admin CLI: HTTP clients of the admin API of a running sluice (SPEC §6).

const (
	flagAdmin  = "admin"
	flagToken  = "token"
	flagCACert = "cacert"
	flagCert   = "cert"
	flagKey    = "key"
	// envToken holds the bearer token when --token is not given.
	envToken = "SLUICE_TOKEN"
	// clientTimeout bounds one admin API call.
	clientTimeout = 30 * time.Second
)

// addClientFlags adds --admin and --token to cmd.
func addClientFlags(cmd *cobra.Command) {
	cmd.PersistentFlags().String(flagAdmin, "", "`URL` of the admin API (default: http:// + admin.listen of the configuration given with -c — https:// with admin.tls — else http://127.0.0.1:9400)")
	cmd.PersistentFlags().String(flagToken, "", "bearer `token` of the admin API (default: $"+envToken+")")
	cmd.PersistentFlags().String(flagCACert, "", "CA certificate `file` that the admin API's HTTPS certificate is signed by (default: the system's roots)")
	cmd.PersistentFlags().String(flagCert, "", "client certificate `file`, when the admin API asks for one (admin.tls.client_ca_file)")
	cmd.PersistentFlags().String(flagKey, "", "the client certificate's key `file`")
}

// adminClient calls the admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

func newAdminClient(cmd *cobra.Command) (*adminClient, error) {
	base, _ := cmd.Flags().GetString(flagAdmin)
	if base == "" {
		listen, scheme := "127.0.0.1:9400", "http://"
		if files, _ := cmd.Flags().GetStringArray(flagConfig); len(files) > 0 {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return nil, err
			}
			listen = cfg.Admin.Listen
			if cfg.Admin.TLS != nil {
				scheme = "https://"
			}
		}
		if host, port, err := net.SplitHostPort(listen); err == nil {
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				listen = net.JoinHostPort("127.0.0.1", port) // the server listens everywhere: ask it here
			}
		}
		base = scheme + listen
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef(cmd, "--%s: %q is not an http(s) URL", flagAdmin, base)
	}
	token, _ := cmd.Flags().GetString(flagToken)
	if token == "" {
		token = os.Getenv(envToken)
	}
	hc, err := adminHTTPClient(cmd)
	if err != nil {
		return nil, err
	}
	return &adminClient{base: strings.TrimRight(base, "/"), token: token, http: hc}, nil
}

// adminHTTPClient is the HTTP client of the admin CLI, with the CA and
// client certificate of --cacert, --cert and --key.
func adminHTTPClient(cmd *cobra.Command) (*http.Client, error) {
	ca, _ := cmd.Flags().GetString(flagCACert)
	cert, _ := cmd.Flags().GetString(flagCert)
	key, _ := cmd.Flags().GetString(flagKey)
	if ca == "" && cert == "" && key == "" {
		return &http.Client{Timeout: clientTimeout}, nil
	}
	if (cert == "") != (key == "") {
		return nil, usagef(cmd, "--%s and --%s go together", flagCert, flagKey)
	}
	ct, err := config.LoadClientTLS(dispatch.FunctionTLS{CAFile: ca, CertFile: cert, KeyFile: key})
	if err != nil {
		return nil, usagef(cmd, "--%s/--%s/--%s: %v", flagCACert, flagCert, flagKey, err)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = ct.Config
	return &http.Client{Timeout: clientTimeout, Transport: t}, nil
}

// do calls method path with body (JSON-encoded unless nil) and decodes a 2xx
// answer into out (unless nil). An error answer becomes an error holding the
// API's message.
func (c *adminClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e admin.ErrorBody
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return fmt.Errorf("%s (%s)", e.Message, resp.Status)
		}
		return fmt.Errorf("admin API: %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("admin API: %s %s: decode the answer: %w", method, path, err)
		}
	}
	return nil
}

// clientCmd returns a command that calls the admin API with a client built
// from its flags.
func clientCmd(use, short string, args cobra.PositionalArgs, run func(cmd *cobra.Command, c *adminClient, args []string) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  usageArgs(args),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := outputOf(cmd); err != nil {
				return err // before calling: a typo in -o must not cost a round trip
			}
			c, err := newAdminClient(cmd)
			if err != nil {
				return err
			}
			return run(cmd, c, args)
		},
	}
}

func table(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

func newAccountCmd() *cobra.Command {
	cmd := clientCmd("account", "Show the account limit, the unreserved pool and their usage", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			var v admin.AccountView
			if err := c.do(cmd.Context(), http.MethodGet, "/v1/account", nil, &v); err != nil {
				return err
			}
			return render(cmd, v, func(out io.Writer) error {
				w := table(out)
				fmt.Fprintln(w, "\tLIMIT\tIN USE")
				fmt.Fprintf(w, "account\t%d\t%d\n", v.AccountLimit.ConcurrentExecutions, v.AccountUsage.ConcurrentExecutions)
				fmt.Fprintf(w, "unreserved pool\t%d\t%d\n", v.AccountLimit.UnreservedConcurrentExecutions, v.AccountUsage.UnreservedConcurrentExecutions)
				fmt.Fprintf(w, "min unreserved\t%d\t\n", v.AccountLimit.MinUnreserved)
				fmt.Fprintf(w, "functions\t%d\t%d waiting\n", v.AccountUsage.FunctionCount, v.AccountUsage.Waiting)
				// In cluster mode, what each process holds.
				for _, id := range slices.Sorted(maps.Keys(v.AccountUsage.ByProcess)) {
					fmt.Fprintf(w, "process %s\t\t%d\n", id, v.AccountUsage.ByProcess[id])
				}
				return w.Flush()
			})
		})
	addClientFlags(cmd)
	addOutputFlag(cmd, outTable)
	return cmd
}

func newConcurrencyCmd() *cobra.Command {
	put := clientCmd("put", "Reserve concurrency for a function (0 throttles all its invocations)", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			fn, _ := cmd.Flags().GetString("function")
			if !cmd.Flags().Changed("reserved") {
				return usagef(cmd, "--reserved is required")
			}
			n, _ := cmd.Flags().GetInt("reserved")
			var out admin.ConcurrencyBody
			if err := c.do(cmd.Context(), http.MethodPut, "/v1/functions/"+url.PathEscape(fn)+"/concurrency",
				admin.ConcurrencyBody{ReservedConcurrentExecutions: &n}, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "function %s: reserved concurrency %d\n", fn, n)
			return nil
		})
	put.Flags().String("function", "", "function `name`")
	put.Flags().Int("reserved", 0, "reserved concurrent executions `N`")
	_ = put.MarkFlagRequired("function")
	_ = put.RegisterFlagCompletionFunc("function", completeFunctions)
	del := clientCmd("delete", "Remove a function's reservation: it shares the unreserved pool again", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			fn, _ := cmd.Flags().GetString("function")
			if err := c.do(cmd.Context(), http.MethodDelete, "/v1/functions/"+url.PathEscape(fn)+"/concurrency", nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "function %s: no reservation, shares the unreserved pool\n", fn)
			return nil
		})
	del.Flags().String("function", "", "function `name`")
	_ = del.MarkFlagRequired("function")
	_ = del.RegisterFlagCompletionFunc("function", completeFunctions)
	g := groupCmd("concurrency", "Reserved concurrency of functions (PutFunctionConcurrency)", put, del)
	addClientFlags(g)
	return g
}

func newFunctionsCmd() *cobra.Command {
	get := clientCmd("get FUNCTION", "Show a function's configuration, reservation and usage", cobra.ExactArgs(1),
		func(cmd *cobra.Command, c *adminClient, args []string) error {
			var v admin.FunctionView
			if err := c.do(cmd.Context(), http.MethodGet, "/v1/functions/"+url.PathEscape(args[0]), nil, &v); err != nil {
				return err
			}
			reserved := "none (unreserved pool)"
			if r := v.Concurrency.ReservedConcurrentExecutions; r != nil {
				reserved = strconv.Itoa(*r)
			}
			return render(cmd, v, func(out io.Writer) error {
				w := table(out)
				fmt.Fprintf(w, "function\t%s\n", v.FunctionName)
				fmt.Fprintf(w, "url\t%s\n", v.Configuration.URL)
				fmt.Fprintf(w, "timeout\t%s\n", v.Configuration.Timeout)
				if v.Configuration.AsyncQueue != "" {
					fmt.Fprintf(w, "async queue\t%s\n", v.Configuration.AsyncQueue)
				}
				fmt.Fprintf(w, "reserved concurrency\t%s (%s)\n", reserved, v.Concurrency.Origin)
				fmt.Fprintf(w, "running\t%d\n", v.Usage.ConcurrentExecutions)
				fmt.Fprintf(w, "waiting\t%d\n", v.Usage.Waiting)
				return w.Flush()
			})
		})
	get.ValidArgsFunction = completeFunctionArg
	addOutputFlag(get, outTable)
	list := clientCmd("list", "List the functions with their reservation and usage", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			var v struct {
				Functions []admin.FunctionView `json:"functions"`
			}
			if err := c.do(cmd.Context(), http.MethodGet, "/v1/functions", nil, &v); err != nil {
				return err
			}
			return render(cmd, v, func(out io.Writer) error { return printFunctions(out, v.Functions) })
		})
	addOutputFlag(list, outTable)
	g := groupCmd("functions", "Functions as the running sluice sees them", get, list)
	addClientFlags(g)
	return g
}

func newRulesCmd() *cobra.Command {
	set := clientCmd("set PATTERN", `Create or change the rule of PATTERN ("*" or an exact scope); flags left out keep their value`, cobra.ExactArgs(1),
		func(cmd *cobra.Command, c *adminClient, args []string) error {
			var p admin.RulePatch
			f := cmd.Flags()
			if f.Changed("concurrency") {
				n, _ := f.GetInt("concurrency")
				p.Concurrency = &n
			}
			if f.Changed("description") {
				d, _ := f.GetString("description")
				p.Description = &d
			}
			if f.Changed("disabled") {
				d, _ := f.GetBool("disabled")
				p.Disabled = &d
			}
			var r admin.Rule
			if err := c.do(cmd.Context(), http.MethodPut, "/v1/rules/"+url.PathEscape(args[0]), p, &r); err != nil {
				return err
			}
			return render(cmd, r, func(w io.Writer) error { return printRules(w, []admin.Rule{r}, true) })
		})
	set.Flags().Int("concurrency", 0, "concurrent invocations `N` per matching scope")
	set.Flags().String("description", "", "free `text`")
	set.Flags().Bool("disabled", false, "keep the rule but skip it when matching")

	list := clientCmd("list", "List the rules", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			var v struct {
				Rules []admin.Rule `json:"rules"`
			}
			if err := c.do(cmd.Context(), http.MethodGet, "/v1/rules", nil, &v); err != nil {
				return err
			}
			extra, _ := cmd.Flags().GetBool("extra")
			return render(cmd, v, func(w io.Writer) error { return printRules(w, v.Rules, extra) })
		})
	list.Flags().Bool("extra", false, "also show version and last change")
	addOutputFlag(list, outTable)
	addOutputFlag(set, outTable)
	set.ValidArgsFunction = completeRulePatterns

	action := func(use, short, suffix, done string) *cobra.Command {
		return withArgs(completeRulePatterns, clientCmd(use+" PATTERN", short, cobra.ExactArgs(1),
			func(cmd *cobra.Command, c *adminClient, args []string) error {
				method, path := http.MethodPost, "/v1/rules/"+url.PathEscape(args[0])+suffix
				if suffix == "" {
					method = http.MethodDelete
				}
				if err := c.do(cmd.Context(), method, path, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "rule %s %s\n", args[0], done)
				return nil
			}))
	}
	g := groupCmd("rules", "Scope rules: concurrency per scope (Restate's rule book)", set, list,
		action("enable", "Enable a rule", "/enable", "enabled"),
		action("disable", "Disable a rule: kept, but skipped when matching", "/disable", "disabled"),
		action("delete", "Delete a rule", "", "deleted"))
	addClientFlags(g)
	return g
}

func printRules(out io.Writer, rules []admin.Rule, extra bool) error {
	w := table(out)
	if extra {
		fmt.Fprintln(w, "PATTERN\tCONCURRENCY\tSTATE\tORIGIN\tVERSION\tLAST MODIFIED\tDESCRIPTION")
	} else {
		fmt.Fprintln(w, "PATTERN\tCONCURRENCY\tSTATE\tORIGIN\tDESCRIPTION")
	}
	for _, r := range rules {
		state := "enabled"
		if r.Disabled {
			state = "disabled"
		}
		if extra {
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%d\t%s\t%s\n", r.Pattern, r.Concurrency, state, r.Origin, r.Version,
				r.LastModified.Format(time.RFC3339), r.Description)
		} else {
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", r.Pattern, r.Concurrency, state, r.Origin, r.Description)
		}
	}
	return w.Flush()
}

func newLimitsCmd() *cobra.Command {
	cmd := clientCmd("limits", "Per scope: usage, limit, available slots and the matching rule", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			var v admin.LimitsView
			if err := c.do(cmd.Context(), http.MethodGet, "/v1/limits", nil, &v); err != nil {
				return err
			}
			return render(cmd, v, func(out io.Writer) error {
				w := table(out)
				// In cluster mode, which process holds what of each scope.
				cluster := slices.ContainsFunc(v.Scopes, func(s dispatch.ScopeUsage) bool { return len(s.ByProcess) > 0 })
				head := "SCOPE\tUSAGE\tLIMIT\tAVAILABLE\tRULE"
				if cluster {
					head += "\tBY PROCESS"
				}
				fmt.Fprintln(w, head)
				for _, s := range v.Scopes {
					line := fmt.Sprintf("%s\t%d\t%s\t%s\t%s", s.Scope, s.InFlight, unlimited(s.Limit), unlimited(s.Available), orDash(s.Rule))
					if cluster {
						var by []string
						for _, id := range slices.Sorted(maps.Keys(s.ByProcess)) {
							by = append(by, fmt.Sprintf("%s=%d", id, s.ByProcess[id]))
						}
						line += "\t" + orDash(strings.Join(by, ","))
					}
					fmt.Fprintln(w, line)
				}
				if err := w.Flush(); err != nil {
					return err
				}
				for _, r := range v.Rules {
					if r.Pattern == "*" && !r.Disabled {
						fmt.Fprintf(out, "other scopes: %d each (rule \"*\")\n", r.Concurrency)
					}
				}
				return nil
			})
		})
	addClientFlags(cmd)
	addOutputFlag(cmd, outTable)
	return cmd
}

func newShardsCmd() *cobra.Command {
	cmd := clientCmd("shards", "Per shard: state, since when, why, position, iterator age", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			var v struct {
				Shards []admin.ShardView `json:"shards"`
			}
			if err := c.do(cmd.Context(), http.MethodGet, "/v1/shards", nil, &v); err != nil {
				return err
			}
			return render(cmd, v, func(out io.Writer) error {
				w := table(out)
				fmt.Fprintln(w, "SHARD\tSTATE\tSINCE\tREASON\tPOSITION\tITERATOR AGE\tBUFFERED\tDELIVERED\tDEAD LETTERS")
				for _, s := range v.Shards {
					fmt.Fprintf(w, "%s/%d\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\n", s.Source, s.Shard, s.State, s.Since.Format(time.RFC3339),
						orDash(s.Reason), s.Position, seconds(s.IteratorAge), s.Buffered, s.Delivered, s.DeadLetters)
				}
				return w.Flush()
			})
		})
	addClientFlags(cmd)
	addOutputFlag(cmd, outTable)
	return cmd
}

func newQueuesCmd() *cobra.Command {
	cmd := clientCmd("queues", "Invocations waiting for slots, per function and scope", cobra.NoArgs,
		func(cmd *cobra.Command, c *adminClient, _ []string) error {
			var v struct {
				Queues []admin.QueueView `json:"queues"`
			}
			if err := c.do(cmd.Context(), http.MethodGet, "/v1/queues", nil, &v); err != nil {
				return err
			}
			return render(cmd, v, func(out io.Writer) error {
				w := table(out)
				// In cluster mode every process's queues, each with its process.
				cluster := slices.ContainsFunc(v.Queues, func(q admin.QueueView) bool { return q.Process != "" })
				head := "FUNCTION\tSCOPES\tWAITING\tOLDEST WAIT\tREASON"
				if cluster {
					head += "\tPROCESS"
				}
				fmt.Fprintln(w, head)
				for _, q := range v.Queues {
					line := fmt.Sprintf("%s\t%s\t%d\t%s\t%s", q.Function, orDash(strings.Join(q.Scopes, ",")), q.Waiting, seconds(q.OldestWait), q.Reason)
					if cluster {
						line += "\t" + orDash(q.Process)
					}
					fmt.Fprintln(w, line)
				}
				return w.Flush()
			})
		})
	addClientFlags(cmd)
	addOutputFlag(cmd, outTable)
	return cmd
}

func unlimited(n int) string {
	if n < 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func seconds(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Millisecond).String()
}
