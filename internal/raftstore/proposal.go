package raftstore

import (
	"context"
	"encoding/binary"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// Entry data of a proposed command: a version byte, the proposal ID (the
// proposing node and a per-store sequence), then the command.
const (
	entryVersion    byte = 1
	entryHeaderSize      = 1 + 16
)

// proposalID identifies a proposal across the cluster: the entry that
// carries it is matched to its waiter on the proposing node only.
type proposalID struct{ node, seq uint64 }

func encodeEntry(id proposalID, cmd []byte) []byte {
	b := make([]byte, entryHeaderSize+len(cmd))
	b[0] = entryVersion
	binary.BigEndian.PutUint64(b[1:], id.node)
	binary.BigEndian.PutUint64(b[9:], id.seq)
	copy(b[entryHeaderSize:], cmd)
	return b
}

// decodeEntry splits entry data. ok is false for data that is not a
// proposal (the empty entry a new leader appends).
func decodeEntry(data []byte) (id proposalID, cmd []byte, ok bool) {
	if len(data) < entryHeaderSize || data[0] != entryVersion {
		return proposalID{}, nil, false
	}
	id.node = binary.BigEndian.Uint64(data[1:])
	id.seq = binary.BigEndian.Uint64(data[9:])
	return id, data[entryHeaderSize:], true
}

// result is the outcome of a proposal or a read.
type result struct {
	value any
	err   error
}

// proposal is a command waiting to be proposed, committed and applied.
// Fields other than done are owned by the replica's worker.
type proposal struct {
	id   proposalID
	ctx  context.Context
	data []byte
	// cc is set instead of data for a configuration change.
	cc *raftpb.ConfChangeV2
	// index and term are set once the entry is in the leader's log.
	index, term uint64
	// held is set once the proposal has waited for a leadership transfer
	// (Replica.heldProps), so it is counted once.
	held bool
	// done receives exactly one result; it is buffered so the worker never
	// blocks on a waiter that gave up.
	done chan result
}

func (p *proposal) finish(r result) { p.done <- r }

// readRequest waits until the replica has applied at least the read index
// that a ReadIndex round returned.
type readRequest struct {
	ctx   context.Context
	index uint64
	done  chan error
}

func (r *readRequest) finish(err error) { r.done <- err }

// readBatch is one ReadIndex round serving every read that arrived before it
// was issued.
type readBatch struct {
	reads  []*readRequest
	issued int // tick count when the round was issued
	// term and issuedAt are the term and time a leader issued the round at,
	// from which its answer extends the lease (lease.go); term is 0 when
	// issued by a follower or with leases off.
	term     uint64
	issuedAt time.Time
}
