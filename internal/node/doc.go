// Package node assembles a storage node: the Pebble engine, the multi-Raft
// store, the gRPC server with the Raft transport, and the key-value layer.
//
// It owns the order of starting and stopping those parts. Start opens the
// engine, listens, builds the transport and the store, bootstraps the shards
// the configuration places here that the engine does not hold yet, and only
// then starts the store. Stop tears down in reverse: the gRPC server first
// (no new requests or Raft messages), then the transport, the key-value
// layer, the store (waiters fail with raftstore.ErrStopped), and the engine
// last, once nothing can write to it.
//
// In master mode (Config.Masters) the node registers, heartbeats, and does
// the work the masters answer with (new replicas, leader transfers); with
// Config.Shards it holds a static placement instead (tests).
//
// A node fails, rather than hangs, on an error it cannot continue past: its
// store failed, a disk operation stalled for Config.MaxDiskStall, or the
// disk failed under the storage engine's background work
// (storage.ErrDiskFailed: an I/O error, a read-only filesystem). The
// first such error is delivered once by Err; from then on the node sends no
// heartbeat (the masters count it down and repair its replicas) and
// /healthz reports it. Stop is not called for it, since with a stalled disk
// it could wait forever: the process is expected to exit.
package node
