package ingress_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/consumer/kafka"
	natssrc "github.com/sluicehq/sluice/consumer/nats"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/ingress"
)

// recordingAppender keeps what it was asked to append, or fails.
type recordingAppender struct {
	err  error
	recs []event.Record
}

func (a *recordingAppender) Append(_ context.Context, recs []event.Record) error {
	if a.err != nil {
		return a.err
	}
	a.recs = append(a.recs, recs...)
	return nil
}

func recHeader(r event.Record, name string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == name {
			return string(h.Value), true
		}
	}
	return "", false
}

func TestEnqueueCarriesTheScopeTheWayTheSourceReadsIt(t *testing.T) {
	scope := func(s string) consumer.Scope {
		v, err := consumer.ParseScope(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := []struct {
		name      string
		nats      bool
		subject   string
		scopeSpec string
		scope     string
		check     func(t *testing.T, r event.Record, id string)
		wantErr   error
	}{
		{"kafka header", false, "", "header:tenant", "acme", func(t *testing.T, r event.Record, id string) {
			if v, _ := recHeader(r, "tenant"); v != "acme" || string(r.Key) != id {
				t.Errorf("tenant header %q, key %q; want acme and the id", v, r.Key)
			}
		}, nil},
		{"kafka key", false, "", "key", "acme", func(t *testing.T, r event.Record, _ string) {
			if string(r.Key) != "acme" {
				t.Errorf("key %q, want the scope", r.Key)
			}
		}, nil},
		{"kafka key unscoped", false, "", "key", "", func(t *testing.T, r event.Record, _ string) {
			if r.Key != nil {
				t.Errorf("key %q, want none: the id would be a scope of its own", r.Key)
			}
		}, nil},
		{"kafka literal, same scope", false, "", "literal:acme", "acme", nil, nil},
		{"kafka literal, other scope", false, "", "literal:acme", "globex", nil, ingress.ErrScopeNotCarried},
		{"kafka none", false, "", "none", "acme", nil, ingress.ErrScopeNotCarried},
		{"nats key", true, "jobs.>", "key", "acme", nil, ingress.ErrScopeNotCarried},
		{"nats header", true, "jobs.*.in", "header:Sluice-Scope", "acme", func(t *testing.T, r event.Record, id string) {
			v, _ := recHeader(r, "Sluice-Scope")
			msgID, _ := recHeader(r, "Nats-Msg-Id")
			if v != "acme" || r.Subject != "jobs."+id+".in" || msgID != id {
				t.Errorf("scope %q, subject %q, Nats-Msg-Id %q", v, r.Subject, msgID)
			}
		}, nil},
		{"nats literal subject, unscoped", true, "jobs", "none", "", func(t *testing.T, r event.Record, _ string) {
			if r.Subject != "jobs" {
				t.Errorf("subject %q, want jobs", r.Subject)
			}
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := &recordingAppender{}
			var addr ingress.EventAddresser = &kafka.Broker{}
			if c.nats {
				addr = &natssrc.Broker{}
			}
			aq := &ingress.Queue{Source: "q", Writer: w, Broker: addr,
				Config: consumer.SourceConfig{Subject: c.subject, Scope: scope(c.scopeSpec)}}
			q := ingress.NewQueues([]string{"fn"}, map[string]*ingress.Queue{"fn": aq})
			h := http.Header{"Content-Type": {"text/plain"}, "Traceparent": {"00-abc-def-01"}}
			id, err := q.Enqueue(context.Background(), "fn", c.scope, []byte("body"), h)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) || len(w.recs) != 0 {
					t.Fatalf("err %v (appended %d), want %v and nothing appended", err, len(w.recs), c.wantErr)
				}
				return
			}
			if err != nil || id == "" || len(w.recs) != 1 {
				t.Fatalf("id %q, err %v, appended %d", id, err, len(w.recs))
			}
			r := w.recs[0]
			ct, _ := recHeader(r, "Content-Type")
			tp, _ := recHeader(r, "traceparent")
			hid, _ := recHeader(r, ingress.HeaderInvocationID)
			if string(r.Value) != "body" || ct != "text/plain" || tp != "00-abc-def-01" || hid != id {
				t.Errorf("record %+v: want the body, Content-Type, traceparent and the id as headers", r)
			}
			if c.check != nil {
				c.check(t, r, id)
			}
		})
	}
}

func TestEnqueueErrors(t *testing.T) {
	down := errors.New("nats: no responders available for request")
	q := ingress.NewQueues([]string{"fn", "plain"},
		map[string]*ingress.Queue{"fn": {Source: "q", Writer: &recordingAppender{err: down}, Broker: &kafka.Broker{}}})
	ctx := context.Background()
	if _, err := q.Enqueue(ctx, "nope", "", nil, http.Header{}); !errors.Is(err, dispatch.ErrUnknownFunction) {
		t.Errorf("unknown function: %v", err)
	}
	if _, err := q.Enqueue(ctx, "plain", "", nil, http.Header{}); !errors.Is(err, ingress.ErrNoQueue) {
		t.Errorf("no async_queue: %v", err)
	}
	_, err := q.Enqueue(ctx, "fn", "", nil, http.Header{})
	if !errors.Is(err, down) || errors.Is(err, ingress.ErrNoQueue) || errors.Is(err, ingress.ErrScopeNotCarried) {
		t.Errorf("broker down: %v, want the write's error (the ingress answers 503)", err)
	}
}
