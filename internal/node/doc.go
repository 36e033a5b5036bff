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
// Placement is static for now (Config.Shards and Config.Peers); the master
// takes that over in a later issue.
package node
