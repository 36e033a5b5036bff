package raftstore

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/storage"
)

// Options configure a Store. Zero values take the documented defaults.
type Options struct {
	// NodeID is this node's ID, never 0. Required.
	NodeID uint64
	// Engine is the node's database. Required. The Store does not close it.
	Engine *storage.Engine
	// Transport sends Raft messages to other nodes. Required.
	Transport Transport
	// NewStateMachine creates the state machine of a replica. Required.
	NewStateMachine func(desc *shoalpb.ShardDescriptor) StateMachine
	// BeforeDataReset, if set, is called before the engine's data of the
	// slots [startSlot, endSlot) changes other than through
	// StateMachine.Apply (a snapshot is ingested, a removed replica's data
	// is deleted); the function it returns is called once the change is
	// done and the replica has its new state machine. kv's row cache uses
	// it to drop and stop caching those slots meanwhile. Default nil.
	BeforeDataReset func(startSlot, endSlot uint32) (done func())

	// Workers is the size of the worker pool that processes replicas.
	// Default max(2, GOMAXPROCS).
	Workers int
	// TickInterval is the Raft tick. Default 100ms.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks (Raft randomises it
	// between this and twice this, in whole ticks). Default 10: 1 to 2 s,
	// in ten steps, so that two followers rarely time out on the same tick
	// and split the vote.
	ElectionTicks int
	// HeartbeatTicks is the heartbeat interval in ticks. Default 2: a
	// heartbeat per shard and follower every 200 ms, most of what an idle
	// shard costs (docs/benchmarks.md, idle CPU).
	HeartbeatTicks int
	// MaxSizePerMsg bounds the entries in one append message. Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs bounds append messages in flight to one follower.
	// Default 256.
	MaxInflightMsgs int
	// MaxUncommittedBytes bounds the uncommitted log of one shard; proposals
	// beyond it fail with ErrOverloaded. Default 32 MiB.
	MaxUncommittedBytes uint64
	// MaxEntryBytes bounds one command. Default 16 MiB.
	MaxEntryBytes int
	// MaxQueuedProposals bounds proposals waiting to be handed to Raft, per
	// shard. Default 10000.
	MaxQueuedProposals int
	// MaxQueuedMessages bounds incoming Raft messages waiting for a replica;
	// more are dropped (Raft retransmits). Default 10000.
	MaxQueuedMessages int
	// EntryCacheBytes bounds each replica's cache of recent log entries.
	// Default 1 MiB.
	EntryCacheBytes int
	// ReadLease is how long after a quorum confirmed a leader's leadership
	// (a ReadIndex round it issued came back) the leader serves linearizable
	// reads from its own state, with no round of messages (see lease.go).
	// Default and maximum (ElectionTicks-3) × TickInterval, 700 ms: a
	// follower that acknowledged the round refuses to vote for anyone else
	// until it counts ElectionTicks ticks, which can take as little as
	// (ElectionTicks-2) ticks of wall time (a tick that fired just before
	// the heartbeat is processed after it, and a delayed ticker delivers
	// one tick early), so one tick is left for clock-rate differences.
	// Negative disables leases: every read takes a ReadIndex round.
	ReadLease time.Duration
	// DisableQuiesce keeps idle shards ticking and heartbeating (see
	// quiesce.go). Default false: a shard idle for a few ticks goes quiet.
	DisableQuiesce bool
	// ReadRetryTicks: a ReadIndex request not answered within this many
	// ticks is sent again. Default ElectionTicks/2 (at least 1), as etcd
	// asks again after 500 ms with its 1 s election timeout: a follower
	// whose request was lost while its leader is quiet ticks towards an
	// election (the quiet leader sends it no heartbeats), and asking again
	// wakes the leader before the follower's election timeout, which is at
	// least ElectionTicks, can fire. Asked after ElectionTicks, the
	// follower could campaign first and fail its reads with ErrNoLeader.
	ReadRetryTicks int
	// MaxLogEntries and MaxLogBytes bound each replica's Raft log: beyond
	// either, it is truncated (see maybeTruncateLog). Defaults 1000 entries
	// and 64 MiB. A short log costs less: with 10000 entries, 64 replicas
	// kept more log than a memtable holds, so entries went through flushes
	// and compactions before their truncation deleted them, and writes cost
	// about a quarter more CPU (docs/benchmarks.md). A follower further
	// behind than twice the bounds catches up by snapshot; the entries
	// after a snapshot being sent are kept up to twice MaxLogBytes.
	MaxLogEntries int
	MaxLogBytes   uint64
	// SnapshotBytesPerSec throttles the snapshots this node sends, all
	// together. Default 128 MiB/s; negative means unlimited.
	SnapshotBytesPerSec int64
	// MaxSnapshotSends and MaxSnapshotReceives bound the snapshots this node
	// sends (more wait) and receives (more are refused, and their senders
	// retry later) at once. Defaults 2 and 2.
	MaxSnapshotSends    int
	MaxSnapshotReceives int
	// SnapshotChunkBytes is the size of one snapshot stream message.
	// Default 1 MiB.
	SnapshotChunkBytes int
	// Space tells whether the node's disk is below its reserve. The store
	// refuses an incoming snapshot unless the disk has room for it (and
	// the others being received) above the reserve; below half the reserve it
	// also drops received appends that carry entries: a follower on a full
	// disk falls behind (its leader sends them again once it answers)
	// instead of filling the disk, which would stop the node (Pebble exits
	// when it cannot write its log). Default nil: never full.
	Space *storage.SpaceGuard
	// Logger receives the store's logs; the caller adds the node's
	// attributes. Default: discarded.
	Logger *slog.Logger
	// OnLeader, if set, is called when a replica of this store becomes its
	// shard's leader (a node uses it to tell the masters at once). It runs
	// on a worker and must not block. Default: none.
	OnLeader func(shard uint64)
	// OnFailure, if set, is called once with the error that stopped the
	// store (Err), from the goroutine that met it. Default: none.
	OnFailure func(error)
	// Knobs are test hooks; nil in production.
	Knobs *Knobs
}

