package raftlog

import (
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// InitialIndex is the log index (and term) a bootstrapped replica starts at.
// Starting above zero lets a replica created empty (to receive a snapshot)
// be told apart from one bootstrapped with a configuration.
const InitialIndex = 5

// ErrNotBootstrapped is returned by Load for a shard that has no Raft state.
var ErrNotBootstrapped = errors.New("raftlog: replica has no raft state")

// DefaultCacheBytes is the default bound of a Storage's entry cache.
const DefaultCacheBytes = 1 << 20

// Storage is the raft.Storage of one replica. Its raft.Storage methods are
// called by the replica's Raft goroutine; the write methods by the same
// goroutine; Snapshot of state by anyone (they lock).
type Storage struct {
	eng   *storage.Engine
	shard uint64

	mu struct {
		sync.Mutex
		hardState *raftpb.HardState
		applied   *shoalpb.AppliedState
		// appliedEnc encodes the applied state (SetApplied).
		appliedEnc appliedEncoder
		truncated  *shoalpb.TruncatedState
		lastIndex  uint64
		lastTerm   uint64
		// logBytes approximates the encoded size of the entries in
		// [first, last]: exact sums on append, proportional estimates when
		// entries are overwritten or truncated.
		logBytes uint64
		cache    entryCache
	}
	// snapshot produces raft snapshots for this replica; see SetSnapshotter.
	snapshot func() (*raftpb.Snapshot, error)
}

var _ raft.Storage = (*Storage)(nil)

// Bootstrap stages in b the initial Raft state of a new replica of shard
// whose group starts with configuration cs: an empty log truncated at
// InitialIndex, and matching HardState and applied state.
func Bootstrap(b *storage.Batch, shard uint64, cs *raftpb.ConfState) error {
	ts := &shoalpb.TruncatedState{Index: InitialIndex, Term: InitialIndex}
	hs := &raftpb.HardState{Term: new(uint64(InitialIndex)), Commit: new(uint64(InitialIndex))}
	as := &shoalpb.AppliedState{Index: InitialIndex, Term: InitialIndex, ConfState: cs}
	if err := b.SetProto(keys.TruncatedStateKey(shard), ts); err != nil {
		return err
	}
	if err := b.SetProto(keys.HardStateKey(shard), hs); err != nil {
		return err
	}
	return b.SetProto(keys.AppliedStateKey(shard), as)
}

// Load reads the Raft state of shard from eng.
func Load(eng *storage.Engine, shard uint64, cacheBytes int) (*Storage, error) {
	if cacheBytes <= 0 {
		cacheBytes = DefaultCacheBytes
	}
	s := &Storage{eng: eng, shard: shard}
	s.mu.cache.maxBytes = cacheBytes
	r := eng.Reader()
	s.mu.truncated = &shoalpb.TruncatedState{}
	ok, err := storage.GetProto(r, keys.TruncatedStateKey(shard), s.mu.truncated)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: shard %d", ErrNotBootstrapped, shard)
	}
	s.mu.hardState = &raftpb.HardState{}
	if _, err := storage.GetProto(r, keys.HardStateKey(shard), s.mu.hardState); err != nil {
		return nil, err
	}
	s.mu.applied = &shoalpb.AppliedState{}
	if _, err := storage.GetProto(r, keys.AppliedStateKey(shard), s.mu.applied); err != nil {
		return nil, err
	}
	// The last index is the last log key, or the truncation point if the log
	// is empty. The log is bounded by truncation, so reading it through to
	// size it is cheap.
	s.mu.lastIndex, s.mu.lastTerm = s.mu.truncated.Index, s.mu.truncated.Term
	it, err := eng.NewIter(keys.RaftLogSpan(shard, 0, ^uint64(0)))
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var last []byte
	for ok := it.First(); ok; ok = it.Next() {
		s.mu.logBytes += uint64(len(it.Value()))
		last = append(last[:0], it.Key()...)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("raftlog: shard %d: %w", shard, err)
	}
	if last != nil && it.Last() {
		_, idx, err := keys.DecodeRaftLogKey(it.Key())
		if err != nil {
			return nil, err
		}
		var e raftpb.Entry
		if err := proto.Unmarshal(it.Value(), &e); err != nil {
			return nil, fmt.Errorf("raftlog: shard %d: decode entry %d: %w", shard, idx, err)
		}
		s.mu.lastIndex, s.mu.lastTerm = idx, e.GetTerm()
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("raftlog: shard %d: %w", shard, err)
	}
	if s.mu.applied.Index > s.mu.lastIndex {
		return nil, fmt.Errorf("raftlog: shard %d: applied index %d ahead of last index %d: the log lost synced entries",
			shard, s.mu.applied.Index, s.mu.lastIndex)
	}
	// The applied state must name an entry of the log. If the log holds a
	// different entry there, an apply batch reached the disk without the log
	// batch that wrote the entries it applied, and the state machine has
	// diverged from the log.
	if a := s.mu.applied; a.Index >= s.mu.truncated.Index {
		term, err := s.Term(a.Index)
		if err != nil {
			return nil, err
		}
		if term != a.Term {
			return nil, fmt.Errorf("raftlog: shard %d: applied state %d/%d but the log has term %d at %d: the log lost synced entries",
				shard, a.Index, a.Term, term, a.Index)
		}
	}
	return s, nil
}

