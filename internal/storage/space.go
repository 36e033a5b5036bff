package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrDiskFull is returned for a write refused because the filesystem under
// the engine has less free space than its reserve (SpaceGuard). Nothing of
// the write was done.
var ErrDiskFull = errors.New("disk full")

// DefaultSpaceReserve is the most free space SpaceGuard keeps by default; on
// a filesystem smaller than 20 times it, the default is 5% of the
// filesystem instead.
const DefaultSpaceReserve = 1 << 30

// SpaceOptions configure a SpaceGuard.
type SpaceOptions struct {
	// Reserve is the free space, in bytes, below which writes that grow the
	// data are refused. Default (0): DefaultSpaceReserve, or 5% of the
	// filesystem when that is less. Negative: never refuse.
	Reserve int64
	// MaxAge is how long a measurement of the free space is used before
	// the filesystem is asked again. Default 100ms.
	MaxAge time.Duration
	// Clock is the time source. Default time.Now.
	Clock func() time.Time
	// Logger is told when writes start being refused and when they are
	// accepted again. Default: discarded.
	Logger *slog.Logger
}

// SpaceGuard tells whether the filesystem holding a directory has room for
// more data: it keeps a reserve free so that a node never finds its disk
// full in the middle of a Raft log write (which stops the node), and so
// that compactions, which need room to run before they free any, can still
// reclaim the space of deleted keys. It measures the free space when it is
// made and then at most once per MaxAge; Check and Exhausted answer from
// the last measurement without waiting for the filesystem, so they are
// cheap enough for every write. It is safe for concurrent use.
//
// INVARIANT: when the free space cannot be measured (a filesystem without
// statfs, such as an in-memory one), nothing is refused.
type SpaceGuard struct {
	fs      vfs.FS
	dir     string
	reserve int64 // negative: off
	maxAge  time.Duration
	clock   func() time.Time
	log     *slog.Logger

	// The last measurement, read without the lock: when the next is due
	// (Unix ns) and what it found, verdicts included (never nil once
	// NewSpaceGuard returns).
	due  atomic.Int64
	last atomic.Pointer[SpaceStatus]
	// measuring is set while a measurement a check started runs.
	measuring atomic.Bool

	mu sync.Mutex // serialises measurements
}

// NewSpaceGuard returns a guard of the filesystem fs that holds dir,
// having measured it once.
func NewSpaceGuard(fs vfs.FS, dir string, o SpaceOptions) *SpaceGuard {
	if o.MaxAge <= 0 {
		o.MaxAge = 100 * time.Millisecond
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	g := &SpaceGuard{fs: fs, dir: dir, reserve: o.Reserve, maxAge: o.MaxAge, clock: o.Clock, log: o.Logger}
	du, err := fs.GetDiskUsage(dir)
	if g.reserve == 0 {
		g.reserve = DefaultSpaceReserve
		if err == nil && du.TotalBytes > 0 {
			g.reserve = min(g.reserve, int64(du.TotalBytes/20))
		}
	}
	g.mu.Lock()
	g.record(g.clock().UnixNano(), du, err)
	g.mu.Unlock()
	return g
}

// SpaceStatus is what a SpaceGuard last measured.
type SpaceStatus struct {
	// Reserve is the free space kept, in bytes; negative when the guard
	// is off.
	Reserve int64
	// Available and Total are the free and whole space, in bytes, as of
	// the last measurement; Known is false when it could not be measured
	// (Err says why).
	Available, Total uint64
	Known            bool
	Err              error
	// Full is set while writes are refused (free space below the
	// reserve; once set, until 110% of it is free), Exhausted while
	// replication is too (below half of it).
	Full, Exhausted bool
}

// Status measures the free space if the last measurement is older than
// MaxAge and returns the result.
func (g *SpaceGuard) Status() SpaceStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now := g.clock().UnixNano(); now >= g.due.Load() {
		du, err := g.fs.GetDiskUsage(g.dir)
		g.record(now, du, err)
	}
	return *g.last.Load() // record always ran: NewSpaceGuard measures once
}

