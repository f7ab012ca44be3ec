package shard

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/event"
)

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// A shard retrying for longer than HeldWarnAfter says so in the log, with
// its state and reason, once per HeldWarnAfter.
func TestWorkerSaysWhenHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs lockedBuf
		d := &fakeDeliverer{answer: func(Delivery, int) event.Result {
			return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: event.KindStatus, Status: 500}}
		}}
		cfg := WorkerConfig{Source: "orders", Function: "fn", BatchSize: 1, MaxRetryAttempts: -1, MaxRecordAge: -1,
			Backoff: event.Backoff{Initial: time.Second, Max: 5 * time.Second, Multiplier: 2}}
		w := NewWorker(ID{Source: "orders", Partition: 2}, cfg, Hooks{Deliverer: d, DeadLetterer: &fakeDLQ{},
			Logger: slog.New(slog.NewTextHandler(&logs, nil)), Commit: func(event.Record) func() { return nil }})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { w.Run(ctx); close(done) }()
		w.Push(records(0, 1, 1, time.Now()))
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if strings.Contains(logs.String(), "shard held") {
			t.Fatalf("warned after 30s:\n%s", logs.String())
		}
		time.Sleep(2*HeldWarnAfter + 10*time.Second)
		synctest.Wait()
		cancel()
		<-done
		out := logs.String()
		if n := strings.Count(out, "shard held"); n != 2 {
			t.Fatalf("%d held lines after 2.5 minutes, want 2:\n%s", n, out)
		}
		if !strings.Contains(out, "state=retrying") || !strings.Contains(out, "reason=status") || !strings.Contains(out, "partition=2") {
			t.Fatalf("held line lacks state, reason or shard:\n%s", out)
		}
	})
}
