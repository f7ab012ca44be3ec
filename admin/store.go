package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/sluicehq/sluice/dispatch"
)

// stateFile is the name of the file under state_dir that keeps the limits
// changed through the API.
const stateFile = "limits.json"

// stateVersion is the format of the file; a file of a newer format is
// refused rather than misread.
const stateVersion = 1

// state is the API layer as the file keeps it.
type state struct {
	Version      int                          `json:"version"`
	Reservations map[string]reservationChange `json:"reservations"`
	Rules        map[string]ruleChange        `json:"rules"`
	// Meta is the version and last change of every effective rule (also
	// those of the file), with the rule as it was then, so that a change of
	// the file while sluice was stopped still counts as a new version.
	Meta map[string]ruleMeta `json:"ruleVersions"`
}

// reservationChange is a reservation set or deleted through the API.
type reservationChange struct {
	Reserved     *int      `json:"reserved,omitempty"`
	Deleted      bool      `json:"deleted,omitempty"`
	LastModified time.Time `json:"lastModified"`
}

// ruleChange is a rule changed through the API: the fields set (merge
// semantics), or a delete.
type ruleChange struct {
	Concurrency *int    `json:"concurrency,omitempty"`
	Description *string `json:"description,omitempty"`
	Disabled    *bool   `json:"disabled,omitempty"`
	// Deleted removes the rule, even when the file has one.
	Deleted bool `json:"deleted,omitempty"`
	// Replaces ignores the file's rule of this pattern: it was deleted
	// through the API and then created again.
	Replaces bool `json:"replaces,omitempty"`
}

type ruleMeta struct {
	Rule         dispatch.Rule `json:"rule"`
	Version      uint64        `json:"version"`
	LastModified time.Time     `json:"lastModified"`
}

func (s state) clone() state {
	return state{Version: s.Version, Reservations: maps.Clone(s.Reservations), Rules: maps.Clone(s.Rules), Meta: maps.Clone(s.Meta)}
}

// store reads and writes the state file and its journal (journal.go).
type store struct {
	dir  string
	path string
	j    journal
}

func newStore(dir string) *store {
	return &store{dir: dir, path: filepath.Join(dir, stateFile), j: journal{path: filepath.Join(dir, journalFile)}}
}

// load reads the file; a missing file is an empty state.
func (s *store) load() (state, error) {
	st := state{Version: stateVersion}
	removeStaleTemps(s.dir)
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return st, fmt.Errorf("admin: read the limits changed through the API: %w", err)
	default:
		if err := json.Unmarshal(b, &st); err != nil {
			return st, fmt.Errorf("admin: %s is not a valid limits file (fix or remove it): %w", s.path, err)
		}
		if st.Version != stateVersion {
			return st, fmt.Errorf("admin: %s has format version %d, this sluice reads %d", s.path, st.Version, stateVersion)
		}
	}
	if st.Reservations == nil {
		st.Reservations = map[string]reservationChange{}
	}
	if st.Rules == nil {
		st.Rules = map[string]ruleChange{}
	}
	if st.Meta == nil {
		st.Meta = map[string]ruleMeta{}
	}
	if err := s.j.replay(&st, b); err != nil {
		return st, err
	}
	return st, nil
}

// save makes st durable: as lines appended to the journal when that is
// cheaper (journal.go), else by writing the whole file (snapshot).
func (s *store) save(st state) error {
	if done, err := s.j.append(st); done || err != nil {
		return err
	}
	b, err := s.snapshot(st)
	if err != nil {
		return err
	}
	return s.j.reset(st, b)
}

// snapshot writes st atomically and returns the bytes written: a temporary file in
// the same directory, synced, renamed over the old one, and the directory
// synced, so that a crash leaves either the old or the new file, never a
// torn one.
func (s *store) snapshot(st state) ([]byte, error) {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("admin: encode limits: %w", err)
	}
	b = append(b, '\n')
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return nil, fmt.Errorf("admin: save limits: %w", err)
	}
	if old, err := os.ReadFile(s.path); err == nil && bytes.Equal(old, b) {
		return b, nil
	}
	f, err := os.CreateTemp(s.dir, stateFile+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("admin: save limits: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("admin: save limits to %s: %w", s.path, err)
	}
	if d, err := os.Open(s.dir); err == nil {
		_ = d.Sync() // make the rename durable; not every file system supports it
		_ = d.Close()
	}
	return b, nil
}
