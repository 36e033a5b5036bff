package storage

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/internal/keys"
)

// ErrClosed is returned by operations on a closed Engine.
var ErrClosed = errors.New("storage: engine closed")

// Options configure an Engine. The zero value of every field is replaced by
// its documented default.
type Options struct {
	// Dir is the database directory. Required.
	Dir string
	// FS is the filesystem. Default vfs.Default; tests pass vfs.NewMem() or
	// vfs.NewCrashableMem().
	FS vfs.FS
	// CacheBytes is the block cache size. Default 128 MiB.
	CacheBytes int64
	// MemTableBytes is the size of one memtable. Default 32 MiB: Pebble
	// holds up to two (one taking writes, one being flushed), and in a
	// static (CGO_ENABLED=0) build they live on the Go heap, whose garbage
	// collector lets garbage grow to the size of what is live, so a node
	// needs about four times this.
	MemTableBytes uint64
	// MinSyncInterval is the least time between two syncs of the write-ahead
	// log: a sync asked for sooner waits until it has passed, and every
	// commit that arrives meanwhile is made durable by the same sync. A
	// commit with sync still returns only once it is on disk. Default
	// 300µs; negative turns it off (sync at once). A sync costs tens of
	// microseconds of CPU (BenchmarkSyncCPU), so under load fewer, fuller
	// syncs leave more CPU for writes: on the 2-core machine of
	// docs/benchmarks.md, 64 Redis clients wrote about a fifth more. One
	// writer alone rarely waits, since its syncs come further apart than
	// this.
	MinSyncInterval time.Duration
	// MaxStall is how long a disk operation of the engine (a write, a
	// sync, creating, renaming or removing a file) may go without
	// returning before the engine reports ErrDiskStalled to OnFailure.
	// Default 20s, as CockroachDB's storage.max_sync_duration; negative
	// turns it off, leaving only the logs of slow operations. Operations
	// in flight are looked at every 2 seconds, so a stall is reported 1 to
	// 3 seconds after the limit (with the default, 21-23 s after it
	// began); a stop of the whole process (SIGSTOP) does not count, see
	// stallDetector.
	MaxStall time.Duration
	// OnFailure is called once, on a background goroutine, with the first
	// failure of the disk: a disk operation stalled for MaxStall (the error
	// wraps ErrDiskStalled), or an I/O error, a read-only filesystem or
	// corrupt data met by Pebble's background work (ErrDiskFailed). The
	// engine cannot be trusted to make progress after either; the stalled
	// operation may never return, so the callee should not wait for the
	// engine (Close waits for it). Default: only logged.
	//
	// A write-ahead log that cannot be written or synced is not reported
	// here: Pebble cannot go on past it and the process exits at once
	// (pebbleLogger.Fatalf), as Pebble requires.
	OnFailure func(error)
	// Logger receives Pebble's logs and events. Default: discarded.
	Logger *slog.Logger
}

func (o *Options) ensureDefaults() {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = 128 << 20
	}
	if o.MemTableBytes == 0 {
		o.MemTableBytes = 32 << 20
	}
	if o.MinSyncInterval == 0 {
		o.MinSyncInterval = 300 * time.Microsecond
	}
	if o.MaxStall == 0 {
		o.MaxStall = DefaultMaxStall
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// DefaultMaxStall is Options.MaxStall's default.
const DefaultMaxStall = 20 * time.Second

// Engine is a node's Pebble database.
type Engine struct {
	db *pebble.DB
	po *pebble.Options
	fs vfs.FS
	// healthFS stops the goroutine of Pebble's disk health checks.
	healthFS io.Closer
	dir      string
	log      *slog.Logger
	closed   atomic.Bool

	onFailure func(error)
	failOnce  sync.Once

	syncs   atomic.Uint64
	commits atomic.Uint64
	records atomic.Uint64
}

// Stats are cumulative counters of an Engine.
type Stats struct {
	// Commits counts committed batches; Syncs counts those committed with
	// sync; Records counts the writes (sets, deletes, range deletions) the
	// committed batches carried, each one memtable insert.
	Commits, Syncs, Records uint64
}

// Open opens (creating if needed) the database in opts.Dir.
func Open(opts Options) (*Engine, error) {
	opts.ensureDefaults()
	if opts.Dir == "" {
		return nil, errors.New("storage: Options.Dir is required")
	}
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref()
	e := &Engine{dir: opts.Dir, log: opts.Logger.With("component", "pebble"), onFailure: opts.OnFailure}
	// Every write-side operation on the filesystem is timed: Pebble's
	// health checks report those in flight for longer than the threshold.
	stalls := newStallDetector(opts.MaxStall, e.log, e.reportFailure)
	e.fs, e.healthFS = vfs.WithDiskHealthChecks(opts.FS, stalls.slow, nil, stalls.report)
	po := &pebble.Options{
		FS:                 e.fs,
		Cache:              cache,
		MemTableSize:       opts.MemTableBytes,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             pebbleLogger{e.log},
		EventListener:      e.eventListener(),
	}
	if d := opts.MinSyncInterval; d > 0 {
		po.WALMinSyncInterval = func() time.Duration { return d }
	}
	// Filled in here so that SST writers get the same options as the DB.
	po.EnsureDefaults()
	db, err := pebble.Open(opts.Dir, po)
	if err != nil {
		e.healthFS.Close()
		return nil, fmt.Errorf("storage: open %s: %w", opts.Dir, err)
	}
	e.db, e.po = db, po
	return e, nil
}

// Close closes the database. Unsynced writes may be lost only by a crash, not
// by Close.
func (e *Engine) Close() error {
	if e.closed.Swap(true) {
		return nil
	}
	err := e.db.Close()
	e.healthFS.Close()
	return err
}

// Dir returns the database directory.
func (e *Engine) Dir() string { return e.dir }

// FS returns the filesystem the database lives on, with its write-side
// operations timed by the stall detection (Options.MaxStall).
func (e *Engine) FS() vfs.FS { return e.fs }

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	return Stats{Commits: e.commits.Load(), Syncs: e.syncs.Load(), Records: e.records.Load()}
}