// Knobs are hooks for tests. Every field is optional.
type Knobs struct {
	// AfterLogSync is called after each group commit of log writes with the
	// number of replicas whose writes it carried.
	AfterLogSync func(replicas int)
	// BeforeLogCommit is called on the loop goroutine after phase 1, just
	// before the group commit of an iteration that has log writes: the
	// moment a crash would lose this iteration's log but not what phase 1
	// applied.
	BeforeLogCommit func()
	// DisableCampaignOnBootstrap stops the first replica of a bootstrapped
	// shard from campaigning two ticks after it is created.
	DisableCampaignOnBootstrap bool
}

func (o *Options) validate() error {
	switch {
	case o.NodeID == 0:
		return errors.New("raftstore: Options.NodeID is required")
	case o.Engine == nil:
		return errors.New("raftstore: Options.Engine is required")
	case o.Transport == nil:
		return errors.New("raftstore: Options.Transport is required")
	case o.NewStateMachine == nil:
		return errors.New("raftstore: Options.NewStateMachine is required")
	}
	if o.Workers <= 0 {
		o.Workers = max(2, runtime.GOMAXPROCS(0))
	}
	if o.TickInterval <= 0 {
		o.TickInterval = 100 * time.Millisecond
	}
	if o.ElectionTicks <= 0 {
		o.ElectionTicks = 10
	}
	if o.HeartbeatTicks <= 0 {
		o.HeartbeatTicks = 2
	}
	if o.HeartbeatTicks >= o.ElectionTicks {
		return errors.New("raftstore: HeartbeatTicks must be below ElectionTicks")
	}
	if o.MaxSizePerMsg == 0 {
		o.MaxSizePerMsg = 1 << 20
	}
	if o.MaxInflightMsgs <= 0 {
		o.MaxInflightMsgs = 256
	}
	if o.MaxUncommittedBytes == 0 {
		o.MaxUncommittedBytes = 32 << 20
	}
	if o.MaxEntryBytes <= 0 {
		o.MaxEntryBytes = 16 << 20
	}
	if o.MaxQueuedProposals <= 0 {
		o.MaxQueuedProposals = 10000
	}
	if o.MaxQueuedMessages <= 0 {
		o.MaxQueuedMessages = 10000
	}
	if o.EntryCacheBytes <= 0 {
		o.EntryCacheBytes = 1 << 20
	}
	maxLease := time.Duration(o.ElectionTicks-3) * o.TickInterval
	switch {
	case o.ReadLease == 0:
		o.ReadLease = maxLease
		if o.ReadLease <= 0 {
			o.ReadLease = -1
		}
	case o.ReadLease > maxLease:
		return fmt.Errorf("raftstore: ReadLease %v is longer than the %v a follower is sure to refuse votes after a heartbeat", o.ReadLease, maxLease)
	}
	if o.ReadRetryTicks <= 0 {
		o.ReadRetryTicks = max(1, o.ElectionTicks/2)
	}
	if o.MaxLogEntries <= 0 {
		o.MaxLogEntries = 1000
	}
	if o.MaxLogBytes == 0 {
		o.MaxLogBytes = 64 << 20
	}
	if o.SnapshotBytesPerSec == 0 {
		o.SnapshotBytesPerSec = 128 << 20
	}
	if o.MaxSnapshotSends <= 0 {
		o.MaxSnapshotSends = 2
	}
	if o.MaxSnapshotReceives <= 0 {
		o.MaxSnapshotReceives = 2
	}
	if o.SnapshotChunkBytes <= 0 {
		o.SnapshotChunkBytes = 1 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Knobs == nil {
		o.Knobs = &Knobs{}
	}
	return nil
}
