package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/admin"
)

// Output formats of the views (-o/--output).
const (
	flagOutput = "output"
	outTable   = "table"
	outJSON    = "json"
	outYAML    = "yaml"
)

var outputFormats = []string{outTable, outJSON, outYAML}

// addOutputFlag adds -o/--output to a view, with def as its default and
// the formats as its completions.
func addOutputFlag(cmd *cobra.Command, def string) {
	cmd.Flags().StringP(flagOutput, "o", def, "output `format`: "+strings.Join(outputFormats, ", "))
	_ = cmd.RegisterFlagCompletionFunc(flagOutput, fixed(outputFormats...)) // cannot fail: the flag was just added
}

// outputOf returns the format -o asks for; an unknown one is a usage error.
func outputOf(cmd *cobra.Command) (string, error) {
	f, err := cmd.Flags().GetString(flagOutput)
	if err != nil {
		return outTable, nil //nolint:nilerr // a command without -o prints its table
	}
	switch f {
	case outTable, outJSON, outYAML:
		return f, nil
	}
	return "", usagef(cmd, "--%s: %q is not one of %s", flagOutput, f, strings.Join(outputFormats, ", "))
}

// render writes v in the format -o asks for: the API's JSON as it came
// (indented), the same as YAML, or the table that table writes.
func render(cmd *cobra.Command, v any, table func(w io.Writer) error) error {
	format, err := outputOf(cmd)
	if err != nil {
		return err
	}
	return writeAs(cmd.OutOrStdout(), format, v, table)
}

func writeAs(w io.Writer, format string, v any, table func(w io.Writer) error) error {
	switch format {
	case outJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case outYAML:
		b, err := toYAML(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return table(w)
}

// toYAML renders v as YAML with the keys and order of its JSON form, so
// that -o yaml and -o json show the same fields under the same names.
func toYAML(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	plain(&doc)
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	return out.Bytes(), enc.Close()
}

// plain drops the flow and quoting styles the JSON text gave the nodes, so
// that the encoder writes block YAML and quotes only where it must.
func plain(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		plain(c)
	}
}

// printFunctions writes one line per function: its reservation (or "-"
// for the unreserved pool), usage, timeout and URL.
func printFunctions(out io.Writer, fns []admin.FunctionView) error {
	w := table(out)
	fmt.Fprintln(w, "FUNCTION\tRESERVED\tRUNNING\tWAITING\tTIMEOUT\tURL")
	for _, f := range fns {
		reserved := "-"
		if r := f.Concurrency.ReservedConcurrentExecutions; r != nil {
			reserved = strconv.Itoa(*r)
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\n", f.FunctionName, reserved, f.Usage.ConcurrentExecutions, f.Usage.Waiting,
			f.Configuration.Timeout, f.Configuration.URL)
	}
	return w.Flush()
}
