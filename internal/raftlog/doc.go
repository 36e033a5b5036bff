// Package raftlog implements raft.Storage for one replica on the node's
// Pebble engine: the log entries, HardState, truncated state and applied
// state of a shard, under the keys of internal/keys.
//
// A Storage keeps a small in-memory picture of its replica's log (first and
// last index, last term, HardState, ConfState) plus a bounded cache of recent
// entries, so that the Raft hot path rarely reads Pebble.
//
// Writes are staged into a caller's batch (Append, SetHardState, SetApplied,
// Truncate) and update the in-memory picture at once; the caller commits the
// batch before it acts on them (raftstore syncs log writes before sending the
// messages that acknowledge them). A failed commit leaves the picture ahead of
// the disk, so the caller must treat it as fatal and reload.
//
// Invariants:
//   - Log indexes are contiguous in [FirstIndex, LastIndex].
//   - The applied index stored with AppliedState never exceeds the durable
//     last index: entries are applied only after they were synced, and the
//     applied state is committed after them in the same WAL.
//   - InitialState never reports a commit index below the applied index (a
//     crash can persist an applied state written after the HardState that
//     recorded its commit).
package raftlog
