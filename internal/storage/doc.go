// Package storage owns a node's one Pebble database: opening it with sane
// options, batches, reads, iterators and snapshots, and turning Pebble's
// events into structured logs.
//
// Everything a node stores lives in this one database (user data and the Raft
// state of every replica), with keys encoded by internal/keys. That is what
// makes group commit possible: the log writes of many shards go into one
// batch and are made durable by one sync.
//
// Invariants:
//   - A batch committed with sync=true is durable when Commit returns, and so
//     is every batch committed before it (Pebble's WAL is written in commit
//     order). Callers rely on this to keep derived state (the applied index)
//     from ever getting ahead of the log it was derived from.
//   - Engine counts every synced commit (Stats().Syncs), which is how group
//     commit is measured.
//   - A failed commit is not retried here: the caller must treat it as fatal
//     for the data it carried.
//   - Every write-side filesystem operation is timed (Pebble's disk health
//     checks); one that hangs for Options.MaxStall is reported to
//     Options.OnFailure as ErrDiskStalled, and never for a process that was
//     stopped rather than a disk that stalled (stallDetector).
//   - An I/O error, a read-only filesystem or corrupt data met by Pebble's
//     background work is reported to Options.OnFailure as ErrDiskFailed.
//     OnFailure hears of the first failure only, once.
package storage
