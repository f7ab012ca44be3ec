package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// stateFile is the name of the file under state_dir that keeps the limits
// changed through the API.
const stateFile = "limits.json"

// stateVersion is the format of the file; a file of a newer format is
// refused rather than misread.
const stateVersion = 1

// FileStore is the local Store: the file limits.json in a state directory,
// with its journal of changes (journal.go).
type FileStore struct {
	dir  string
	path string
	j    journal
}

// NewFileStore returns the Store of the file limits.json in dir; the file
// and dir are made on the first Save.
func NewFileStore(dir string) *FileStore {
	return &FileStore{dir: dir, path: filepath.Join(dir, stateFile), j: journal{path: filepath.Join(dir, journalFile)}}
}

var _ Store = (*FileStore)(nil)

// Where is the file's path.
func (s *FileStore) Where() string { return s.path }

// Load reads the file; a missing file is an empty state.
func (s *FileStore) Load() (State, error) {
	st := State{Version: stateVersion}
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
		st.Reservations = map[string]ReservationChange{}
	}
	if st.Rules == nil {
		st.Rules = map[string]RuleChange{}
	}
	if st.Meta == nil {
		st.Meta = map[string]RuleMeta{}
	}
	if err := s.j.replay(&st, b); err != nil {
		return st, err
	}
	return st, nil
}

// Save makes st durable: as lines appended to the journal when that is
// cheaper (journal.go), else by writing the whole file (snapshot).
func (s *FileStore) Save(st State) error {
	if done, err := s.j.append(st); done || err != nil {
		return err
	}
	b, err := s.snapshot(st)
	if err != nil {
		return err
	}
	return s.j.reset(st, b)
}

// snapshot writes st atomically and returns the bytes written: a temporary
// file in the same directory, synced, renamed over the old one, and the
// directory synced, so that a crash leaves either the old or the new file,
// never a torn one.
func (s *FileStore) snapshot(st State) ([]byte, error) {
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
