package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFile is the file under state_dir that one process at a time holds
// an exclusive lock on, with its PID inside.
const lockFile = "lock"

// ErrStateDirInUse is returned when another process holds state_dir.
var ErrStateDirInUse = errors.New("state_dir is in use")

// stateLock is the lock on a state_dir: while it is held, this process is
// the only one that writes limits.json or runs the embedded nats-server's
// store there. The kernel releases it when the process ends, also on
// kill -9, so a crash never leaves a stale lock behind.
type stateLock struct {
	f *os.File
}

// lockStateDir takes the lock on dir (creating dir), or fails at once with
// an error naming the PID of the process that holds it.
func lockStateDir(dir string) (*stateLock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("state_dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state_dir %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "another process"
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf("another sluice (pid %d)", pid)
			}
			return nil, fmt.Errorf("%w: %s is locked by %s; one process at a time may use a state_dir (stop it, or give this one another --state-dir)",
				ErrStateDirInUse, dir, holder)
		}
		return nil, fmt.Errorf("state_dir %s: lock %s: %w", dir, path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &stateLock{f: f}, nil
}

// release gives the lock up. It is safe on a nil lock and twice.
func (l *stateLock) release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Truncate(0)
	_ = l.f.Close() // closing the last descriptor releases the flock
	l.f = nil
}
