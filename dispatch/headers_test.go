package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// Bytes HTTP cannot carry in a header never make a connection error: a scope
// goes percent-encoded (and decodes to the very scope), a malformed
// traceparent is dropped, and the record is delivered.
func TestHostileHeaderBytesAreDelivered(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []http.Header
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Clone())
		mu.Unlock()
	}))
	defer srv.Close()
	d, _ := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 10, MinUnreserved: 1},
		Functions: map[string]FunctionConfig{"fn": {URL: srv.URL, Timeout: 5 * time.Second}},
	})
	sd := &StreamDeliverer{D: d, Source: "orders", Function: "fn",
		Encode: event.EncoderFunc(func(recs []event.Record) ([]byte, error) { return json.Marshal(len(recs)) }),
		Scope:  func(r *event.Record) string { return string(r.Key) }}
	cases := []struct {
		key, traceparent   string
		wantHeader, wantTP string
		encoded            bool
	}{
		{key: "tenant-a", wantHeader: "tenant-a"},
		{key: "a\x00b\nc", wantHeader: "a%00b%0Ac", encoded: true},
		{key: "tenant\xff", wantHeader: "tenant%FF", encoded: true},
		{key: "café 50%", wantHeader: "caf%C3%A9%2050%25", encoded: true},
		{key: " padded", wantHeader: "%20padded", encoded: true},
		{key: "t", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nX: y",
			wantHeader: "t"},
		{key: "t", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			wantHeader: "t", wantTP: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	}
	for i, c := range cases {
		rec := event.Record{Topic: "orders", Offset: int64(i), Key: []byte(c.key)}
		if c.traceparent != "" {
			rec.Headers = []event.Header{{Key: "traceparent", Value: []byte(c.traceparent)}, {Key: "tracestate", Value: []byte("a=b")}}
		}
		res := sd.Deliver(context.Background(), shard.Delivery{Records: []event.Record{rec}, Attempt: 1})
		if res.Outcome != event.Delivered {
			t.Fatalf("key %q: outcome %v (%+v), want delivered", c.key, res.Outcome, res.Error)
		}
		mu.Lock()
		h := seen[len(seen)-1]
		mu.Unlock()
		if got := h.Get("Sluice-Scope"); got != c.wantHeader {
			t.Errorf("key %q: Sluice-Scope %q, want %q", c.key, got, c.wantHeader)
		}
		if got := h.Get(HeaderScopeEncoding) == ScopeEncodingPercent; got != c.encoded {
			t.Errorf("key %q: encoded %v, want %v", c.key, got, c.encoded)
		}
		if c.encoded {
			if dec, err := url.PathUnescape(h.Get("Sluice-Scope")); err != nil || dec != c.key {
				t.Errorf("key %q: decodes to %q (%v)", c.key, dec, err)
			}
		}
		if got := h.Get("Traceparent"); got != c.wantTP {
			t.Errorf("traceparent %q sent as %q, want %q", c.traceparent, got, c.wantTP)
		}
		if c.wantTP == "" && h.Get("Tracestate") != "" {
			t.Errorf("tracestate sent without its traceparent")
		}
	}
}

// A header value that still cannot be sent is an InvalidRequestError, which
// the stream deliverer reports Invalid, never a connection error.
func TestUnsendableHeaderIsInvalid(t *testing.T) {
	f, err := NewHTTPFunction("fn", FunctionConfig{URL: "http://127.0.0.1:1/"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Invoke(context.Background(), &Request{Header: http.Header{"Sluice-Source": {"a\r\nb"}}})
	var iv *InvalidRequestError
	if !errors.As(err, &iv) || !IsPermanent(err) || OutcomeOf(err) != OutcomePermanent {
		t.Fatalf("error %v, want an InvalidRequestError (permanent)", err)
	}
	if res := resultOf(err, nil); res.Outcome != event.Invalid || res.Error.Kind != event.KindInvalid {
		t.Fatalf("result %+v, want Invalid", res)
	}
}

func TestCheckScope(t *testing.T) {
	for _, ok := range []string{"tenant-a", "café", "a b"} {
		if err := CheckScope(ok); err != nil {
			t.Errorf("CheckScope(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a\x00", "a\nb", "tenant\xff", string(make([]byte, MaxScopeBytes+1)), "a\u0085"} {
		if err := CheckScope(bad); err == nil {
			t.Errorf("CheckScope(%q) accepted", bad)
		}
	}
	if err := (Rule{Pattern: "bad\xff", Concurrency: 1}).Validate("rules[0]"); err == nil {
		t.Error("a rule pattern with invalid UTF-8 was accepted")
	}
	if err := (Rule{Pattern: "*", Concurrency: 1}).Validate("rules[0]"); err != nil {
		t.Error(err)
	}
}

// Every failed invocation is one Warn line (shown by a default Info
// logger), rate-limited per shard; a success is not logged.
func TestFailedInvocationsAreLogged(t *testing.T) {
	var logs syncBuffer
	d, _ := newTestDispatcher(t, Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 1}},
		WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))))
	fail := true
	d.Register("fn", HandlerFunc(func(context.Context, *Request) (*Response, error) {
		if fail {
			return nil, &FunctionError{Kind: KindStatus, Status: 500, Message: "boom"}
		}
		return &Response{}, nil
	}), time.Second)
	for i := range 30 {
		shardName := "orders/0"
		if i%2 == 1 {
			shardName = "orders/1"
		}
		_, _ = d.Invoke(context.Background(), &Request{Function: "fn", Shard: shardName, Items: []string{"5", "9"}}, nil)
	}
	fail = false
	_, _ = d.Invoke(context.Background(), &Request{Function: "fn", Shard: "orders/2"}, nil)
	out := logs.String()
	if got := strings.Count(out, "invocation failed"); got != 20 {
		t.Fatalf("%d lines for 15 failures on each of 2 shards, want 10 + 10:\n%s", got, out)
	}
	for _, want := range []string{"level=WARN", "function=fn", "shard=orders/0", "outcome=error", "first=5", "last=9", "boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if strings.Contains(out, "orders/2") {
		t.Error("a success was logged")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// A configured header net/http cannot send is a configuration error, not an
// InvalidRecord for every record.
func TestSetHeadersRefusesControlBytes(t *testing.T) {
	f, err := NewHTTPFunction("fn", FunctionConfig{URL: "http://127.0.0.1:1/"})
	if err != nil {
		t.Fatal(err)
	}
	err = f.SetHeaders(http.Header{"X-Token": {"abc\ndef"}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "functions.fn.headers.X-Token") {
		t.Fatalf("SetHeaders = %v, want ErrInvalid naming the key", err)
	}
	if err := f.SetHeaders(http.Header{"X-Token": {"abc def"}}); err != nil {
		t.Fatal(err)
	}
}
