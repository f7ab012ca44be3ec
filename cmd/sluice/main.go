// Command sluice consumes Kafka and NATS JetStream and invokes functions
// under Lambda-like concurrency limits. See `sluice --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluicehq/sluice/config"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // sluice could not do what it was asked
	exitConfig  = 2 // bad configuration or command line: nothing was started
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line args and returns the exit code; tests call
// it in process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return report(root.ExecuteContext(ctx), stderr)
}

// report prints err for a person and returns the exit code it calls for.
// Output errors are ignored: stderr is the last resort.
func report(err error, stderr io.Writer) int {
	var (
		cerr  *config.Error
		usage *usageError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &cerr):
		// One problem per line, each naming its key.
		for _, m := range cerr.Messages() {
			_, _ = fmt.Fprintln(stderr, "sluice:", m)
		}
		return exitConfig
	case errors.Is(err, config.ErrInvalid):
		_, _ = fmt.Fprintln(stderr, "sluice:", err)
		return exitConfig
	case errors.As(err, &usage):
		_, _ = fmt.Fprintf(stderr, "sluice: %v\nRun '%s --help' for usage.\n", err, usage.cmd)
		return exitConfig
	default:
		_, _ = fmt.Fprintln(stderr, "sluice:", err)
		return exitFailure
	}
}