// NewEmpty returns the Storage of a replica that has no state yet: one
// created to receive its first snapshot. Its log is empty at index 0, and
// it has no configuration, so it cannot campaign.
func NewEmpty(eng *storage.Engine, shard uint64, cacheBytes int) (*Storage, error) {
	if cacheBytes <= 0 {
		cacheBytes = DefaultCacheBytes
	}
	s := &Storage{eng: eng, shard: shard}
	s.mu.cache.maxBytes = cacheBytes
	s.mu.truncated = &shoalpb.TruncatedState{}
	s.mu.applied = &shoalpb.AppliedState{}
	// A HardState left by an earlier empty incarnation of this replica
	// holds a vote it may have cast: keep it.
	s.mu.hardState = &raftpb.HardState{}
	if _, err := storage.GetProto(eng.Reader(), keys.HardStateKey(shard), s.mu.hardState); err != nil {
		return nil, err
	}
	s.mu.hardState.Commit = nil
	return s, nil
}

// SetSnapshotter sets the function that Snapshot calls. Snapshots carry the
// state machine, which this package does not know, so the replica store
// provides them.
func (s *Storage) SetSnapshotter(f func() (*raftpb.Snapshot, error)) { s.snapshot = f }

// ResetToSnapshot makes the in-memory picture match a snapshot that was
// just ingested: the log is empty and truncated at the snapshot's index,
// and the applied state is as.
func (s *Storage) ResetToSnapshot(as *shoalpb.AppliedState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.truncated = &shoalpb.TruncatedState{Index: as.Index, Term: as.Term}
	s.mu.applied = as
	s.mu.lastIndex, s.mu.lastTerm = as.Index, as.Term
	s.mu.logBytes = 0
	s.mu.cache.reset()
}

// LogSize returns how many entries the log holds and about how many bytes.
func (s *Storage) LogSize() (entries, bytes uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.lastIndex - s.mu.truncated.Index, s.mu.logBytes
}

// shrinkLocked scales logBytes down for the entries that remain out of n.
func (s *Storage) shrinkLocked(remain, n uint64) {
	if n == 0 || remain >= n {
		return
	}
	s.mu.logBytes = s.mu.logBytes * remain / n
}

// Shard returns the shard whose log this is.
func (s *Storage) Shard() uint64 { return s.shard }

// InitialState implements raft.Storage.
func (s *Storage) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	hs := proto.Clone(s.mu.hardState).(*raftpb.HardState)
	if hs.GetCommit() < s.mu.applied.Index {
		// The applied state reached the disk but the HardState recording its
		// commit index did not; the entries were committed, so say so.
		hs.Commit = new(s.mu.applied.Index)
	}
	cs := s.mu.applied.GetConfState()
	if cs == nil {
		cs = &raftpb.ConfState{}
	}
	return hs, proto.Clone(cs).(*raftpb.ConfState), nil
}

// Applied returns the applied state as last written or loaded.
func (s *Storage) Applied() *shoalpb.AppliedState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.mu.applied).(*shoalpb.AppliedState)
}

// AppliedIndex returns the applied index as last written or loaded.
func (s *Storage) AppliedIndex() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.applied.Index
}

// FirstIndex implements raft.Storage.
func (s *Storage) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.truncated.Index + 1, nil
}

// LastIndex implements raft.Storage.
func (s *Storage) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.lastIndex, nil
}

// Truncated returns the truncated state.
func (s *Storage) Truncated() *shoalpb.TruncatedState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.mu.truncated).(*shoalpb.TruncatedState)
}

// Term implements raft.Storage.
func (s *Storage) Term(i uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case i == s.mu.truncated.Index:
		return s.mu.truncated.Term, nil
	case i < s.mu.truncated.Index:
		return 0, raft.ErrCompacted
	case i > s.mu.lastIndex:
		return 0, raft.ErrUnavailable
	case i == s.mu.lastIndex:
		return s.mu.lastTerm, nil
	}
	if e := s.mu.cache.get(i); e != nil {
		return e.GetTerm(), nil
	}
	e, err := s.readEntry(i)
	if err != nil {
		return 0, err
	}
	return e.GetTerm(), nil
}

