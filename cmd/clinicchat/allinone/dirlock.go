package allinone

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockFile is the data dir's lock, taken before anything in it is opened.
const lockFile = "clinicchat.lock"

// lockDataDir takes an exclusive POSIX lock on dir's lock file for this
// process, so that a second process started on the same data dir stops at
// once, before its embedded NATS server opens the JetStream store the first
// one is writing (the SQLite databases refuse a second process too, but
// only after NATS has started). The lock is the process's (fcntl, like
// SQLite's): it ends with the process however it dies, and instances
// started one after another in one process (tests, a restore) take it
// again. Closing the returned file releases it.
func lockDataDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); err != nil {
		_ = f.Close()
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("data dir %s is in use by another clinicchat process (stop it first, or give this one its own --data-dir)", dir)
		}
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	return f, nil
}
