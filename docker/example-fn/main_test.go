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
// Retry-After: sluice's FunctionThrottled. Two calls race for the one slot of
// a function that never finishes on its own: whichever comes second must get
// the 429, in whatever order they arrive.
func TestHandlerThrottlesAboveMaxInflight(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(handler(time.Hour, 1))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	type answer struct {
		status     int
		retryAfter string
		err        error
	}
	answers := make(chan answer, 2) // one per call, so no sender blocks
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, strings.NewReader("x"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			resp.Body.Close()
			answers <- answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
		})
	}
	defer wg.Wait()
	defer cancel() // ends the call holding the slot: the handler returns on its context
	select {
	case a := <-answers:
		if a.err != nil || a.status != http.StatusTooManyRequests || a.retryAfter != "1" {
			t.Fatalf("first answer: status %d, Retry-After %q, err %v; want 429 with Retry-After 1", a.status, a.retryAfter, a.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no answer while one call holds the only slot; want a 429 for the other")
	}
}
