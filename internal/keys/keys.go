package keys

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Family prefixes: the first byte of every stored key.
const (
	DataPrefix     byte = 'd'
	ExpiryPrefix   byte = 'x'
	RaftPrefix     byte = 'r'
	ReplicaPrefix  byte = 'm'
	IdentityPrefix byte = 's'
)

// Suffix bytes of the per-shard Raft records under RaftPrefix.
const (
	raftLogSuffix       byte = 'l'
	raftHardStateSuffix byte = 'h'
	raftAppliedSuffix   byte = 'a'
	raftTruncatedSuffix byte = 't'
	raftSessionSuffix   byte = 'c'
)

// ErrMalformed is returned when a stored key does not decode as the family it
// claims to be.
var ErrMalformed = errors.New("keys: malformed key")

// Span is a half-open key range [Start, End).
type Span struct {
	Start, End []byte
}

// Contains reports whether k is in [s.Start, s.End).
func (s Span) Contains(k []byte) bool {
	return string(k) >= string(s.Start) && string(k) < string(s.End)
}

// DataKey returns the key of user key k, which lives in slot.
func DataKey(slot uint16, k []byte) []byte {
	b := make([]byte, 3+len(k))
	b[0] = DataPrefix
	binary.BigEndian.PutUint16(b[1:], slot)
	copy(b[3:], k)
	return b
}

// AppendDataKey appends the data key of k in slot to dst and returns it.
func AppendDataKey(dst []byte, slot uint16, k []byte) []byte {
	dst = append(dst, DataPrefix, byte(slot>>8), byte(slot))
	return append(dst, k...)
}

// DecodeDataKey splits a data key into its slot and user key. The user key
// aliases b. A slot outside [0, SlotCount) is malformed.
func DecodeDataKey(b []byte) (slot uint16, k []byte, err error) {
	if len(b) < 3 || b[0] != DataPrefix || binary.BigEndian.Uint16(b[1:]) >= SlotCount {
		return 0, nil, fmt.Errorf("%w: %q is not a data key", ErrMalformed, b)
	}
	return binary.BigEndian.Uint16(b[1:]), b[3:], nil
}

// DataSpan returns the range of data keys of the slots in [start, end).
func DataSpan(start, end uint32) Span {
	return slotSpan(DataPrefix, start, end)
}

// ExpiryKey returns the expiry-index key of user key k in slot, expiring at
// expireAtMs (Unix milliseconds).
func ExpiryKey(slot uint16, expireAtMs uint64, k []byte) []byte {
	b := make([]byte, 11+len(k))
	b[0] = ExpiryPrefix
	binary.BigEndian.PutUint16(b[1:], slot)
	binary.BigEndian.PutUint64(b[3:], expireAtMs)
	copy(b[11:], k)
	return b
}

// DecodeExpiryKey splits an expiry-index key. The user key aliases b. A
// slot outside [0, SlotCount) is malformed.
func DecodeExpiryKey(b []byte) (slot uint16, expireAtMs uint64, k []byte, err error) {
	if len(b) < 11 || b[0] != ExpiryPrefix || binary.BigEndian.Uint16(b[1:]) >= SlotCount {
		return 0, 0, nil, fmt.Errorf("%w: %q is not an expiry key", ErrMalformed, b)
	}
	return binary.BigEndian.Uint16(b[1:]), binary.BigEndian.Uint64(b[3:]), b[11:], nil
}

// ExpirySpan returns the range of expiry-index keys of the slots in [start, end).
func ExpirySpan(start, end uint32) Span {
	return slotSpan(ExpiryPrefix, start, end)
}

func slotSpan(prefix byte, start, end uint32) Span {
	s := []byte{prefix, byte(start >> 8), byte(start)}
	if end >= SlotCount {
		return Span{Start: s, End: []byte{prefix + 1}}
	}
	return Span{Start: s, End: []byte{prefix, byte(end >> 8), byte(end)}}
}

func raftKey(shard uint64, suffix byte, extra int) []byte {
	b := make([]byte, 6, 6+extra)
	b[0] = RaftPrefix
	binary.BigEndian.PutUint32(b[1:], uint32(shard))
	b[5] = suffix
	return b
}

