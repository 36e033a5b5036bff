package raftstore

import (
	"errors"
	"fmt"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Sentinel errors of the store. Typed errors below wrap them, so callers test
// with errors.Is and extract details with errors.As.
var (
	// ErrNotLeader: this replica is not the shard's leader. The command was
	// not applied; retry at the leader (NotLeaderError carries a hint).
	ErrNotLeader = errors.New("raftstore: not leader")
	// ErrNoLeader: the shard has no known leader (an election is under way).
	// Nothing was applied; retry after a short backoff.
	ErrNoLeader = errors.New("raftstore: no leader")
	// ErrShardNotFound: this node has no replica of the shard.
	ErrShardNotFound = errors.New("raftstore: shard not found on this node")
	// ErrShardRemoved: the replica was removed while the request waited. A
	// write that was already proposed also matches ErrAmbiguous.
	ErrShardRemoved = errors.New("raftstore: replica removed")
	// ErrOverloaded: too many proposals are in flight for the shard or the
	// node; nothing was applied. Retry later.
	ErrOverloaded = errors.New("raftstore: overloaded")
	// ErrLeadershipLost: the leader that accepted the proposal lost its
	// leadership before the entry committed, and the entry was replaced in the
	// log. It was definitely not applied; it is safe to retry.
	ErrLeadershipLost = errors.New("raftstore: leadership lost, proposal dropped")
	// ErrTimeout: the caller's context ended before the outcome was known. A
	// write that had been handed to Raft also matches ErrAmbiguous; one
	// that had not was not applied and never will be (proposal.wait).
	ErrTimeout = errors.New("raftstore: timed out")
	// ErrStopped: the store is stopping or stopped. Alone it means the request
	// was refused; a write that was already proposed also matches
	// ErrAmbiguous.
	ErrStopped = errors.New("raftstore: store stopped")
	// ErrAmbiguous: the write was proposed but its outcome is unknown: it may
	// or may not have been applied. Retrying it is safe only with a client
	// session (which makes the retry apply at most once).
	ErrAmbiguous = errors.New("raftstore: outcome unknown")
	// ErrEntryTooLarge: the command is larger than the store accepts in one
	// Raft entry. Nothing was applied.
	ErrEntryTooLarge = errors.New("raftstore: command too large")
)

// NotLeaderError is returned instead of a bare ErrNotLeader when the store
// knows who leads.
type NotLeaderError struct {
	Shard uint64
	// LeaderReplica and LeaderNode are 0 when unknown.
	LeaderReplica uint64
	LeaderNode    uint64
}

func (e *NotLeaderError) Error() string {
	if e.LeaderNode == 0 {
		return fmt.Sprintf("raftstore: shard %d: not leader, leader unknown", e.Shard)
	}
	return fmt.Sprintf("raftstore: shard %d: not leader, leader is replica %d on node %d",
		e.Shard, e.LeaderReplica, e.LeaderNode)
}

// Is makes errors.Is(err, ErrNotLeader) hold.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// timeoutError wraps a context error as ErrTimeout while keeping the cause.
func timeoutError(cause error) error {
	return fmt.Errorf("%w: %w", ErrTimeout, cause)
}

// ambiguous marks err as leaving a proposed write's outcome unknown.
func ambiguous(err error) error {
	return fmt.Errorf("%w (%w)", err, ErrAmbiguous)
}

// More sentinel errors, for membership changes.
var (
	// ErrEpochMismatch: the shard's descriptor changed since the caller read
	// it; EpochMismatchError carries the current one. Nothing was changed.
	ErrEpochMismatch = errors.New("raftstore: epoch mismatch")
	// ErrConfChangeInProgress: another membership change has not finished
	// (the shard is in a joint configuration, or Raft has one pending).
	// Nothing was changed; retry later.
	ErrConfChangeInProgress = errors.New("raftstore: membership change in progress")
	// ErrInvalidChange: the requested membership change does not apply to
	// the shard's current configuration.
	ErrInvalidChange = errors.New("raftstore: invalid membership change")
	// ErrTransferFailed: leadership did not move to the requested replica.
	ErrTransferFailed = errors.New("raftstore: leadership transfer failed")
	// ErrNotCaughtUp: a learner to promote has not received the log yet.
	// Nothing was changed; retry once it has.
	ErrNotCaughtUp = errors.New("raftstore: learner not caught up")
)

// EpochMismatchError is returned when a request names an older (or newer)
// descriptor than the shard has.
type EpochMismatchError struct {
	Current *shoalpb.ShardDescriptor
}

func (e *EpochMismatchError) Error() string {
	return fmt.Sprintf("raftstore: shard %d is at epoch %d", e.Current.GetShardId(), e.Current.GetEpoch())
}

// Is makes errors.Is(err, ErrEpochMismatch) hold.
func (e *EpochMismatchError) Is(target error) bool { return target == ErrEpochMismatch }
