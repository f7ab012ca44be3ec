package dispatch

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

func streamRecords(n int) []event.Record {
	out := make([]event.Record, n)
	for i := range out {
		out[i] = event.Record{Topic: "orders", Partition: 1, Offset: int64(100 + i),
			Key: []byte{'a' + byte(i%3)}, Headers: []event.Header{{Key: "traceparent", Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")}}}
	}
	return out
}

func TestStreamDelivererOverHTTP(t *testing.T) {
	var answer func(w http.ResponseWriter, r *http.Request)
	var last *http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		last = r
		answer(w, r)
	}))
	defer srv.Close()
	d, _ := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 10, MinUnreserved: 1},
		Functions: map[string]FunctionConfig{"fn": {URL: srv.URL, Timeout: 5 * time.Second}},
	})
	sd := &StreamDeliverer{D: d, Source: "orders", Function: "fn", ReportItemFailures: true,
		Encode: event.EncoderFunc(func(recs []event.Record) ([]byte, error) { return json.Marshal(len(recs)) }),
		Scope:  func(r *event.Record) string { return string(r.Key) }}
	recs := streamRecords(5)

	cases := []struct {
		name  string
		reply func(w http.ResponseWriter, r *http.Request)
		want  event.Result
	}{
		{"delivered", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) }, event.Result{Outcome: event.Delivered}},
		{"partial", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"batchItemFailures":[{"itemIdentifier":"104"},{"itemIdentifier":"102"}]}`))
		}, event.Result{Outcome: event.Partial, FailedFrom: 2}},
		{"throttled", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(429)
		}, event.Result{Outcome: event.Throttled, Reason: string(ReasonFunction), RetryAfter: 3 * time.Second}},
		{"failed", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }, event.Result{Outcome: event.Failed}},
		{"permanent", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(400) }, event.Result{Outcome: event.Permanent}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			answer = c.reply
			got := sd.Deliver(context.Background(), shard.Delivery{Records: recs, Attempt: 2})
			if got.Outcome != c.want.Outcome || got.FailedFrom != c.want.FailedFrom || got.Reason != c.want.Reason || got.RetryAfter != c.want.RetryAfter {
				t.Fatalf("result %+v, want %+v", got, c.want)
			}
			if got.Outcome == event.Failed && got.Error.Status != 500 {
				t.Fatalf("error %+v, want status 500", got.Error)
			}
		})
	}
	h := last.Header
	if h.Get("Sluice-Attempt") != "2" || h.Get("Sluice-Source") != "orders" || h.Get("Idempotency-Key") != "orders-1-100-104" ||
		h.Get("Traceparent") != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" || h.Get("Sluice-Invocation-Id") == "" {
		t.Fatalf("request headers %v", h)
	}
}

// A batch whose records carry several scopes takes a slot in each: when one
// scope is full, the batch waits, and OnWait hears why.
func TestStreamDelivererScopesAllOrNone(t *testing.T) {
	d, _ := newTestDispatcher(t, Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 1},
		Rules: []Rule{{Pattern: "*", Concurrency: 1}}})
	d.Register("fn", HandlerFunc(func(context.Context, *Request) (*Response, error) { return nil, nil }), 0)
	held, err := d.Limiter().TryAcquire("fn", []string{"b"})
	if err != nil {
		t.Fatal(err)
	}
	sd := &StreamDeliverer{D: d, Source: "s", Function: "fn",
		Encode: event.EncoderFunc(func([]event.Record) ([]byte, error) { return nil, nil }),
		Scope:  func(r *event.Record) string { return string(r.Key) }}
	waited := make(chan string, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	res := sd.Deliver(ctx, shard.Delivery{Records: streamRecords(3), OnWait: func(r string) { waited <- r }})
	if res.Outcome != event.Throttled || <-waited != string(ReasonScope) {
		t.Fatalf("result %+v, want throttled by scope", res)
	}
	if u := d.Limiter().Scopes(); len(u) != 1 || u[0].Scope != "b" {
		t.Fatalf("scopes held %+v: the waiting batch must hold none", u)
	}
	held.Release()
	res = sd.Deliver(context.Background(), shard.Delivery{Records: streamRecords(3)})
	if res.Outcome != event.Delivered {
		t.Fatalf("result %+v after release", res)
	}
	if a, b := newID(), newID(); len(a) != 32 || a == b {
		t.Fatalf("invocation ids %q, %q: want 32 distinct hex characters", a, b)
	}
}

func TestStreamIdempotencyKey(t *testing.T) {
	for _, c := range []struct {
		source      string
		partition   int32
		first, last int64
		want        string
	}{
		{"orders", 3, 100, 599, "orders-3-100-599"},
		{"o", 0, 0, 0, "o-0-0-0"},
		{"clicks", 2147483647, 9223372036854775806, 9223372036854775807, "clicks-2147483647-9223372036854775806-9223372036854775807"},
	} {
		if got := idempotencyKey(c.source, c.partition, c.first, c.last); got != c.want {
			t.Errorf("idempotencyKey(%q, %d, %d, %d) = %q, want %q", c.source, c.partition, c.first, c.last, got, c.want)
		}
	}
}
