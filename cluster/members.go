package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/shard"
)

// memberPrefix is the key prefix of the member records: "m.<id>".
const memberPrefix = "m"

// Member is one process of the cluster as its record in the engine says
// (GET /v1/cluster): its shares and demand per limit, and the slots it
// holds.
type Member struct {
	ID       string    `json:"id"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Started  time.Time `json:"started"`
	Renewed  time.Time `json:"renewed"`
	LeaseAge string    `json:"leaseAge,omitempty"` // since Renewed, when read
	// Shares and Demand are by limit: "pool", "function:F", "scope:S".
	Shares map[string]int `json:"shares"`
	Demand map[string]int `json:"demand"`
	// InFlight is slots held by function, ScopeInFlight by scope.
	InFlight      map[string]int `json:"inFlight"`
	ScopeInFlight map[string]int `json:"scopeInFlight,omitempty"`
	Self          bool           `json:"self,omitempty"`
	// Queues are its waiters (in its record, for the others' Queues; not
	// in the status).
	Queues []dispatch.QueueStatus `json:"queues,omitempty"`
}

// Limit is one shared limit in the status: its capacity and who holds
// what of it.
type Limit struct {
	Limit    string         `json:"limit"`
	Capacity int            `json:"capacity"`
	Shares   map[string]int `json:"shares"`
	Demand   map[string]int `json:"demand"`
}

// Status is GET /v1/cluster.
type Status struct {
	Name    string   `json:"name"`
	Broker  string   `json:"broker"`
	Lease   string   `json:"lease"`
	Self    string   `json:"self"`
	Members []Member `json:"members"`
	Limits  []Limit  `json:"limits"`
}

var started = time.Now()

// selfLocked is this member's record now.
func (e *Engine) selfLocked() Member {
	host, _ := os.Hostname()
	m := Member{ID: e.id, Host: host, PID: os.Getpid(), Started: started, Renewed: e.now(),
		Shares: map[string]int{}, Demand: map[string]int{}, InFlight: map[string]int{}, ScopeInFlight: map[string]int{}}
	for _, ls := range e.limits {
		l := label(ls.kind, ls.name)
		if ls.applied > 0 {
			m.Shares[l] = ls.applied
		}
		if ls.demand > 0 {
			m.Demand[l] = ls.demand
		}
	}
	for fn, fu := range e.inner.Usage().Functions {
		if fu.InFlight > 0 {
			m.InFlight[fn] = fu.InFlight
		}
	}
	for _, s := range e.inner.Scopes() {
		if s.InFlight > 0 {
			m.ScopeInFlight[s.Scope] = s.InFlight
		}
	}
	m.Queues = e.inner.Queues()
	return m
}

// writeMember renews this member's record (bucket TTL removes it when the
// member is gone).
func (e *Engine) writeMember(ctx context.Context) {
	e.mu.Lock()
	m := e.selfLocked()
	e.mu.Unlock()
	b, _ := json.Marshal(m)
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	key := memberPrefix + "." + e.id
	_, rev, err := e.kv.Get(cctx, key)
	switch {
	case errors.Is(err, consumer.ErrKVNotFound):
		_, err = e.kv.Create(cctx, key, b)
	case err == nil:
		_, err = e.kv.Update(cctx, key, b, rev)
	}
	if err != nil && ctx.Err() == nil {
		e.renewFailed(key, err)
	}
}

func (e *Engine) deleteMember(ctx context.Context) error {
	key := memberPrefix + "." + e.id
	_, rev, err := e.kv.Get(ctx, key)
	if err != nil {
		return err
	}
	return e.kv.Delete(ctx, key, rev)
}

// readMembers reads every member record that was renewed within two
// leases (wall clocks: the records are for views, never for admission).
func (e *Engine) readMembers(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	keys, err := e.kv.Keys(cctx, memberPrefix)
	if err != nil {
		return
	}
	var ms []Member
	now := e.now()
	for _, k := range keys {
		v, _, err := e.kv.Get(cctx, k)
		if err != nil {
			continue
		}
		var m Member
		if json.Unmarshal(v, &m) != nil || now.Sub(m.Renewed) > 2*e.cfg.Lease {
			continue
		}
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	e.mu.Lock()
	e.members = ms
	e.mu.Unlock()
	e.m.members.Set(float64(len(ms)))
}

// Status is the cluster as this member sees it now: the member records
// (its own fresh) and the shares of every limit it looked at lately.
func (e *Engine) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	st := Status{Name: e.cfg.Name, Broker: e.cfg.Broker, Lease: shard.FormatDuration(e.cfg.Lease), Self: e.id, Limits: []Limit{}}
	self := e.selfLocked()
	self.Self = true
	found := false
	for _, m := range e.members {
		if m.ID == e.id {
			m, found = self, true
		}
		m.LeaseAge = shard.FormatDuration(now.Sub(m.Renewed).Round(time.Millisecond))
		m.Queues = nil // GET /v1/queues shows them
		st.Members = append(st.Members, m)
	}
	if !found {
		self.LeaseAge = "0s"
		self.Queues = nil
		st.Members = append(st.Members, self)
	}
	for _, key := range sortedKeys(e.limits) {
		ls := e.limits[key]
		l := Limit{Limit: label(ls.kind, ls.name), Capacity: e.capacityLocked(key), Shares: map[string]int{}, Demand: map[string]int{}}
		for id, c := range ls.view.Members {
			l.Shares[id], l.Demand[id] = c.Share, c.Demand
		}
		st.Limits = append(st.Limits, l)
	}
	return st
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
