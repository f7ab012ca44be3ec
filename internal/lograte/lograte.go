// Package lograte bounds how many lines of one kind a key (a shard) logs:
// the first N per interval are written, the rest are counted, and the
// count is logged once the interval ends. A flood of failures then costs
// at most N+1 lines per key and interval, and none goes unnoticed.
package lograte

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Defaults of the failure logs of sluice (dead letters, failed
// invocations): 10 lines per shard per minute.
const (
	DefaultBurst    = 10
	DefaultInterval = time.Minute
)

// Logger writes lines through its slog.Logger, at most Burst per key per
// Interval. It is safe for concurrent use.
type Logger struct {
	log      *slog.Logger
	what     string // names the lines in the suppression line ("dead letters")
	burst    int
	interval time.Duration

	mu   sync.Mutex
	keys map[string]*window
}

type window struct {
	start      time.Time
	n          int // lines in this window, written or not
	suppressed int
	timer      bool // a report of the suppressed lines is armed
}

// New returns a Logger writing to log (nil: slog.Default()); what names the
// lines when some are suppressed. burst ≤ 0 and interval ≤ 0 take the
// defaults.
func New(log *slog.Logger, what string, burst int, interval time.Duration) *Logger {
	if log == nil {
		log = slog.Default()
	}
	if burst <= 0 {
		burst = DefaultBurst
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	return &Logger{log: log, what: what, burst: burst, interval: interval, keys: map[string]*window{}}
}

// Log writes msg with args at level for key, unless key already wrote
// Burst lines in the current interval; then the line is counted, and one
// line saying how many were suppressed is written when the interval ends.
func (l *Logger) Log(level slog.Level, key, msg string, args ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	now := time.Now()
	l.mu.Lock()
	w := l.keys[key]
	if w == nil || now.Sub(w.start) >= l.interval {
		if w != nil && w.suppressed > 0 && !w.timer {
			l.reportLocked(key, w)
		}
		if len(l.keys) > 4096 { // keys of shards long gone
			l.pruneLocked(now)
		}
		w = &window{start: now}
		l.keys[key] = w
	}
	w.n++
	if w.n > l.burst {
		w.suppressed++
		if !w.timer {
			w.timer = true
			time.AfterFunc(w.start.Add(l.interval).Sub(now), func() { l.flush(key, w) })
		}
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.log.Log(context.Background(), level, msg, args...)
}

func (l *Logger) flush(key string, w *window) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.suppressed > 0 {
		l.reportLocked(key, w)
	}
	w.timer = false
}

func (l *Logger) reportLocked(key string, w *window) {
	n := w.suppressed
	w.suppressed = 0
	l.log.Warn("log lines suppressed", "what", l.what, "shard", key, "suppressed", n, "interval", l.interval, "limit", l.burst)
}

func (l *Logger) pruneLocked(now time.Time) {
	for k, w := range l.keys {
		if now.Sub(w.start) >= 2*l.interval && w.suppressed == 0 && !w.timer {
			delete(l.keys, k)
		}
	}
}
