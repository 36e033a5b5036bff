// Package transport carries Raft messages between storage nodes over gRPC,
// and provides a fault-injecting wrapper for tests.
//
// A sender opens one bidirectional RaftStream to each node it talks to and
// sends every shard's messages for that node on it, coalescing the batches
// its store hands over into as few stream messages as possible. The response
// side of the stream carries nothing but the stream's end, so a sender learns
// at once when a receiver rejects or drops the stream. So between two nodes
// there is one stream in each direction, each owned (dialled, reconnected,
// torn down) by its sender. A sender nothing was sent to for
// Options.PeerIdleTimeout ends (retire), and the next Send starts a new
// one.
//
// Invariants:
//   - Send never blocks: it queues, or fails at once when the
//     destination's queue is full or the destination is known to be
//     unreachable; the store then reports the destination replicas
//     unreachable to Raft, which retransmits. It queues under the
//     transport's lock, with the lookup of the sender, so that a sender
//     retiring never strands a batch in its queue.
//   - A stream whose first batch names another cluster or another
//     destination node is refused, so a node that was replaced on the same
//     address never receives messages meant for its predecessor.
//   - Per destination, batches are delivered in the order they were queued
//     (one stream, one goroutine); nothing is delivered twice by the
//     transport.
package transport
