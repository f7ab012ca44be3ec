// Command waitkafka waits until a Kafka broker answers a metadata request
// with itself in it, the readiness check of scripts/brokers/up.sh.
//
//	waitkafka -addr 127.0.0.1:9092 [-timeout 60s] [-pid 1234]
//
// It exits 0 once the broker lists at least one live broker and a controller,
// and 1 when the timeout passes first or, with -pid, as soon as that process
// (the broker's JVM) has exited, so a broker that dies on start-up is reported
// at once rather than after the whole timeout. A real client (franz-go) asks,
// so "ready" means what the tests will see, not merely an open port.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	addr := flag.String("addr", "", "broker address, host:port (required)")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	pid := flag.Int("pid", 0, "if set, stop waiting as soon as this process has exited")
	flag.Parse()
	if *addr == "" {
		fmt.Fprintln(os.Stderr, "waitkafka: -addr is required")
		os.Exit(2)
	}
	if err := wait(*addr, *timeout, *pid); err != nil {
		fmt.Fprintln(os.Stderr, "waitkafka:", err)
		os.Exit(1)
	}
}

func wait(addr string, timeout time.Duration, pid int) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	cl, err := kgo.NewClient(
		kgo.SeedBrokers(addr),
		kgo.DialTimeout(time.Second),
		kgo.ClientID("sluice-waitkafka"),
	)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	var last error
	for {
		if pid > 0 && !alive(pid) {
			if last == nil {
				return fmt.Errorf("broker process %d exited before %s was ready", pid, addr)
			}
			return fmt.Errorf("broker process %d exited before %s was ready: %w", pid, addr, last)
		}
		// One attempt may not use the whole budget: the client would keep
		// retrying its dial inside it and we would not notice a dead pid.
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := adm.BrokerMetadata(actx)
		acancel()
		switch {
		case err != nil:
			last = err
		case len(m.Brokers) == 0:
			last = errors.New("metadata lists no live broker yet")
		case m.Controller < 0:
			last = errors.New("metadata names no controller yet")
		default:
			fmt.Printf("kafka: %s answers metadata: cluster %s, %d broker(s), controller %d%s\n",
				addr, m.Cluster, len(m.Brokers), m.Controller, versionGuess(ctx, adm))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %w", addr, timeout, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// versionGuess says which Kafka release the broker's API versions look like,
// as a cross-check of the jars that were started. Best effort: "" on error.
func versionGuess(ctx context.Context, adm *kadm.Client) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	vs, err := adm.ApiVersions(ctx)
	if err != nil {
		return ""
	}
	for _, v := range vs.Sorted() {
		if v.Err == nil {
			return ", protocol of Kafka " + v.VersionGuess()
		}
	}
	return ""
}

// alive reports whether process pid still exists (signal 0 probes without
// sending anything).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