func (s *Storage) readEntry(i uint64) (*raftpb.Entry, error) {
	var e raftpb.Entry
	ok, err := storage.GetProto(s.eng.Reader(), keys.RaftLogKey(s.shard, i), &e)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("raftlog: shard %d: entry %d missing in [%d, %d]: %w",
			s.shard, i, s.mu.truncated.Index+1, s.mu.lastIndex, raft.ErrUnavailable)
	}
	return &e, nil
}

// Entries implements raft.Storage.
func (s *Storage) Entries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lo <= s.mu.truncated.Index {
		return nil, raft.ErrCompacted
	}
	if hi > s.mu.lastIndex+1 {
		// Raft compares the contract's errors with ==: return them bare.
		// (Entries missing inside the log are corruption and are wrapped
		// with detail, which Raft reports by panicking.)
		return nil, raft.ErrUnavailable
	}
	if lo >= hi {
		return nil, nil
	}
	out := make([]*raftpb.Entry, 0, min(hi-lo, 64))
	var size uint64
	add := func(e *raftpb.Entry) bool {
		es := uint64(proto.Size(e))
		if len(out) > 0 && size+es > maxSize {
			return false
		}
		size += es
		out = append(out, e)
		return true
	}
	// Entries below the cache come from Pebble.
	next := lo
	if cf := s.mu.cache.first(); cf == 0 || next < cf {
		end := hi
		if cf != 0 && cf < end {
			end = cf
		}
		it, err := s.eng.NewIter(keys.RaftLogSpan(s.shard, next, end))
		if err != nil {
			return nil, err
		}
		full := false
		for ok := it.First(); ok; ok = it.Next() {
			_, idx, err := keys.DecodeRaftLogKey(it.Key())
			if err != nil {
				it.Close()
				return nil, err
			}
			if idx != next {
				it.Close()
				return nil, fmt.Errorf("raftlog: shard %d: gap in log at %d (found %d): %w", s.shard, next, idx, raft.ErrUnavailable)
			}
			e := &raftpb.Entry{}
			if err := proto.Unmarshal(it.Value(), e); err != nil {
				it.Close()
				return nil, fmt.Errorf("raftlog: shard %d: decode entry %d: %w", s.shard, idx, err)
			}
			if !add(e) {
				full = true
				break
			}
			next++
		}
		err = it.Error()
		it.Close()
		if err != nil {
			return nil, fmt.Errorf("raftlog: shard %d: %w", s.shard, err)
		}
		if full {
			return out, nil
		}
		if next != end {
			return nil, fmt.Errorf("raftlog: shard %d: log ends at %d, want %d: %w", s.shard, next, end, raft.ErrUnavailable)
		}
	}
	for ; next < hi; next++ {
		e := s.mu.cache.get(next)
		if e == nil {
			return nil, fmt.Errorf("raftlog: shard %d: entry %d not cached: %w", s.shard, next, raft.ErrUnavailable)
		}
		if !add(e) {
			break
		}
	}
	return out, nil
}

