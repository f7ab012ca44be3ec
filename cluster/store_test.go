package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/admin"
)

func TestStoreCompareAndSwapAndWatch(t *testing.T) {
	kv := newMemKV()
	s1, s2 := NewStore(kv, "mem"), NewStore(kv, "mem")
	st1, err := s1.Load()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Load(); err != nil {
		t.Fatal(err)
	}
	changed := make(chan struct{}, 4)
	if err := s1.Watch(context.Background(), func() { changed <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	n := 3
	st1.Reservations["fn"] = admin.ReservationChange{Reserved: &n}
	if err := s1.Save(st1); err != nil {
		t.Fatal(err)
	}
	// s2 has not seen s1's change: its save is refused, nothing is lost.
	st2 := admin.State{Rules: map[string]admin.RuleChange{"*": {Deleted: true}}}
	if err := s2.Save(st2); !errors.Is(err, ErrConflict) {
		t.Fatalf("a save over an unseen change: %v, want ErrConflict", err)
	}
	got, err := s2.Load()
	if err != nil {
		t.Fatal(err)
	}
	if r := got.Reservations["fn"].Reserved; r == nil || *r != 3 {
		t.Fatalf("s2 reads %+v, want the reservation s1 saved", got.Reservations)
	}
	got.Rules["*"] = admin.RuleChange{Deleted: true}
	if err := s2.Save(got); err != nil {
		t.Fatal(err)
	}
	// s1 is told about s2's change (and not about its own).
	select {
	case <-changed:
	case <-time.After(2 * time.Second):
		t.Fatal("s1's watcher was not told of s2's change")
	}
	again, err := s1.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !again.Rules["*"].Deleted || again.Reservations["fn"].Reserved == nil {
		t.Errorf("s1 reads %+v after s2's change", again)
	}
}

// lateKV is a memKV whose next write lands but reports a timeout, or
// (lost) fails without landing.
type lateKV struct {
	*memKV
	late, lost bool
}

func (k *lateKV) Update(ctx context.Context, key string, v []byte, rev uint64) (uint64, error) {
	if k.lost {
		k.lost = false
		return 0, context.DeadlineExceeded
	}
	r, err := k.memKV.Update(ctx, key, v, rev)
	if err == nil && k.late {
		k.late = false
		return 0, context.DeadlineExceeded
	}
	return r, err
}

// A Save whose write landed although the KV reported a timeout succeeds
// (the admin API must not refuse a change that is in force), and one whose
// outcome is unknown says so.
func TestStoreSaveThatTimedOutAfterLanding(t *testing.T) {
	kv := &lateKV{memKV: newMemKV()}
	s := NewStore(kv, "mem")
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	n := 3
	st.Reservations["fn"] = admin.ReservationChange{Reserved: &n}
	kv.late = true
	if err := s.Save(st); err != nil {
		t.Fatalf("a save that landed: %v", err)
	}
	m := 4
	st.Reservations["fn"] = admin.ReservationChange{Reserved: &m}
	if err := s.Save(st); err != nil { // on the landed revision: no conflict
		t.Fatalf("the next save: %v", err)
	}
	k := 5
	st.Reservations["fn"] = admin.ReservationChange{Reserved: &k}
	kv.lost = true
	err = s.Save(st)
	if err == nil || !strings.Contains(err.Error(), "may still be saved") {
		t.Fatalf("a save of unknown outcome: %v, want an error saying it may still be saved", err)
	}
}
