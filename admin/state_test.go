package admin

import (
	"errors"
	"testing"

	"github.com/sluicehq/sluice/dispatch"
)

// memStore is a Store of another kind, in memory, that can be told to fail.
type memStore struct {
	st    State
	saves int
	fail  error
}

func (m *memStore) Load() (State, error) {
	st := m.st.clone()
	if st.Reservations == nil {
		st.Reservations = map[string]ReservationChange{}
	}
	if st.Rules == nil {
		st.Rules = map[string]RuleChange{}
	}
	if st.Meta == nil {
		st.Meta = map[string]RuleMeta{}
	}
	return st, nil
}

func (m *memStore) Save(st State) error {
	if m.fail != nil {
		return m.fail
	}
	m.saves++
	m.st = st.clone()
	return nil
}

func (m *memStore) Where() string { return "memory" }

// WithStore: the Book keeps its API layer in the Store it is given, reads it
// back at start, and refuses (and undoes) a change the Store cannot keep.
func TestBookWithStore(t *testing.T) {
	cfg := testConfig()
	m := &memStore{}
	newBook := func() *Book {
		t.Helper()
		lim, err := dispatch.NewLimiter(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(lim.Close)
		b, err := NewBook(lim, cfg, t.TempDir(), WithStore(m))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := newBook()
	if b.Path() != "memory" {
		t.Fatalf("Path = %q, want the Store's", b.Path())
	}
	if err := b.PutReservation("other", 20); err != nil {
		t.Fatal(err)
	}
	if r := m.st.Reservations["other"].Reserved; r == nil || *r != 20 {
		t.Fatalf("store holds %+v, want other reserved at 20", m.st.Reservations)
	}
	if n, ok := newBook().Limiter().Reservation("other"); !ok || n != 20 {
		t.Fatalf("a new book over the store has other at %d (%v), want 20", n, ok)
	}
	m.fail = errors.New("store down")
	if err := b.PutReservation("other", 30); !errors.Is(err, m.fail) {
		t.Fatalf("PutReservation with a failing store = %v, want its error", err)
	}
	if n, _ := b.Limiter().Reservation("other"); n != 20 {
		t.Fatalf("reservation after a refused save = %d, want 20 put back", n)
	}
}
