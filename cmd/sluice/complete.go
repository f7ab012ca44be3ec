package main

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/retention"
)

// Shell completion (`sluice completion bash|zsh|fish|powershell`): besides
// commands and flags, the names a command takes come from the configuration
// given with -c (functions, sources, destinations), from the admin API
// (rule patterns, falling back to the configuration's rules), or from the
// dead-letter destinations themselves (ids). Completion never fails loudly:
// without a configuration or a reachable API it offers nothing.

// completeTimeout bounds what one completion may wait for the admin API or
// a broker: a shell waiting on a Tab must get an answer.
const completeTimeout = 3 * time.Second

type completeFunc = cobra.CompletionFunc

// withArgs sets cmd's completion of positional arguments.
func withArgs(f completeFunc, cmd *cobra.Command) *cobra.Command {
	cmd.ValidArgsFunction = f
	return cmd
}

// completionConfig loads the configuration of -c quietly, or returns nil.
func completionConfig(cmd *cobra.Command) *config.Config {
	files, _ := cmd.Flags().GetStringArray(flagConfig)
	if len(files) == 0 {
		return nil
	}
	cfg, err := config.Load(files, cmd.Flags(), config.WarnUnknownEnv(func(string) {}))
	if err != nil {
		return nil
	}
	return cfg
}

// names returns the keys of m that start with prefix, sorted.
func names[V any](m map[string]V, prefix string) []string {
	var out []string
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// oneArg completes the first positional argument only.
func oneArg(args []string) bool { return len(args) == 0 }

// completeFunctions completes a --function flag: the functions of -c, else
// those of the running sluice (--admin, or the default address).
func completeFunctions(cmd *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if cfg := completionConfig(cmd); cfg != nil {
		return names(cfg.Functions, prefix), cobra.ShellCompDirectiveNoFileComp
	}
	fns := map[string]bool{}
	if cmd.Flags().Lookup(flagAdmin) != nil {
		if c, err := newAdminClient(cmd); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), completeTimeout)
			defer cancel()
			var v struct {
				Functions []admin.FunctionView `json:"functions"`
			}
			if c.do(ctx, http.MethodGet, "/v1/functions", nil, &v) == nil {
				for _, f := range v.Functions {
					fns[f.FunctionName] = true
				}
			}
		}
	}
	return names(fns, prefix), cobra.ShellCompDirectiveNoFileComp
}

// completeFunctionArg completes a command's one FUNCTION argument.
func completeFunctionArg(cmd *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if !oneArg(args) {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return completeFunctions(cmd, args, prefix)
}

func completeSources(cmd *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	cfg := completionConfig(cmd)
	if cfg == nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return names(cfg.Sources, prefix), cobra.ShellCompDirectiveNoFileComp
}

func completeDestinations(cmd *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	cfg := completionConfig(cmd)
	if cfg == nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return names(cfg.DeadLetters, prefix), cobra.ShellCompDirectiveNoFileComp
}

// completeRulePatterns offers the rules of the running sluice (--admin, or
// admin.listen of -c), else those of the configuration.
func completeRulePatterns(cmd *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if !oneArg(args) {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	patterns := map[string]bool{}
	if c, err := newAdminClient(cmd); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), completeTimeout)
		defer cancel()
		var v struct {
			Rules []admin.Rule `json:"rules"`
		}
		if c.do(ctx, http.MethodGet, "/v1/rules", nil, &v) == nil {
			for _, r := range v.Rules {
				patterns[r.Pattern] = true
			}
		}
	}
	if len(patterns) == 0 {
		if cfg := completionConfig(cmd); cfg != nil {
			for _, r := range cfg.Rules {
				patterns[r.Pattern] = true
			}
		}
	}
	return names(patterns, prefix), cobra.ShellCompDirectiveNoFileComp
}

// completeLetterIDs offers the ids of the dead letters waiting for a
// replay, newest first, read from the destinations of -c.
func completeLetterIDs(cmd *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	cfg := completionConfig(cmd)
	if cfg == nil || !oneArg(args) {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(context.Background(), completeTimeout)
	defer cancel()
	cmd.SetContext(ctx)
	dests, _ := cmd.Flags().GetStringArray(flagDestination)
	f := dlqFlags{destinations: dests}
	idxs, _, err := f.load(cmd, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var letters []*retention.Letter
	for _, idx := range idxs {
		pending, _ := idx.Select(retention.Filter{})
		letters = append(letters, pending...)
	}
	sortLetters(letters)
	var out []cobra.Completion
	for i := len(letters) - 1; i >= 0; i-- {
		l := letters[i]
		if strings.HasPrefix(l.Envelope.ID, prefix) {
			out = append(out, cobra.CompletionWithDesc(l.Envelope.ID, string(l.Envelope.Condition)+" "+l.Envelope.Source))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// fixed completes a flag with a fixed list of values.
func fixed(values ...string) completeFunc {
	return func(_ *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, v := range values {
			if strings.HasPrefix(v, prefix) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func conditionNames() []string {
	out := make([]string, len(retention.Conditions))
	for i, c := range retention.Conditions {
		out[i] = string(c)
	}
	return out
}