// record takes a measurement of the filesystem taken at now. g.mu is held.
func (g *SpaceGuard) record(now int64, du vfs.DiskUsage, err error) {
	var prev SpaceStatus
	if p := g.last.Load(); p != nil {
		prev = *p
	}
	known := err == nil
	avail := du.AvailBytes
	// Once full, the disk counts as full until a tenth of the reserve
	// more is free, so that a node hovering at the reserve does not flap
	// (and the masters do not move its leaders back and forth).
	limit := uint64(g.reserve)
	if prev.Full {
		limit += limit / 10
	}
	full := g.reserve >= 0 && known && avail < limit
	switch {
	case full && !prev.Full:
		g.log.Warn("disk full: refusing writes, accepting deletes",
			"dir", g.dir, "free_mib", avail>>20, "reserve_mib", g.reserve>>20)
	case !full && prev.Full:
		g.log.Info("disk has room again: accepting writes", "dir", g.dir, "free_mib", avail>>20)
	}
	// Exhausted below half the reserve, and once so until 55% of it is
	// free, as full has its margin.
	half := uint64(g.reserve / 2)
	if prev.Exhausted {
		half += half / 10
	}
	g.last.Store(&SpaceStatus{
		Reserve: g.reserve, Available: avail, Total: du.TotalBytes, Known: known, Err: err,
		Full: full, Exhausted: full && avail < half,
	})
	g.due.Store(now + int64(g.maxAge))
}

// Cached returns the status as of the last measurement, starting a new
// one in the background if it is due, without waiting for the filesystem:
// for heartbeats and metrics, which must go on when statfs hangs on a
// failing or remote disk (the node's disk-stall watch deals with that).
func (g *SpaceGuard) Cached() SpaceStatus {
	g.refresh()
	return *g.last.Load()
}

// refresh starts a measurement in the background if one is due, so that
// a check never waits for the filesystem (statfs on a failing or remote
// disk can hang) and is answered from the last one.
func (g *SpaceGuard) refresh() {
	if g.clock().UnixNano() >= g.due.Load() && g.measuring.CompareAndSwap(false, true) {
		go func() {
			defer g.measuring.Store(false)
			g.Status()
		}()
	}
}

// CheckRoom returns an error wrapping ErrDiskFull unless the disk, as
// measured now (or within MaxAge), has room for n more bytes above the
// reserve. It is asked before receiving a replica's snapshot of n bytes,
// off the write path, so it may wait for the filesystem.
func (g *SpaceGuard) CheckRoom(n uint64) error {
	if g == nil || g.reserve < 0 {
		return nil
	}
	s := g.Status()
	if !s.Known || (!s.Full && s.Available >= uint64(s.Reserve)+n) {
		return nil
	}
	return fmt.Errorf("%w: %d MiB free, no room for %d MiB above the reserve of %d MiB",
		ErrDiskFull, s.Available>>20, n>>20, s.Reserve>>20)
}

// Check returns an error wrapping ErrDiskFull while the free space is below
// the reserve (once below, until it is a tenth of the reserve above it),
// and nil otherwise. It is asked before every write that would add data.
func (g *SpaceGuard) Check() error {
	if g == nil || g.reserve < 0 {
		return nil
	}
	g.refresh()
	st := g.last.Load()
	if !st.Full {
		return nil
	}
	return fmt.Errorf("%w: %d MiB free, below the reserve of %d MiB; only deletes are accepted until space is freed",
		ErrDiskFull, st.Available>>20, g.reserve>>20)
}

// Exhausted reports whether the free space is below half the reserve. It
// is asked before taking replicated entries: between the two thresholds a
// node still takes the entries its shards' leaders send, so that the
// deletes that free space can commit while every node is past the
// reserve; below half of it, the node stops writing before its disk
// fills.
func (g *SpaceGuard) Exhausted() bool {
	if g == nil || g.reserve < 0 {
		return false
	}
	g.refresh()
	return g.last.Load().Exhausted
}