// RaftLogKey returns the key of the Raft log entry at index of shard.
func RaftLogKey(shard, index uint64) []byte {
	return binary.BigEndian.AppendUint64(raftKey(shard, raftLogSuffix, 8), index)
}

// DecodeRaftLogKey returns the shard and index of a Raft log key.
func DecodeRaftLogKey(b []byte) (shard, index uint64, err error) {
	if len(b) != 14 || b[0] != RaftPrefix || b[5] != raftLogSuffix {
		return 0, 0, fmt.Errorf("%w: %q is not a raft log key", ErrMalformed, b)
	}
	return uint64(binary.BigEndian.Uint32(b[1:])), binary.BigEndian.Uint64(b[6:]), nil
}

// RaftLogSpan returns the range of Raft log keys of shard with indexes in
// [lo, hi).
func RaftLogSpan(shard, lo, hi uint64) Span {
	return Span{Start: RaftLogKey(shard, lo), End: RaftLogKey(shard, hi)}
}

// HardStateKey returns the key of shard's Raft HardState.
func HardStateKey(shard uint64) []byte { return raftKey(shard, raftHardStateSuffix, 0) }

// AppliedStateKey returns the key of shard's applied state.
func AppliedStateKey(shard uint64) []byte { return raftKey(shard, raftAppliedSuffix, 0) }

// TruncatedStateKey returns the key of shard's truncated-log state.
func TruncatedStateKey(shard uint64) []byte { return raftKey(shard, raftTruncatedSuffix, 0) }

// SessionKey returns the key of a client session's record in shard.
func SessionKey(shard, session uint64) []byte {
	return binary.BigEndian.AppendUint64(raftKey(shard, raftSessionSuffix, 8), session)
}

// DecodeSessionKey returns the shard and session ID of a session key.
func DecodeSessionKey(b []byte) (shard, session uint64, err error) {
	if len(b) != 14 || b[0] != RaftPrefix || b[5] != raftSessionSuffix {
		return 0, 0, fmt.Errorf("%w: %q is not a session key", ErrMalformed, b)
	}
	return uint64(binary.BigEndian.Uint32(b[1:])), binary.BigEndian.Uint64(b[6:]), nil
}

// SessionSpan returns the range of every session record of shard.
func SessionSpan(shard uint64) Span {
	return Span{Start: raftKey(shard, raftSessionSuffix, 0), End: raftKey(shard, raftSessionSuffix+1, 0)}
}

// ShardRaftSpan returns the range of every Raft record of shard: log,
// HardState, applied and truncated state, sessions.
func ShardRaftSpan(shard uint64) Span {
	s := []byte{RaftPrefix, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(s[1:], uint32(shard))
	e := binary.BigEndian.AppendUint32([]byte{RaftPrefix}, uint32(shard)+1)
	if uint32(shard) == ^uint32(0) {
		e = []byte{RaftPrefix + 1}
	}
	return Span{Start: s, End: e}
}

// ReplicaStateKey returns the key of the local replica state of shard.
func ReplicaStateKey(shard uint64) []byte {
	return binary.BigEndian.AppendUint32([]byte{ReplicaPrefix}, uint32(shard))
}

// DecodeReplicaStateKey returns the shard of a replica-state key.
func DecodeReplicaStateKey(b []byte) (uint64, error) {
	if len(b) != 5 || b[0] != ReplicaPrefix {
		return 0, fmt.Errorf("%w: %q is not a replica state key", ErrMalformed, b)
	}
	return uint64(binary.BigEndian.Uint32(b[1:])), nil
}

// ReplicaStateSpan returns the range of every local replica state.
func ReplicaStateSpan() Span {
	return Span{Start: []byte{ReplicaPrefix}, End: []byte{ReplicaPrefix + 1}}
}

// IdentityKey returns the key of a node identity record, such as "cluster"
// or "node".
func IdentityKey(name string) []byte {
	return append([]byte{IdentityPrefix}, name...)
}

// MaxShardID is the largest shard ID the key encodings can hold.
const MaxShardID = uint64(^uint32(0))
