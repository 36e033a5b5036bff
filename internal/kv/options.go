package kv

import (
	"log/slog"
	"time"

	"github.com/shoaldb/shoal/internal/storage"
)

// Limits bound what a write may store. Zero or negative values take the
// defaults.
type Limits struct {
	// MaxKeyBytes bounds a key. Default 64 KiB. The empty key is allowed,
	// as in Redis.
	MaxKeyBytes int
	// MaxValueBytes bounds a value, including one that APPEND grows.
	// Default 8 MiB.
	MaxValueBytes int
}

// Options configure a DB. Zero values take the documented defaults.
type Options struct {
	// Limits bound keys and values; see Limits for the defaults.
	Limits Limits
	// Clock is the time source for TTLs and expiry. Default time.Now. Only
	// the proposing leader's clock matters for a write: it is stamped into
	// the command.
	Clock func() time.Time
	// Logger receives the DB's logs; the caller adds the node's attributes.
	// Default: discarded.
	Logger *slog.Logger
	// SweepInterval is how often the expiry sweeper looks for expired keys
	// in the shards this node leads. Default 1s; negative disables the
	// sweeper (expired keys then stay stored, though invisible).
	SweepInterval time.Duration
	// SweepBatch is the most keys one sweep proposes to delete in one
	// command. Default 256.
	SweepBatch int
	// SessionTTL is how long a client session may stay idle before the
	// sweeper removes it; a retry after that may apply twice. Default 1h.
	SessionTTL time.Duration
	// RowCache serves reads of recently read keys from memory; it must be
	// the one the node's state machines announce their writes to
	// (StateMachineOptions.RowCache), and the node's store must bracket
	// other changes of data with its BlockSlots. Default nil: no cache.
	RowCache *RowCache
	// Space refuses writes with an error wrapping ErrDiskFull while the
	// node's disk is below its reserve; deletes are still accepted. It is
	// asked only for commands this node proposes, that is for shards it
	// leads. Default nil: writes are never refused for space.
	Space *storage.SpaceGuard
	// QuorumSpace, if set, is asked before proposing any command (deletes
	// too) to shard: an error, wrapping ErrDiskFull, refuses it. A node
	// uses it to refuse writes that cannot commit because too many of the
	// shard's voters are on nodes whose disks take no entries. Default
	// nil: not asked.
	QuorumSpace func(shard uint64) error
}

// EnsureDefaults replaces zero (and meaningless negative) values with their
// defaults.
func (o *Options) EnsureDefaults() {
	if o.Limits.MaxKeyBytes <= 0 {
		o.Limits.MaxKeyBytes = 64 << 10
	}
	if o.Limits.MaxValueBytes <= 0 {
		o.Limits.MaxValueBytes = 8 << 20
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Second
	}
	if o.SweepBatch <= 0 {
		o.SweepBatch = 256
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = time.Hour
	}
}
