package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHandlerAnswers(t *testing.T) {
	t.Parallel()
	h := handler(0, 4)
	for _, c := range []struct {
		body   string
		status int
	}{{`{"ok":1}`, 200}, {`please fail`, 500}} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/invoke", strings.NewReader(c.body)))
		if rec.Code != c.status {
			t.Errorf("%q: %d, want %d", c.body, rec.Code, c.status)
		}
	}
}

// Past MAX_INFLIGHT concurrent invocations the function answers 429 with
// Retry-After: sluice's FunctionThrottled.
func TestHandlerThrottlesAboveMaxInflight(t *testing.T) {
	t.Parallel()
	h := handler(time.Hour, 1)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	slow, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, strings.NewReader("x"))
	wg.Go(func() {
		if resp, err := http.DefaultClient.Do(slow); err == nil {
			resp.Body.Close()
		}
	})
	defer wg.Wait()
	defer cancel() // ends the hanging call: the handler returns on its context
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Post(srv.URL, "text/plain", strings.NewReader("y"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			if resp.Header.Get("Retry-After") != "1" {
				t.Errorf("Retry-After = %q", resp.Header.Get("Retry-After"))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 429 while an invocation runs (last %d)", resp.StatusCode)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