// Metrics returns Pebble's own metrics.
func (e *Engine) Metrics() *pebble.Metrics { return e.db.Metrics() }

// Reader is what reads need: the Engine, a Batch (indexed) or a Snapshot.
type Reader = pebble.Reader

// Reader returns the engine itself as a Reader.
func (e *Engine) Reader() Reader { return e.db }

// Get returns a copy of the value of key, and whether it exists.
func (e *Engine) Get(key []byte) ([]byte, bool, error) { return Get(e.db, key) }

// Get returns a copy of the value of key in r, and whether it exists.
func Get(r Reader, key []byte) ([]byte, bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("storage: get: %w", err)
	}
	out := make([]byte, len(v))
	copy(out, v)
	closer.Close()
	return out, true, nil
}

// View calls f with the value of key in r, if it exists, without copying
// it: f must not keep the slice.
func View(r Reader, key []byte, f func(v []byte) error) error {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: get: %w", err)
	}
	defer closer.Close()
	return f(v)
}

// GetProto reads key from r into m and reports whether it exists.
func GetProto(r Reader, key []byte, m proto.Message) (bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("storage: get: %w", err)
	}
	defer closer.Close()
	if err := proto.Unmarshal(v, m); err != nil {
		return false, fmt.Errorf("storage: decode %q: %w", key, err)
	}
	return true, nil
}

// Iterator walks a key range; see pebble.Iterator.
type Iterator = pebble.Iterator

// NewIter returns an iterator over span of r. The caller must close it.
func NewIter(r Reader, span keys.Span) (*pebble.Iterator, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: span.Start, UpperBound: span.End})
	if err != nil {
		return nil, fmt.Errorf("storage: iterator: %w", err)
	}
	return it, nil
}

// NewIter returns an iterator over span of the engine.
func (e *Engine) NewIter(span keys.Span) (*pebble.Iterator, error) { return NewIter(e.db, span) }

// Snapshot is a consistent read-only view of the engine.
type Snapshot = pebble.Snapshot

// NewSnapshot returns a point-in-time view; the caller must close it.
func (e *Engine) NewSnapshot() *Snapshot { return e.db.NewSnapshot() }

// Batch is a set of writes committed atomically.
type Batch struct {
	*pebble.Batch
	eng *Engine
}

// NewBatch returns a write-only batch.
func (e *Engine) NewBatch() *Batch { return &Batch{Batch: e.db.NewBatch(), eng: e} }

// NewIndexedBatch returns a batch that can also be read through, seeing its
// own writes on top of the engine.
func (e *Engine) NewIndexedBatch() *Batch { return &Batch{Batch: e.db.NewIndexedBatch(), eng: e} }

// Commit commits the batch; with sync it returns only once the batch and
// every earlier one is durable. The batch may not be used afterwards except
// for Close.
func (b *Batch) Commit(sync bool) error {
	if b.eng.closed.Load() {
		return ErrClosed
	}
	opts := pebble.NoSync
	if sync {
		opts = pebble.Sync
	}
	n := b.Count()
	if err := b.Batch.Commit(opts); err != nil {
		return fmt.Errorf("storage: commit: %w", err)
	}
	b.eng.commits.Add(1)
	b.eng.records.Add(uint64(n))
	if sync {
		b.eng.syncs.Add(1)
	}
	return nil
}

// SetProto marshals m and sets it at key.
func (b *Batch) SetProto(key []byte, m proto.Message) error {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("storage: encode: %w", err)
	}
	return b.Set(key, v, nil)
}

// DeleteSpan deletes every key in span.
func (b *Batch) DeleteSpan(span keys.Span) error {
	return b.DeleteRange(span.Start, span.End, nil)
}

// Close releases the batch.
func (b *Batch) Close() error { return b.Batch.Close() }

// Write commits one key-value pair with sync; a convenience for rare writes
// such as node identity.
func (e *Engine) Write(key, value []byte) error {
	b := e.NewBatch()
	defer b.Close()
	if err := b.Set(key, value, nil); err != nil {
		return err
	}
	return b.Commit(true)
}

var _ io.Closer = (*Engine)(nil)
