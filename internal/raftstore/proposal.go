package raftstore

import (
	"context"
	"encoding/binary"
	"sync/atomic"
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

// transferRequest asks a leader to hand its leadership to replica to, or
// (cancel) withdraws request id if it has not reached Raft yet.
type transferRequest struct {
	id, to uint64
	cancel bool
}

// result is the outcome of a proposal or a read.
type result struct {
	value any
	err   error
}

// Stages of a proposal, as its waiter and the worker agree on them
// (proposal.stage): the worker hands a proposal to Raft only by moving it
// from proposalWaiting to proposalSubmitted, and a waiter whose context
// ends gives it up only by moving it from proposalWaiting to
// proposalAbandoned. Exactly one of the two wins, so a waiter that gives
// up first knows the command is never applied.
const (
	proposalWaiting uint32 = iota
	proposalSubmitted
	proposalAbandoned
)

// proposal is a command waiting to be proposed, committed and applied.
// Fields other than done and stage are owned by the replica's worker.
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
	// stage is proposalWaiting until the worker hands the proposal to Raft
	// or its waiter gives it up (the constants above).
	stage atomic.Uint32
	// done receives exactly one result; it is buffered so the worker never
	// blocks on a waiter that gave up.
	done chan result
}

func (p *proposal) finish(r result) { p.done <- r }

// submit claims p for Raft; false means its waiter gave it up, and it must
// not be proposed.
func (p *proposal) submit() bool {
	return p.stage.CompareAndSwap(proposalWaiting, proposalSubmitted)
}

// unsubmit undoes submit when Raft refused the proposal (it holds no entry
// of it). A waiter that gave up in between was told the outcome is
// unknown, which stays true of a proposal that may still be proposed.
func (p *proposal) unsubmit() { p.stage.Store(proposalWaiting) }

// wait returns p's result. When ctx ends first, the error is a plain
// ErrTimeout if p had not reached Raft (it then never will: nothing was
// applied, and a retry is safe), and also ErrAmbiguous if it had.
func (p *proposal) wait(ctx context.Context) result {
	select {
	case res := <-p.done:
		return res
	case <-ctx.Done():
	}
	select {
	case res := <-p.done: // the worker answered meanwhile
		return res
	default:
	}
	if p.stage.CompareAndSwap(proposalWaiting, proposalAbandoned) {
		return result{err: timeoutError(ctx.Err())}
	}
	return result{err: ambiguous(timeoutError(ctx.Err()))}
}

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

// entry returns p's log entry: its command, or its configuration change.
func (p *proposal) entry() (*raftpb.Entry, error) {
	if p.cc == nil {
		return &raftpb.Entry{Data: p.data}, nil
	}
	typ, data, err := raftpb.MarshalConfChange(p.cc)
	if err != nil {
		return nil, err
	}
	return &raftpb.Entry{Type: typ.Enum(), Data: data}, nil
}
