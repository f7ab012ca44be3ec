// Command example-fn is the sample function of the docker/ compose stack: an
// HTTP function that follows sluice's contract (SPEC §3) and shows the ways
// a function answers. It logs what it receives, takes DELAY per invocation,
// and answers 429 with Retry-After when more than MAX_INFLIGHT invocations
// run at once, so that throttling by the function itself (FunctionThrottled)
// shows on the dashboard beside sluice's own limits. An event whose payload
// contains "fail" is answered 500 (retried, then dead-lettered).
//
// It uses the standard library only.
package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

func main() {
	addr := envOr("LISTEN", ":8080")
	delay, err := time.ParseDuration(envOr("DELAY", "200ms"))
	if err != nil {
		slog.Error("DELAY is not a duration", "error", err)
		os.Exit(2)
	}
	maxInflight, err := strconv.Atoi(envOr("MAX_INFLIGHT", "4"))
	if err != nil || maxInflight < 1 {
		slog.Error("MAX_INFLIGHT must be a positive number", "value", os.Getenv("MAX_INFLIGHT"))
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /invoke", handler(delay, int64(maxInflight)))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	slog.Info("example function listening", "addr", addr, "delay", delay.String(), "max_inflight", maxInflight)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		slog.Error("serve", "error", err)
		os.Exit(1)
	}
}

// handler answers one invocation: 429 when too many run at once, 500 for a
// payload asking to fail, else 200 with a small JSON summary.
func handler(delay time.Duration, maxInflight int64) http.Handler {
	var inflight atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if inflight.Add(1) > maxInflight {
			inflight.Add(-1)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "busy", http.StatusTooManyRequests)
			return
		}
		defer inflight.Add(-1)
		var body bytes.Buffer
		if _, err := body.ReadFrom(http.MaxBytesReader(w, r.Body, 6<<20)); err != nil {
			http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
			return
		}
		slog.Info("invoked",
			"invocation", r.Header.Get("Sluice-Invocation-Id"),
			"attempt", r.Header.Get("Sluice-Attempt"),
			"source", r.Header.Get("Sluice-Source"),
			"scope", r.Header.Get("Sluice-Scope"),
			"bytes", body.Len())
		select {
		case <-time.After(delay):
		case <-r.Context().Done(): // sluice gave up (its deadline): nobody reads the answer
			return
		}
		if bytes.Contains(body.Bytes(), []byte("fail")) {
			http.Error(w, "the event asked to fail", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"function": r.Header.Get("Sluice-Function"),
			"bytes":    body.Len(),
			"handled":  time.Now().UTC().Format(time.RFC3339Nano),
		})
	})
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
