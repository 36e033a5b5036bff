package raftstore

import (
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// QueuedRequests returns how many proposals and reads wait in the queues of
// this node's replica of shard: tests use it to order events without
// sleeping.
func QueuedRequests(s *Store, shard uint64) int {
	r, err := s.replica(shard)
	if err != nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.mu.props) + len(r.mu.reads)
}

// LeaseState reports whether this node's replica of shard holds a read
// lease now and whether it still ignores votes after its start (lease.go).
func LeaseState(s *Store, shard uint64) (held, voteGuard bool) {
	r, err := s.replica(shard)
	if err != nil {
		return false, false
	}
	return r.lease.Load() != nil, time.Now().Before(r.voteGuardUntil)
}

// VoteGuardSet reports whether this node's replica of shard started with a
// vote guard at all (lease.go), whether or not it has run out.
func VoteGuardSet(s *Store, shard uint64) bool {
	r, err := s.replica(shard)
	return err == nil && !r.voteGuardUntil.IsZero()
}

// CountSent counts msgs as sent, as the store does when the transport takes
// them.
func CountSent(s *Store, msgs []*shoalpb.RaftMessage) { s.countSent(msgs) }

// SnapshotRetryDelay is snapshotRetryDelay.
const SnapshotRetryDelay = snapshotRetryDelay
