// Package faultfs wraps a Pebble filesystem (vfs.FS) to make its disk
// misbehave on demand in tests: Stall holds every write and sync of files
// opened for writing, as a disk that stopped answering does, until Resume;
// FailCreates makes the creation of some files fail with an error, as a
// disk that returns I/O errors does, until Heal.
//
// Reads and the other metadata operations (rename, remove) pass through:
// a stalled write or a failed file is what makes a database stop, and the
// rest is left working so that the test can look around meanwhile.
package faultfs

import (
	"fmt"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// FS is a vfs.FS whose writes can be stalled and whose file creations can
// fail. The zero value is not usable; call New.
type FS struct {
	vfs.FS

	mu         sync.Mutex
	stalled    chan struct{} // non-nil while stalled; closed by Resume
	waiting    int           // writes and syncs held now
	failSuffix string        // FailCreates: names ending so fail...
	failErr    error         // ...with this; nil when healthy
	failed     int           // creations failed so far
}

// FailCreates makes every later creation of a file whose name ends with
// suffix (".sst": the tables that flushes and compactions write) fail with
// err, wrapped with the operation and the name, until Heal.
func (fs *FS) FailCreates(suffix string, err error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.failSuffix, fs.failErr = suffix, err
}

// Heal ends FailCreates.
func (fs *FS) Heal() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.failSuffix, fs.failErr = "", nil
}

// Failed returns how many creations FailCreates has failed.
func (fs *FS) Failed() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.failed
}

// createErr returns the error FailCreates gives the creation of name, if
// any.
func (fs *FS) createErr(op, name string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.failErr == nil || !strings.HasSuffix(name, fs.failSuffix) {
		return nil
	}
	fs.failed++
	return fmt.Errorf("faultfs: %s %s: %w", op, name, fs.failErr)
}

// New wraps inner.
func New(inner vfs.FS) *FS {
	return &FS{FS: inner}
}

// Stall makes every later write and sync wait until Resume.
func (fs *FS) Stall() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.stalled == nil {
		fs.stalled = make(chan struct{})
	}
}

// Resume lets the held writes and syncs go on.
func (fs *FS) Resume() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.stalled != nil {
		close(fs.stalled)
		fs.stalled = nil
	}
}

// Held returns how many writes and syncs are waiting now.
func (fs *FS) Held() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.waiting
}

func (fs *FS) wait() {
	fs.mu.Lock()
	c := fs.stalled
	if c == nil {
		fs.mu.Unlock()
		return
	}
	fs.waiting++
	fs.mu.Unlock()
	<-c
	fs.mu.Lock()
	fs.waiting--
	fs.mu.Unlock()
}

// Create implements vfs.FS.
func (fs *FS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if err := fs.createErr("create", name); err != nil {
		return nil, err
	}
	return fs.wrap(fs.FS.Create(name, category))
}

// OpenReadWrite implements vfs.FS.
func (fs *FS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenReadWrite(name, category, opts...))
}

// ReuseForWrite implements vfs.FS.
func (fs *FS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if err := fs.createErr("reuse", newname); err != nil {
		return nil, err
	}
	return fs.wrap(fs.FS.ReuseForWrite(oldname, newname, category))
}

// Unwrap implements vfs.FS.
func (fs *FS) Unwrap() vfs.FS { return fs.FS }

func (fs *FS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &file{File: f, fs: fs}, nil
}

type file struct {
	vfs.File
	fs *FS
}

func (f *file) Write(p []byte) (int, error) {
	f.fs.wait()
	return f.File.Write(p)
}

func (f *file) WriteAt(p []byte, off int64) (int, error) {
	f.fs.wait()
	return f.File.WriteAt(p, off)
}

func (f *file) Sync() error {
	f.fs.wait()
	return f.File.Sync()
}

func (f *file) SyncData() error {
	f.fs.wait()
	return f.File.SyncData()
}

func (f *file) SyncTo(length int64) (bool, error) {
	f.fs.wait()
	return f.File.SyncTo(length)
}