// Snapshot implements raft.Storage with the function SetSnapshotter set;
// without one Raft is told to wait.
func (s *Storage) Snapshot() (*raftpb.Snapshot, error) {
	if s.snapshot == nil {
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return s.snapshot()
}

// Append stages ents in b, replacing any conflicting suffix of the log.
func (s *Storage) Append(b *storage.Batch, ents []*raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	first := ents[0].GetIndex()
	if first <= s.mu.truncated.Index {
		// Entries already truncated are committed and identical; skip them.
		skip := s.mu.truncated.Index + 1 - first
		if skip >= uint64(len(ents)) {
			return nil
		}
		ents = ents[skip:]
		first = ents[0].GetIndex()
	}
	if first > s.mu.lastIndex+1 {
		return fmt.Errorf("raftlog: shard %d: append at %d leaves a gap after %d", s.shard, first, s.mu.lastIndex)
	}
	last := ents[len(ents)-1]
	if first <= s.mu.lastIndex {
		// The entries from first on are replaced.
		n := s.mu.lastIndex - s.mu.truncated.Index
		s.shrinkLocked(first-1-s.mu.truncated.Index, n)
	}
	buf := make([]byte, 0, 256)
	for _, e := range ents {
		var err error
		buf, err = proto.MarshalOptions{}.MarshalAppend(buf[:0], e)
		if err != nil {
			return fmt.Errorf("raftlog: encode entry: %w", err)
		}
		if err := b.Set(keys.RaftLogKey(s.shard, e.GetIndex()), buf, nil); err != nil {
			return err
		}
		s.mu.logBytes += uint64(len(buf))
	}
	if li := last.GetIndex(); li < s.mu.lastIndex {
		// The new entries end before the old log did: drop the old tail.
		if err := b.DeleteSpan(keys.RaftLogSpan(s.shard, li+1, s.mu.lastIndex+1)); err != nil {
			return err
		}
	}
	s.mu.cache.append(ents)
	s.mu.lastIndex, s.mu.lastTerm = last.GetIndex(), last.GetTerm()
	return nil
}

// CommitOnly reports whether hs differs from the HardState as written only
// in its commit index, and if so records that commit index in memory: hs
// need not be written. Otherwise (a new term or vote) it changes nothing
// and hs must be written with SetHardState. Raft does not need its commit
// index durable: after a restart InitialState raises it to the applied
// index, and the leader tells the rest. On a busy node this saves a write
// (and a memtable insert) per replica in almost every Ready, as a leader's
// commit index moves with every acknowledgement and a follower's with
// every append; the next HardState written carries the commit index.
func (s *Storage) CommitOnly(hs *raftpb.HardState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.mu.hardState
	if hs.GetTerm() != cur.GetTerm() || hs.GetVote() != cur.GetVote() {
		return false
	}
	if cur.Commit == nil {
		cur.Commit = new(uint64)
	}
	*cur.Commit = hs.GetCommit() // s.mu.hardState is never handed out without a copy
	return true
}

// SetHardState stages hs in b.
func (s *Storage) SetHardState(b *storage.Batch, hs *raftpb.HardState) error {
	if err := b.SetProto(keys.HardStateKey(s.shard), hs); err != nil {
		return err
	}
	s.mu.Lock()
	s.mu.hardState = proto.Clone(hs).(*raftpb.HardState)
	s.mu.Unlock()
	return nil
}

// HardState returns the HardState as last written or loaded, with the
// commit index last set.
func (s *Storage) HardState() *raftpb.HardState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.mu.hardState).(*raftpb.HardState)
}

// SetApplied stages the applied state in b. It must go in the same batch as
// the state machine changes of the entries up to as.Index.
func (s *Storage) SetApplied(b *storage.Batch, as *shoalpb.AppliedState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.mu.appliedEnc.encode(as)
	if err != nil {
		return fmt.Errorf("raftlog: shard %d: encode applied state: %w", s.shard, err)
	}
	// The batch copies v.
	if err := b.Set(keys.AppliedStateKey(s.shard), v, nil); err != nil {
		return err
	}
	s.mu.applied = as
	return nil
}

// Truncate stages in b the removal of every entry up to and including index,
// which must be applied. It is a no-op if the log is already truncated there.
func (s *Storage) Truncate(b *storage.Batch, index uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index <= s.mu.truncated.Index {
		return nil
	}
	if index > s.mu.applied.Index {
		return fmt.Errorf("raftlog: shard %d: truncate at %d beyond applied %d", s.shard, index, s.mu.applied.Index)
	}
	var term uint64
	if e := s.mu.cache.get(index); e != nil {
		term = e.GetTerm()
	} else if index == s.mu.lastIndex {
		term = s.mu.lastTerm
	} else {
		e, err := s.readEntry(index)
		if err != nil {
			return err
		}
		term = e.GetTerm()
	}
	if err := b.DeleteSpan(keys.RaftLogSpan(s.shard, s.mu.truncated.Index+1, index+1)); err != nil {
		return err
	}
	ts := &shoalpb.TruncatedState{Index: index, Term: term}
	if err := b.SetProto(keys.TruncatedStateKey(s.shard), ts); err != nil {
		return err
	}
	n := s.mu.lastIndex - s.mu.truncated.Index
	s.shrinkLocked(s.mu.lastIndex-index, n)
	s.mu.truncated = ts
	s.mu.cache.truncateFront(index + 1)
	return nil
}

// TrimCache drops cached entries below index: entries that neither the
// local apply nor any follower will ask for again. The cache holds only the
// window still in flight, so its memory follows the write rate, not the
// number of replicas times its bound.
func (s *Storage) TrimCache(index uint64) {
	s.mu.Lock()
	s.mu.cache.truncateFront(index)
	s.mu.Unlock()
}

// CacheStats reports the entry cache's size in entries and bytes.
func (s *Storage) CacheStats() (entries int, bytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.cache.ents), s.mu.cache.bytes
}
