package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/consumer"
)

// ErrConflict is wrapped by a Save refused because another process saved
// the rule book since this one last read it.
var ErrConflict = errors.New("the rule book was changed by another process meanwhile; try again")

// bookKey is the one key of the rule-book bucket.
const bookKey = "book"

// Store is the shared admin.Store: the API layer of the rule book in one
// key of a KV bucket with history. Save is a compare-and-swap on the
// revision this process last loaded or saved, so two processes cannot lose
// each other's changes; Watch reports the changes other processes make.
type Store struct {
	kv    consumer.KV
	where string

	mu   sync.Mutex // guards rev and last
	rev  uint64
	last []byte
}

// NewStore returns the Store over kv (the book bucket); where names it.
func NewStore(kv consumer.KV, where string) *Store { return &Store{kv: kv, where: where} }

var _ admin.Store = (*Store)(nil)

// Where names the bucket.
func (s *Store) Where() string { return s.where }

// Load reads the kept State.
func (s *Store) Load() (admin.State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	st := admin.State{Version: 1}
	b, rev, err := s.kv.Get(ctx, bookKey)
	switch {
	case errors.Is(err, consumer.ErrKVNotFound):
		b, rev = nil, 0
	case err != nil:
		return st, fmt.Errorf("cluster: read the rule book from %s: %w", s.where, err)
	default:
		if err := json.Unmarshal(b, &st); err != nil {
			return st, fmt.Errorf("cluster: the rule book in %s is not valid: %w", s.where, err)
		}
	}
	if st.Reservations == nil {
		st.Reservations = map[string]admin.ReservationChange{}
	}
	if st.Rules == nil {
		st.Rules = map[string]admin.RuleChange{}
	}
	if st.Meta == nil {
		st.Meta = map[string]admin.RuleMeta{}
	}
	s.mu.Lock()
	s.rev, s.last = rev, b
	s.mu.Unlock()
	return st, nil
}

// Save replaces the kept State, refused when another process saved since
// this one last loaded.
func (s *Store) Save(st admin.State) error {
	st.Version = 1
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("cluster: encode the rule book: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if bytes.Equal(b, s.last) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var rev uint64
	if s.rev == 0 {
		rev, err = s.kv.Create(ctx, bookKey, b)
	} else {
		rev, err = s.kv.Update(ctx, bookKey, b, s.rev)
	}
	if errors.Is(err, consumer.ErrKVConflict) {
		return fmt.Errorf("cluster: %s: %w", s.where, ErrConflict)
	}
	if err != nil {
		// A write that timed out may have landed (a KV does not know):
		// read the book back before answering.
		landed, lrev, known := s.readBack(b)
		if landed {
			s.rev, s.last = lrev, b
			return nil
		}
		if known {
			return fmt.Errorf("cluster: save the rule book to %s (not saved): %w", s.where, err)
		}
		return fmt.Errorf("cluster: save the rule book to %s (it may still be saved, and then applied by every process: read the limits back before trying again): %w", s.where, err)
	}
	s.rev, s.last = rev, b
	return nil
}

// syncer is a KV whose reads are served from a copy that Sync brings up
// to every write decided before it (consumer/kafka's KV): after Sync, a
// write that timed out has either landed or never will.
type syncer interface {
	Sync(ctx context.Context) error
}

// readBack tells whether the book is b after a failed write of b: landed
// (at rev), or known not to have landed (the book is still at the
// revision the write was to replace, after a Sync of the KV).
func (s *Store) readBack(b []byte) (landed bool, rev uint64, known bool) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	synced := false
	if sy, ok := s.kv.(syncer); ok {
		synced = sy.Sync(ctx) == nil
	}
	v, rev, err := s.kv.Get(ctx, bookKey)
	switch {
	case err == nil && bytes.Equal(v, b):
		return true, rev, true
	case errors.Is(err, consumer.ErrKVNotFound):
		return false, 0, synced && s.rev == 0
	case err == nil:
		return false, 0, synced && rev == s.rev
	}
	return false, 0, false
}

// Watch calls changed (on one goroutine) whenever the kept State is at a
// revision this process has not loaded or saved, until ctx ends.
func (s *Store) Watch(ctx context.Context, changed func()) error {
	return s.kv.Watch(ctx, bookKey, func(_ []byte, rev uint64) {
		s.mu.Lock()
		seen := rev == s.rev
		s.mu.Unlock()
		if !seen {
			changed()
		}
	})
}
