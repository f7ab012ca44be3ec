package lograte

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// The first burst lines of a key are written, the rest counted and
// reported when the interval ends; another key has its own budget.
func TestBurstThenCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncBuf
		l := New(slog.New(slog.NewTextHandler(&buf, nil)), "dead letters", 3, time.Minute)
		for range 10 {
			l.Log(slog.LevelWarn, "orders/0", "dead letter")
		}
		l.Log(slog.LevelWarn, "orders/1", "dead letter")
		if got := strings.Count(buf.String(), "msg=\"dead letter\""); got != 4 {
			t.Fatalf("%d lines written, want 3 + 1:\n%s", got, buf.String())
		}
		time.Sleep(time.Minute + time.Second)
		synctest.Wait()
		out := buf.String()
		if !strings.Contains(out, "suppressed=7") || !strings.Contains(out, "shard=orders/0") {
			t.Fatalf("no report of the 7 suppressed lines:\n%s", out)
		}
		l.Log(slog.LevelWarn, "orders/0", "dead letter")
		if got := strings.Count(buf.String(), "msg=\"dead letter\""); got != 5 {
			t.Fatalf("a new interval did not write again: %d lines", got)
		}
	})
}
