// Package faultfs wraps a Pebble filesystem (vfs.FS) to make its disk
// misbehave on demand in tests: Stall holds every write and sync of files
// opened for writing, as a disk that stopped answering does, until Resume.
//
// Reads and metadata operations (create, rename, remove) pass through: a
// stalled write is what makes a database stop, and the rest is left working
// so that the test can look around while it is stalled.
package faultfs

import (
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// FS is a vfs.FS whose writes can be stalled. The zero value is not usable;
// call New.
type FS struct {
	vfs.FS

	mu      sync.Mutex
	stalled chan struct{} // non-nil while stalled; closed by Resume
	waiting int           // writes and syncs held now
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
	return fs.wrap(fs.FS.Create(name, category))
}

// OpenReadWrite implements vfs.FS.
func (fs *FS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenReadWrite(name, category, opts...))
}

// ReuseForWrite implements vfs.FS.
func (fs *FS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
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
