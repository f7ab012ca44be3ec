package cluster

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/dispatch"
)

// TestStatusMatchesOpenAPI checks what GET /v1/cluster answers (the JSON
// of Engine.Status, which admin writes as it is) against the Cluster
// schema of admin/openapi.json, whose objects allow no other fields: on
// an engine on its own and on two members holding slots.
func TestStatusMatchesOpenAPI(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(admin.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	ref := doc.Components.Schemas["Cluster"]
	if ref == nil || ref.Value == nil {
		t.Fatal("admin/openapi.json has no Cluster schema")
	}
	check := func(what string, st Status) {
		t.Helper()
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if err := ref.Value.VisitJSON(v); err != nil {
			t.Errorf("%s: GET /v1/cluster answers %s, which the document does not describe: %v", what, b, err)
		}
	}

	alone, err := New(Config{Name: "t", Broker: "bus", Lease: 2 * time.Second}, testBase())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(alone.Close)
	check("an engine not started", alone.Status())

	es := startEngines(t, newMemKV(), 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held []dispatch.Lease
	for i, e := range es {
		l, err := e.Acquire(ctx, "fn", []string{[]string{"a", "b"}[i]}, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	defer func() {
		for _, l := range held {
			l.Release()
		}
	}()
	// Wait until member 0 sees both members and a shared limit, so that
	// every part of the answer is there to check.
	for {
		st := es[0].Status()
		if len(st.Members) == 2 && len(st.Limits) > 0 {
			check("two members holding slots", st)
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("member 0 never saw both members and a limit: %+v", st)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestUsageByProcess: what each member holds is in every member's Usage
// and Scopes (ByProcess), and the JSON of GET /v1/account and GET
// /v1/limits that carries it is what admin/openapi.json describes.
func TestUsageByProcess(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(admin.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	valid := func(schema string, x any) {
		t.Helper()
		b, err := json.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if err := doc.Components.Schemas[schema].Value.VisitJSON(v); err != nil {
			t.Errorf("%s is not what the document describes: %v\n%s", schema, err, b)
		}
	}
	es := startEngines(t, newMemKV(), 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, e := range es {
		l, err := e.Acquire(ctx, "fn", []string{[]string{"a", "b"}[i]}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release()
	}
	for {
		u := es[0].Usage()
		if u.ByProcess[es[1].ID()] == 1 {
			if u.ByProcess[es[0].ID()] != 1 || len(u.ByProcess) != 2 || u.InFlight != 2 {
				t.Fatalf("Usage: %d in flight, by process %v; want 1 on each of the two members", u.InFlight, u.ByProcess)
			}
			by := map[string]map[string]int{}
			for _, s := range es[0].Scopes() {
				by[s.Scope] = s.ByProcess
				valid("ScopeUsage", s)
			}
			if by["a"][es[0].ID()] != 1 || len(by["a"]) != 1 || by["b"][es[1].ID()] != 1 || len(by["b"]) != 1 {
				t.Fatalf("Scopes by process: %v; want a on member 0, b on member 1", by)
			}
			var av admin.AccountView
			av.AccountUsage.ByProcess = u.ByProcess
			valid("Account", av)
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("member 0 never saw member 1's slot: %v", u.ByProcess)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
