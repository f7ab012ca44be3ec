package admin

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The journal of limit changes.
//
// Writing the whole limits.json on every API change made 10,000 rules take
// minutes to create (each write encodes every rule: quadratic). Instead a
// change is appended to limits.journal as one JSON line per changed entry,
// and the file is rewritten whole (a snapshot) only when the journal has
// grown larger than the snapshot, at start-up and on the first change after
// a failed write: amortized, a change costs a line and an fsync.
//
// The journal's first line names the snapshot it applies to (the SHA-256 of
// its bytes). A compaction writes the snapshot, then removes the journal; a
// crash in between leaves a journal whose base no longer matches, which is
// then ignored — its changes are all in the new snapshot. A crash in the
// middle of an append leaves a torn last line, which is ignored too: that
// change was never acknowledged.

// journalFile is the journal's name under state_dir.
const journalFile = "limits.journal"

// minCompactBytes is the journal size under which it is never compacted, so
// that a small book does not rewrite its file on every other change.
const minCompactBytes = 64 << 10

// journal appends the differences between saved states to its file.
type journal struct {
	path string
	// last is the state that the snapshot and the journal hold together;
	// nil when unknown (before the first snapshot, after a failed write),
	// which makes the next save a snapshot.
	last *State
	// base is the hash of the snapshot the journal applies to.
	base string
	// size is the journal's length; snapSize the snapshot's.
	size, snapSize int64
}

// journalLine is one line: the header ({"base": ...}) or one changed entry
// of a kind ("reservation", "rule", "ruleVersion"); a missing value deletes
// the entry.
type journalLine struct {
	Base  string          `json:"base,omitempty"`
	Kind  string          `json:"kind,omitempty"`
	Key   string          `json:"key,omitempty"`
	Value json.RawMessage `json:"value,omitempty"`
}

func snapshotHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// replay applies the journal to st, read from a snapshot of bytes snap.
func (j *journal) replay(st *State, snap []byte) error {
	b, err := os.ReadFile(j.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("admin: read %s: %w", j.path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	first := true
	for sc.Scan() {
		raw := sc.Bytes()
		var l journalLine
		if err := json.Unmarshal(raw, &l); err != nil {
			if !bytes.HasSuffix(b, []byte("\n")) && bytes.HasSuffix(b, raw) {
				return nil // a torn last line: a change that was never acknowledged
			}
			return fmt.Errorf("admin: %s is not a valid journal (fix or remove it): %w", j.path, err)
		}
		if first {
			if l.Base != snapshotHash(snap) {
				return nil // a journal of an older snapshot: its changes are all in the file
			}
			first = false
			continue
		}
		if err := st.apply(l); err != nil {
			return fmt.Errorf("admin: %s: %w", j.path, err)
		}
	}
	return sc.Err()
}

// apply sets or deletes the entry of one journal line.
func (s *State) apply(l journalLine) error {
	del := len(l.Value) == 0 || string(l.Value) == "null"
	switch l.Kind {
	case "reservation":
		return applyEntry(s.Reservations, l.Key, l.Value, del)
	case "rule":
		return applyEntry(s.Rules, l.Key, l.Value, del)
	case "ruleVersion":
		return applyEntry(s.Meta, l.Key, l.Value, del)
	}
	return fmt.Errorf("unknown kind %q", l.Kind)
}

func applyEntry[V any](m map[string]V, key string, raw json.RawMessage, del bool) error {
	if del {
		delete(m, key)
		return nil
	}
	var v V
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	m[key] = v
	return nil
}

// append writes the entries in which st differs from the last saved state
// as lines; done is false when a snapshot should be written instead.
func (j *journal) append(st State) (done bool, err error) {
	if j.last == nil {
		return false, nil
	}
	var buf bytes.Buffer
	if j.size == 0 {
		if err := writeLine(&buf, journalLine{Base: j.base}); err != nil {
			return false, err
		}
	}
	n := buf.Len()
	res, err := diff(&buf, "reservation", j.last.Reservations, st.Reservations, eqReservation)
	if err != nil {
		return false, err
	}
	rules, err := diff(&buf, "rule", j.last.Rules, st.Rules, eqRule)
	if err != nil {
		return false, err
	}
	meta, err := diff(&buf, "ruleVersion", j.last.Meta, st.Meta, eqMeta)
	if err != nil {
		return false, err
	}
	switch {
	case buf.Len() == n:
		return true, nil // nothing changed
	case j.size+int64(buf.Len()) > max(j.snapSize, minCompactBytes):
		return false, nil // compact
	}
	if err := os.MkdirAll(filepath.Dir(j.path), 0o750); err != nil {
		j.last = nil
		return true, fmt.Errorf("admin: save limits: %w", err)
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		j.last = nil
		return true, fmt.Errorf("admin: save limits: %w", err)
	}
	_, err = f.Write(buf.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		j.last = nil // the file may end in a torn line: the next save writes a snapshot
		return true, fmt.Errorf("admin: save limits to %s: %w", j.path, err)
	}
	// Bring last up to date by the entries that changed only: cloning it
	// would make every change cost the whole book again.
	update(j.last.Reservations, st.Reservations, res)
	update(j.last.Rules, st.Rules, rules)
	update(j.last.Meta, st.Meta, meta)
	j.size += int64(buf.Len())
	return true, nil
}

// update makes old equal to cur in the keys that differ (diff). Values are
// copied shallowly: the book replaces an entry, and the pointers in it,
// whole; it never changes one in place.
func update[V any](old, cur map[string]V, keys []string) {
	for _, k := range keys {
		if v, ok := cur[k]; ok {
			old[k] = v
		} else {
			delete(old, k)
		}
	}
}

// reset starts a new journal after a snapshot of size n holding st.
func (j *journal) reset(st State, snap []byte) error {
	if err := os.Remove(j.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		j.last = nil
		return fmt.Errorf("admin: save limits: remove the old journal: %w", err)
	}
	last := st.clone()
	j.last, j.base, j.size, j.snapSize = &last, snapshotHash(snap), 0, int64(len(snap))
	return nil
}

// diff writes a line per entry of kind in which cur differs from old and
// returns their keys.
func diff[V any](buf *bytes.Buffer, kind string, old, cur map[string]V, eq func(a, b V) bool) ([]string, error) {
	var keys []string
	added := 0
	for k, v := range cur {
		o, ok := old[k]
		if ok && eq(o, v) {
			continue
		}
		if !ok {
			added++
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("admin: encode limits: %w", err)
		}
		if err := writeLine(buf, journalLine{Kind: kind, Key: k, Value: raw}); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if len(old) > len(cur)-added { // some keys of old are gone
		for k := range old {
			if _, ok := cur[k]; !ok {
				if err := writeLine(buf, journalLine{Kind: kind, Key: k}); err != nil {
					return nil, err
				}
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

func writeLine(buf *bytes.Buffer, l journalLine) error {
	b, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("admin: encode limits: %w", err)
	}
	buf.Write(b)
	buf.WriteByte('\n')
	return nil
}

func eqPtr[T comparable](a, b *T) bool {
	return a == b || (a != nil && b != nil && *a == *b)
}

func eqReservation(a, b ReservationChange) bool {
	return eqPtr(a.Reserved, b.Reserved) && a.Deleted == b.Deleted && a.LastModified.Equal(b.LastModified)
}

func eqRule(a, b RuleChange) bool {
	return eqPtr(a.Concurrency, b.Concurrency) && eqPtr(a.Description, b.Description) && eqPtr(a.Disabled, b.Disabled) &&
		a.Deleted == b.Deleted && a.Replaces == b.Replaces
}

func eqMeta(a, b RuleMeta) bool {
	return a.Rule == b.Rule && a.Version == b.Version && a.LastModified.Equal(b.LastModified)
}

// removeStaleTemps removes the temporary files of snapshots that a crash
// left in dir (limits.json.tmp-*). The caller holds dir's lock, so no other
// process is writing one.
func removeStaleTemps(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), stateFile+".tmp-") {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
