package raftstore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftlog"
	"github.com/shoaldb/shoal/internal/storage"
)

// Transport sends Raft messages to other nodes.
type Transport interface {
	// Send queues msgs, all addressed to node to, without blocking. An error
	// means the messages were dropped (queue full, node unknown or
	// unreachable); the store then reports the destination replicas
	// unreachable to Raft.
	Send(to uint64, msgs []*shoalpb.RaftMessage) error
	// SendSnapshot streams a snapshot to node to: first, then every chunk
	// next returns until io.EOF. It blocks until the receiver accepted the
	// whole snapshot or the stream failed.
	SendSnapshot(ctx context.Context, to uint64, first *shoalpb.SnapshotChunk, next func() (*shoalpb.SnapshotChunk, error)) error
}

// Command is one committed command handed to a StateMachine.
type Command struct {
	Index, Term uint64
	Data        []byte
}

// StateMachine is the replicated state of one replica. The store calls it
// from the replica's worker only, one call at a time.
type StateMachine interface {
	// Apply applies committed commands in log order, staging their effects in
	// b, an indexed batch that may also hold other replicas' writes (read
	// through b to see earlier commands). It returns one result per command;
	// the store hands each to its proposer once b is committed. An error
	// means the replica can no longer apply (a storage failure) and stops the
	// store; a command that fails by its own rules reports that in its result.
	Apply(b *storage.Batch, cmds []Command) ([]any, error)
}

// Committer is a StateMachine that needs to know when the writes Apply
// staged are committed to the engine (kv's keeps a cache of the data in
// step with it). The store calls Committed once the batch holding them is
// committed, before their proposers are answered and before reads waiting
// for their index are served; a state machine the store replaced in the
// meantime (a snapshot) is still told.
type Committer interface {
	Committed()
}

// Role is a replica's Raft role.
type Role string

// Roles of a replica.
const (
	RoleFollower     Role = "follower"
	RoleCandidate    Role = "candidate"
	RolePreCandidate Role = "pre-candidate"
	RoleLeader       Role = "leader"
)

// ReplicaStatus is a snapshot of one replica's state.
type ReplicaStatus struct {
	ShardID, ReplicaID uint64
	Role               Role
	Term               uint64
	// LeaderReplica and LeaderNode are 0 when no leader is known.
	LeaderReplica, LeaderNode uint64
	// Applied is the applied index.
	Applied uint64
	// Initialized is false for a replica created empty that has not received
	// its first snapshot yet.
	Initialized bool
	// LogEntries and LogBytes are the size of the Raft log (bytes
	// approximate).
	LogEntries, LogBytes uint64
	// Removed is true once the replica has been removed from this node.
	Removed bool
	// Quiet is true while the replica does not tick: its shard is idle
	// (quiesce.go).
	Quiet bool
	// LeadTransferee is, on a leader handing its leadership over, the
	// replica it hands over to (0 when no transfer runs). Proposals that
	// arrive meanwhile wait for the transfer to end.
	LeadTransferee uint64
	// Descriptor is the replica's view of the shard. Do not modify.
	Descriptor *shoalpb.ShardDescriptor
	// Progress is, on a leader, its view of every member's log (refreshed
	// every tick); nil elsewhere. Do not modify.
	Progress map[uint64]Progress
}

// Progress is a leader's view of one member's log.
type Progress struct {
	// Match is the highest index known to be in the member's log.
	Match uint64
	// State is "probe", "replicate" or "snapshot".
	State string
	// Learner is true for a learner.
	Learner bool
}

// Stats are cumulative counters of a Store.
type Stats struct {
	// Iterations counts loop iterations; LogSyncs the group commits that
	// synced; LogSyncReplicas the replicas whose log writes those carried.
	Iterations, LogSyncs, LogSyncReplicas uint64
	// Proposals counts commands accepted by Raft; Applied counts entries
	// applied.
	Proposals, Applied uint64
	// MessagesSent and MessagesDropped count outgoing Raft messages;
	// MessagesReceived incoming ones handed to replicas.
	MessagesSent, MessagesDropped, MessagesReceived uint64
	// AppendsRefusedDiskFull counts received appends with entries dropped
	// because the disk was below half its reserve (Options.Space).
	AppendsRefusedDiskFull uint64
	// MessagesSentByType splits MessagesSent by Raft message type (the
	// raftpb name, "MsgApp"; "Removed" for the notices that tell a replica
	// it was removed, "Other" for a type this build does not know; types
	// never sent are absent). EmptyAppendsSent counts the MsgApps among
	// them that carried no entries: a leader's notices of a new commit
	// index, and its probes. CommitNoticesDropped counts the commit notices
	// a leader did not send, to followers that had acknowledged everything
	// (replica.go, dropCommitNotices). Read while the store runs, the
	// counts by type may be ahead of MessagesSent by one batch.
	MessagesSentByType                     map[string]uint64
	EmptyAppendsSent, CommitNoticesDropped uint64
	// EntryCacheBytes is the memory the replicas' log entry caches hold now.
	EntryCacheBytes int
	// SnapshotsSent, SnapshotsReceived and SnapshotsFailed count snapshot
	// streams; SnapshotsApplied the snapshots restored; Truncations the log
	// truncations.
	SnapshotsSent, SnapshotsReceived, SnapshotsFailed, SnapshotsApplied, Truncations uint64
	// ReplicasCreated and ReplicasRemoved count replicas created empty for a
	// snapshot and replicas destroyed.
	ReplicasCreated, ReplicasRemoved uint64
	// Campaigns counts the times a replica here became a candidate (an
	// election it started); Leaderships the times one became leader (by
	// election or transfer).
	Campaigns, Leaderships uint64
	// LeaseReads counts reads a leader served under its lease, with no
	// round of messages; ReadRounds the ReadIndex rounds issued (for
	// reads that found no lease, on followers, and to renew leases).
	LeaseReads, ReadRounds uint64
	// LeaderWaits counts the WaitLeader calls that found the shard without
	// a leader and waited (requests that arrived during an election; one
	// request can wait more than once).
	LeaderWaits uint64
	// ProposalsHeld counts proposals that reached a leader while it was
	// handing its leadership over and waited for the transfer to end.
	ProposalsHeld uint64
	// TransfersRequested counts leadership transfers asked of leaders
	// here (TransferLeader); TransfersStarted those handed to Raft (its
	// target close enough, or answering after an election timeout);
	// TransfersGivenUp those dropped because the target was still far
	// behind and silent, or needed a snapshot, after an election timeout;
	// TransfersAborted those Raft ran whose target's node then fell silent
	// for half an election timeout; TransfersCancelled those withdrawn
	// before they reached Raft because their caller gave up.
	TransfersRequested, TransfersStarted, TransfersGivenUp, TransfersAborted, TransfersCancelled uint64
	// Quiesced counts the times a replica went quiet; QuietReplicas is how
	// many are quiet now (quiesce.go).
	Quiesced      uint64
	QuietReplicas int
}

// Store hosts every replica of one node and drives their Raft groups.
//
// One loop goroutine runs iterations; each takes every replica with work and
// processes them on a fixed worker pool in three phases:
//
//  1. per replica, in parallel: step incoming messages, tick, hand new
//     proposals and read requests to Raft, take a Ready; send a leader's
//     messages at once (a leader may send in parallel with its own fsync);
//     stage new entries and HardState in the shared log batch; apply the
//     committed entries that were already durable in the worker's apply
//     batch, commit it without sync and complete their proposals and reads;
//  2. once: commit the shared log batch with one sync (group commit);
//  3. per replica, in parallel: send the remaining messages (a follower's
//     acknowledgements only after its entries are durable), apply the
//     committed entries that this iteration's sync made durable, and
//     Advance.
//
// Outgoing messages are batched per destination node and handed to the
// Transport once per phase.
type Store struct {
	// refuseLeadership drops leadership handovers to this store's replicas
	// (RefuseLeadership).
	refuseLeadership atomic.Bool

	opts  Options
	log   *slog.Logger
	eng   *storage.Engine
	sched *scheduler
	pool  *pool

	mu struct {
		sync.RWMutex
		replicas map[uint64]*Replica
		// slots maps each slot to the shard of the local replica that owns
		// it, 0 if none.
		slots [keys.SlotCount]uint64
	}

	// logMu guards the shared batch of phase 1 log writes.
	logMu       sync.Mutex
	logBatch    *storage.Batch
	logMustSync bool
	logReplicas int
	// logErr is the first error of a write staged in logBatch: the batch
	// may hold part of that write, and is then never committed.
	logErr error

	// iterStart is when the loop's current iteration began (on the peer
	// clock, see quiesce.go), 0 between iterations: the ticker stops
	// sending keepalives while an iteration is stuck.
	iterStart atomic.Int64

	proposalSeq atomic.Uint64
	started     atomic.Bool
	// stopping is set before waiters are failed on Stop; replicas refuse new
	// work once it is set (checked under each replica's mu).
	stopping atomic.Bool
	stopOnce sync.Once
	stopC    chan struct{}
	done     sync.WaitGroup
	failure  atomic.Pointer[error]

	snaps     snapshotTracker
	sendSlots chan struct{}
	recvSlots chan struct{}
	// recvBytes is the size of the snapshots being received.
	recvBytes atomic.Uint64
	snapLimit *byteLimiter

	stats struct {
		iterations, logSyncs, logSyncReplicas atomic.Uint64
		proposals, applied                    atomic.Uint64
		sent, dropped, received               atomic.Uint64
		sentByType                            [numSentKinds]atomic.Uint64
		emptyAppends, noticesDropped          atomic.Uint64
		droppedDiskFull                       atomic.Uint64
		snapshotsApplied, truncations         atomic.Uint64
		created, removed                      atomic.Uint64
		campaigns, leaderships                atomic.Uint64
		leaseReads, readRounds                atomic.Uint64
		leaderWaits, proposalsHeld            atomic.Uint64
		transfersRequested, transfersStarted  atomic.Uint64
		transfersGivenUp, transfersAborted    atomic.Uint64
		transfersCancelled                    atomic.Uint64
		quiesced                              atomic.Uint64
	}
	peers *peerClock
}

// NewStore loads every replica the engine holds. Call Start to run it.
func NewStore(opts Options) (*Store, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s := &Store{
		opts:      opts,
		log:       opts.Logger,
		eng:       opts.Engine,
		sched:     newScheduler(),
		stopC:     make(chan struct{}),
		peers:     newPeerClock(),
		sendSlots: make(chan struct{}, opts.MaxSnapshotSends),
		recvSlots: make(chan struct{}, opts.MaxSnapshotReceives),
		snapLimit: newByteLimiter(max(opts.SnapshotBytesPerSec, 0)),
	}
	s.mu.replicas = map[uint64]*Replica{}
	// Proposal and ReadIndex IDs must not repeat across restarts or
	// collide between nodes: start from a random point.
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, err
	}
	s.proposalSeq.Store(binary.BigEndian.Uint64(seed[:]) >> 1)
	// Snapshots half received when the node stopped are garbage.
	if err := s.eng.FS().RemoveAll(s.eng.FS().PathJoin(s.eng.Dir(), snapshotDir)); err != nil {
		return nil, fmt.Errorf("raftstore: clear snapshot directory: %w", err)
	}
	if err := s.loadReplicas(); err != nil {
		return nil, err
	}
	if err := s.removeOrphanRaftState(); err != nil {
		return nil, err
	}
	return s, nil
}

// removeOrphanRaftState deletes Raft state without a replica: what a replica
// created empty wrote (a HardState) before the node stopped, before any
// snapshot made it a replica with state.
func (s *Store) removeOrphanRaftState() error {
	it, err := s.eng.NewIter(keys.Span{Start: []byte{keys.RaftPrefix}, End: []byte{keys.RaftPrefix + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	b := s.eng.NewBatch()
	defer b.Close()
	n := 0
	for ok := it.First(); ok; {
		k := it.Key()
		if len(k) < 5 {
			return fmt.Errorf("raftstore: malformed raft key %q", k)
		}
		shard := uint64(k[1])<<24 | uint64(k[2])<<16 | uint64(k[3])<<8 | uint64(k[4])
		span := keys.ShardRaftSpan(shard)
		if s.mu.replicas[shard] == nil {
			// Keep the HardState: it holds a vote the replica may have cast.
			hs := keys.HardStateKey(shard)
			if err := b.DeleteSpan(keys.Span{Start: span.Start, End: hs}); err != nil {
				return err
			}
			if err := b.DeleteSpan(keys.Span{Start: append(hs[:len(hs):len(hs)], 0), End: span.End}); err != nil {
				return err
			}
			n++
		}
		ok = it.SeekGE(span.End)
	}
	if err := it.Error(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	s.log.Info("removed raft state of replicas that never received a snapshot", "replicas", n)
	return b.Commit(true)
}

func (s *Store) loadReplicas() error {
	it, err := s.eng.NewIter(keys.ReplicaStateSpan())
	if err != nil {
		return err
	}
	defer it.Close()
	var removed []*Replica
	for ok := it.First(); ok; ok = it.Next() {
		shard, err := keys.DecodeReplicaStateKey(it.Key())
		if err != nil {
			return err
		}
		st := &shoalpb.LocalReplicaState{}
		if err := unmarshal(it.Value(), st); err != nil {
			return fmt.Errorf("raftstore: shard %d: replica state: %w", shard, err)
		}
		if st.Tombstone {
			continue
		}
		r, err := s.newReplica(st)
		if err != nil {
			return err
		}
		s.addReplicaLocked(r)
		if !r.inDescriptor(r.replicaID) {
			removed = append(removed, r)
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	// A replica whose own removal it applied is destroyed at the end of
	// that iteration; a node that stopped in between (a crash, a failed
	// phase) comes back with it, in a configuration without it: nobody
	// would ever send it anything, and it would serve its frozen data to
	// stale reads for good. It goes now.
	for _, r := range removed {
		if err := r.destroy(fmt.Errorf("%w: its removal was applied before the node stopped", ErrShardRemoved)); err != nil {
			return err
		}
	}
	return nil
}

// Start runs the store's loop, workers and ticker.
func (s *Store) Start() {
	if s.started.Swap(true) {
		return
	}
	s.pool = newPool(s, s.opts.Workers)
	s.done.Add(2)
	go s.loop()
	go s.ticker()
	s.sched.enqueueAll(s.replicaList())
	s.log.Info("store started", "replicas", len(s.replicaList()), "workers", s.opts.Workers)
}

// Stop stops the store: the loop finishes its iteration, then every waiting
// proposal and read fails with ErrStopped. It does not close the engine.
func (s *Store) Stop() {
	s.stopOnce.Do(func() {
		s.stopping.Store(true)
		close(s.stopC)
		s.sched.stop()
		s.done.Wait()
		if s.pool != nil {
			s.pool.stop()
		}
		for _, r := range s.replicaList() {
			r.failAll(ErrStopped)
		}
		s.log.Info("store stopped")
	})
}

// Err returns the error that stopped the store, if it failed.
func (s *Store) Err() error {
	if p := s.failure.Load(); p != nil {
		return *p
	}
	return nil
}

// fatal records a failure that the store cannot continue past (a storage
// error) and stops it.
func (s *Store) fatal(err error) {
	if s.failure.CompareAndSwap(nil, &err) {
		s.log.Error("store failed, stopping", "err", err)
		if f := s.opts.OnFailure; f != nil {
			f(err)
		}
		go s.Stop()
	}
}

// NodeID returns the node's ID.
func (s *Store) NodeID() uint64 { return s.opts.NodeID }

// Engine returns the node's engine.
func (s *Store) Engine() *storage.Engine { return s.eng }

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	cached, quiet := 0, 0
	for _, r := range s.replicaList() {
		_, b := r.storage.CacheStats()
		cached += b
		if r.quiet.Load() {
			quiet++
		}
	}
	return Stats{
		EntryCacheBytes:    cached,
		QuietReplicas:      quiet,
		SnapshotsSent:      s.snaps.sent.Load(),
		SnapshotsReceived:  s.snaps.recv.Load(),
		SnapshotsFailed:    s.snaps.failed.Load(),
		SnapshotsApplied:   s.stats.snapshotsApplied.Load(),
		Truncations:        s.stats.truncations.Load(),
		ReplicasCreated:    s.stats.created.Load(),
		ReplicasRemoved:    s.stats.removed.Load(),
		Campaigns:          s.stats.campaigns.Load(),
		Leaderships:        s.stats.leaderships.Load(),
		LeaseReads:         s.stats.leaseReads.Load(),
		LeaderWaits:        s.stats.leaderWaits.Load(),
		ProposalsHeld:      s.stats.proposalsHeld.Load(),
		TransfersRequested: s.stats.transfersRequested.Load(),
		TransfersStarted:   s.stats.transfersStarted.Load(),
		TransfersGivenUp:   s.stats.transfersGivenUp.Load(),
		TransfersCancelled: s.stats.transfersCancelled.Load(),
		TransfersAborted:   s.stats.transfersAborted.Load(),
		ReadRounds:         s.stats.readRounds.Load(),
		Quiesced:           s.stats.quiesced.Load(),
		Iterations:         s.stats.iterations.Load(),
		LogSyncs:           s.stats.logSyncs.Load(),
		LogSyncReplicas:    s.stats.logSyncReplicas.Load(),
		Proposals:          s.stats.proposals.Load(),
		Applied:            s.stats.applied.Load(),
		MessagesSent:       s.stats.sent.Load(),
		MessagesDropped:    s.stats.dropped.Load(),
		MessagesReceived:   s.stats.received.Load(),

		AppendsRefusedDiskFull: s.stats.droppedDiskFull.Load(),

		MessagesSentByType:   s.sentByType(),
		EmptyAppendsSent:     s.stats.emptyAppends.Load(),
		CommitNoticesDropped: s.stats.noticesDropped.Load(),
	}
}

// The kinds of sent messages counted apart: every Raft message type etcd
// raft v3.7 has, then removal notices, then any other type.
const (
	numMessageTypes = int(raftpb.MsgForgetLeader) + 1
	sentRemoved     = numMessageTypes
	sentOther       = numMessageTypes + 1
	numSentKinds    = numMessageTypes + 2
)

func (s *Store) sentByType() map[string]uint64 {
	out := map[string]uint64{}
	for t := range s.stats.sentByType {
		n := s.stats.sentByType[t].Load()
		if n == 0 {
			continue
		}
		name := "Other"
		switch {
		case t == sentRemoved:
			name = "Removed"
		case t < numMessageTypes:
			name = raftpb.MessageType(t).String()
		}
		out[name] = n
	}
	return out
}

// countSent counts messages handed to the transport: counted here first,
// so that the loop pays one atomic add per kind per batch, not per message.
func (s *Store) countSent(msgs []*shoalpb.RaftMessage) {
	var kinds [numSentKinds]uint64
	var empty uint64
	for _, m := range msgs {
		t := int(m.Message.GetType())
		switch {
		case m.Removed:
			t = sentRemoved
		case t >= numMessageTypes:
			t = sentOther
		}
		kinds[t]++
		if t == int(raftpb.MsgApp) && len(m.Message.GetEntries()) == 0 {
			empty++
		}
	}
	for t, n := range kinds {
		if n > 0 {
			s.stats.sentByType[t].Add(n)
		}
	}
	if empty > 0 {
		s.stats.emptyAppends.Add(empty)
	}
	s.stats.sent.Add(uint64(len(msgs)))
}

func (s *Store) replica(shard uint64) (*Replica, error) {
	s.mu.RLock()
	r := s.mu.replicas[shard]
	s.mu.RUnlock()
	if r == nil {
		return nil, fmt.Errorf("%w: shard %d on node %d", ErrShardNotFound, shard, s.opts.NodeID)
	}
	return r, nil
}

func (s *Store) addReplicaLocked(r *Replica) {
	s.mu.replicas[r.shardID] = r
	for slot := r.desc.StartSlot; slot < r.desc.EndSlot && slot < keys.SlotCount; slot++ {
		s.mu.slots[slot] = r.shardID
	}
}

// setSlots records the slots of a replica that just got its range (from
// its first snapshot).
func (s *Store) setSlots(r *Replica) {
	s.mu.Lock()
	if s.mu.replicas[r.shardID] == r {
		s.addReplicaLocked(r)
	}
	s.mu.Unlock()
}

// removeReplica forgets a destroyed replica.
func (s *Store) removeReplica(r *Replica) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.replicas[r.shardID] != r {
		return
	}
	delete(s.mu.replicas, r.shardID)
	for slot := r.desc.StartSlot; slot < r.desc.EndSlot && slot < keys.SlotCount; slot++ {
		if s.mu.slots[slot] == r.shardID {
			s.mu.slots[slot] = 0
		}
	}
	s.stats.removed.Add(1)
}

// admitReplica checks that this node may hold replica replicaID of shard:
// a tombstone refuses that replica and every older one.
func (s *Store) admitReplica(shard, replicaID, epoch uint64) error {
	var st shoalpb.LocalReplicaState
	ok, err := storage.GetProto(s.eng.Reader(), keys.ReplicaStateKey(shard), &st)
	if err != nil {
		return err
	}
	if ok && st.Tombstone && replicaID <= st.TombstoneReplicaId {
		return fmt.Errorf("%w: replica %d of shard %d was removed from node %d (tombstone for replica %d)",
			ErrShardRemoved, replicaID, shard, s.opts.NodeID, st.TombstoneReplicaId)
	}
	if r, err := s.replica(shard); err == nil && r.replicaID > replicaID {
		return fmt.Errorf("%w: node %d has the newer replica %d of shard %d", ErrShardRemoved, s.opts.NodeID, r.replicaID, shard)
	}
	return nil
}

// replicaForSnapshot returns the replica replicaID of shard, creating it
// empty if this node has none.
func (s *Store) replicaForSnapshot(shard, replicaID uint64) (*Replica, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.mu.replicas[shard]; r != nil {
		if r.replicaID != replicaID {
			return nil, fmt.Errorf("%w: node %d has replica %d of shard %d, not %d",
				ErrShardRemoved, s.opts.NodeID, r.replicaID, shard, replicaID)
		}
		return r, nil
	}
	if s.stopping.Load() {
		return nil, ErrStopped
	}
	// Check the tombstone again: a snapshot stream can last minutes, and
	// the replica may have applied its own removal meanwhile (destroy
	// commits the tombstone before it leaves the map).
	var st shoalpb.LocalReplicaState
	if ok, err := storage.GetProto(s.eng.Reader(), keys.ReplicaStateKey(shard), &st); err != nil {
		return nil, err
	} else if ok && st.Tombstone && replicaID <= st.TombstoneReplicaId {
		return nil, fmt.Errorf("%w: replica %d of shard %d was removed from node %d", ErrShardRemoved, replicaID, shard, s.opts.NodeID)
	}
	r, err := s.newEmptyReplica(shard, replicaID)
	if err != nil {
		return nil, err
	}
	s.mu.replicas[shard] = r
	s.stats.created.Add(1)
	s.log.Info("created an empty replica to receive a snapshot", "shard", shard, "replica", replicaID)
	if s.started.Load() {
		s.sched.enqueue(r)
	}
	return r, nil
}

// ShardBySlot returns the shard of the local replica that owns slot, or
// ErrShardNotFound if this node holds no replica of it.
func (s *Store) ShardBySlot(slot uint16) (uint64, error) {
	s.mu.RLock()
	var shard uint64
	if int(slot) < keys.SlotCount {
		shard = s.mu.slots[slot]
	}
	s.mu.RUnlock()
	if shard == 0 {
		return 0, fmt.Errorf("%w: no local shard owns slot %d", ErrShardNotFound, slot)
	}
	return shard, nil
}

func (s *Store) replicaList() []*Replica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Replica, 0, len(s.mu.replicas))
	for _, r := range s.mu.replicas {
		out = append(out, r)
	}
	return out
}

// BootstrapReplica creates this node's replica of a new shard whose initial
// members are desc.Replicas, all starting from the same empty state. It is
// idempotent for the same descriptor.
func (s *Store) BootstrapReplica(desc *shoalpb.ShardDescriptor) error {
	var me *shoalpb.ReplicaDescriptor
	cs := &raftpb.ConfState{}
	for _, rd := range desc.Replicas {
		if rd.NodeId == s.opts.NodeID {
			me = rd
		}
		if rd.Role == shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER {
			cs.Learners = append(cs.Learners, rd.ReplicaId)
		} else {
			cs.Voters = append(cs.Voters, rd.ReplicaId)
		}
	}
	if me == nil {
		return fmt.Errorf("raftstore: shard %d has no replica on node %d", desc.ShardId, s.opts.NodeID)
	}
	if desc.ShardId == 0 || desc.ShardId > keys.MaxShardID {
		return fmt.Errorf("raftstore: shard ID %d out of range", desc.ShardId)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.mu.replicas[desc.ShardId]; r != nil {
		if r.replicaID == me.ReplicaId {
			return nil
		}
		return fmt.Errorf("raftstore: shard %d already has replica %d here", desc.ShardId, r.replicaID)
	}
	var old shoalpb.LocalReplicaState
	if ok, err := storage.GetProto(s.eng.Reader(), keys.ReplicaStateKey(desc.ShardId), &old); err != nil {
		return err
	} else if ok && old.Tombstone {
		return fmt.Errorf("%w: shard %d: replica %d was removed from node %d and is not created again",
			ErrShardRemoved, desc.ShardId, old.TombstoneReplicaId, s.opts.NodeID)
	} else if ok {
		return fmt.Errorf("raftstore: shard %d: replica %d exists", desc.ShardId, old.ReplicaId)
	}
	st := &shoalpb.LocalReplicaState{ReplicaId: me.ReplicaId, Shard: desc}
	b := s.eng.NewBatch()
	defer b.Close()
	if err := b.SetProto(keys.ReplicaStateKey(desc.ShardId), st); err != nil {
		return err
	}
	if err := raftlog.Bootstrap(b, desc.ShardId, cs); err != nil {
		return err
	}
	if err := b.Commit(true); err != nil {
		return err
	}
	r, err := s.newReplica(st)
	if err != nil {
		return err
	}
	if desc.Replicas[0].NodeId == s.opts.NodeID && !s.opts.Knobs.DisableCampaignOnBootstrap {
		// Campaign two ticks from now: the peers bootstrapped at about the
		// same time are up by then.
		r.campaignAt = 2
	}
	s.addReplicaLocked(r)
	if s.started.Load() {
		s.sched.enqueue(r)
	}
	return nil
}

// Propose replicates cmd through the shard's Raft log and returns the state
// machine's result once the entry is applied on this node. It must be called
// on the leader; otherwise it fails with a NotLeaderError or ErrNoLeader
// without proposing. See the sentinel errors for what each failure means for
// the command.
func (s *Store) Propose(ctx context.Context, shard uint64, cmd []byte) (any, error) {
	r, err := s.replica(shard)
	if err != nil {
		return nil, err
	}
	if len(cmd)+entryHeaderSize > s.opts.MaxEntryBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrEntryTooLarge, len(cmd), s.opts.MaxEntryBytes)
	}
	p := &proposal{
		id:   proposalID{node: s.opts.NodeID, seq: s.proposalSeq.Add(1)},
		ctx:  ctx,
		done: make(chan result, 1),
	}
	p.data = encodeEntry(p.id, cmd)
	if err := r.enqueueProposal(p); err != nil {
		return nil, err
	}
	res := p.wait(ctx)
	return res.value, res.err
}

// beforeDataReset calls Options.BeforeDataReset for the slots of desc.
func (s *Store) beforeDataReset(desc *shoalpb.ShardDescriptor) (done func()) {
	if f := s.opts.BeforeDataReset; f != nil {
		return f(desc.GetStartSlot(), desc.GetEndSlot())
	}
	return func() {}
}

// ReadIndex returns once this replica has applied every write that was
// committed when ReadIndex was called: reading its state afterwards is
// linearizable. It works on leaders and followers.
func (s *Store) ReadIndex(ctx context.Context, shard uint64) error {
	r, err := s.replica(shard)
	if err != nil {
		return err
	}
	if plantedStaleReads && r.Status().Role == RoleLeader {
		return nil
	}
	if r.leaseRead(time.Now()) {
		s.stats.leaseReads.Add(1)
		return nil
	}
	rr := &readRequest{ctx: ctx, done: make(chan error, 1)}
	if err := r.enqueueRead(rr); err != nil {
		return err
	}
	select {
	case err := <-rr.done:
		return err
	case <-ctx.Done():
		return timeoutError(ctx.Err())
	}
}

// RefuseLeadership makes this store's replicas ignore leadership handovers
// from now on (a node shutting down hands its leaderships away and must
// not be given them back). Elections they win on their own are not
// prevented.
func (s *Store) RefuseLeadership() { s.refuseLeadership.Store(true) }

// Status returns the status of this node's replica of shard.
func (s *Store) Status(shard uint64) (ReplicaStatus, error) {
	r, err := s.replica(shard)
	if err != nil {
		return ReplicaStatus{}, err
	}
	return r.Status(), nil
}

// WaitLeader waits, at most until ctx ends, until this node's replica of
// shard knows a leader and its node (an election under way ends), and
// returns its status then: a request that found no leader can then be
// served or sent to the leader instead of failing. The status has no leader when ctx
// ended first, and is Removed when the replica was removed meanwhile.
func (s *Store) WaitLeader(ctx context.Context, shard uint64) (ReplicaStatus, error) {
	r, err := s.replica(shard)
	if err != nil {
		return ReplicaStatus{}, err
	}
	return r.waitLeader(ctx), nil
}

// ElectionTimeout is the least time a follower waits without hearing from
// its leader before it campaigns: ElectionTicks ticks.
func (s *Store) ElectionTimeout() time.Duration {
	return time.Duration(s.opts.ElectionTicks) * s.opts.TickInterval
}

// Serving checks, after a read of the engine, that this node still serves
// shard: its replica has not been removed (its data may have been deleted
// under the read), and has data. The second catches a replica removed and
// created again, empty, between the read's barrier and its read of the
// engine: the new one is not removed, but the read found the keys of the
// old one deleted. (A new replica that got its snapshot in between serves
// data from after the barrier, which a read may return.) A read must be
// discarded when it fails.
func (s *Store) Serving(shard uint64) error {
	st, err := s.Status(shard)
	if err != nil {
		return err
	}
	if st.Removed {
		return fmt.Errorf("%w: shard %d on node %d", ErrShardRemoved, shard, s.opts.NodeID)
	}
	if !st.Initialized {
		return fmt.Errorf("%w: shard %d's replica on node %d has no data yet", ErrShardNotFound, shard, s.opts.NodeID)
	}
	return nil
}

// Replicas returns the status of every replica, ordered by shard.
func (s *Store) Replicas() []ReplicaStatus {
	rs := s.replicaList()
	out := make([]ReplicaStatus, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Status())
	}
	slices.SortFunc(out, func(a, b ReplicaStatus) int { return cmpUint(a.ShardID, b.ShardID) })
	return out
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// HandleRaftBatch hands received messages to their replicas. A message for
// a replica this node does not have creates it empty when it comes from a
// leader (append, heartbeat) to a replica ID newer than any tombstone: that
// is how a learner joins. Other messages for unknown replicas are dropped.
func (s *Store) HandleRaftBatch(msgs []*shoalpb.RaftMessage) {
	if len(msgs) > 0 && msgs[0].FromNode != 0 {
		s.peers.heard(msgs[0].FromNode, time.Now())
	}
	full := -1 // unknown until a message carries entries
	for _, m := range msgs {
		if m.ShardId == 0 && m.Message == nil {
			continue // a keepalive (quiesce.go)
		}
		if m.Message.GetType() == raftpb.MsgApp && len(m.Message.GetEntries()) > 0 {
			if full < 0 {
				full = 0
				if s.opts.Space.Exhausted() {
					full = 1
				}
			}
			// The entries are looked at only on a node that is short of
			// space, not on every append.
			if full == 1 && carriesData(m.Message.GetEntries()) {
				// Lost, as far as Raft can tell: the leader sends the
				// entries again once this replica answers.
				s.stats.droppedDiskFull.Add(1)
				continue
			}
		}
		to := m.Message.GetTo()
		r, err := s.replica(m.ShardId)
		switch {
		case m.Message == nil || to == 0:
			r = nil
		case m.Removed:
			if err == nil && r.replicaID == to {
				r.enqueueRemoved(m.Epoch)
			}
			continue
		case err != nil:
			r = s.createForMessage(m)
		case r.replicaID != to:
			if to > r.replicaID {
				// This node's replica was removed and a newer one added
				// while it was away: the old one must go.
				r.enqueueRemoved(m.Epoch)
			}
			r = nil
		}
		if r != nil && r.enqueueMessage(m) {
			s.stats.received.Add(1)
		} else {
			s.stats.dropped.Add(1)
		}
	}
}

// carriesData reports whether any of ents has a payload. A node below half
// its disk reserve drops the appends that do, but takes those of empty
// entries only: a new leader's first entry of its term is one, and until a
// quorum has it the leader serves no reads, nor learns that writes cannot
// commit.
func carriesData(ents []*raftpb.Entry) bool {
	for _, e := range ents {
		if len(e.GetData()) > 0 {
			return true
		}
	}
	return false
}

func (s *Store) createForMessage(m *shoalpb.RaftMessage) *Replica {
	switch m.Message.GetType() {
	case raftpb.MsgApp, raftpb.MsgHeartbeat:
	default:
		return nil
	}
	if m.ShardId == 0 || m.ShardId > keys.MaxShardID {
		return nil
	}
	if err := s.admitReplica(m.ShardId, m.Message.GetTo(), m.Epoch); err != nil {
		return nil
	}
	r, err := s.replicaForSnapshot(m.ShardId, m.Message.GetTo())
	if err != nil {
		return nil
	}
	return r
}

// HandleUnreachable tells every replica that node cannot be reached, so Raft
// stops pipelining to its replicas until they answer.
func (s *Store) HandleUnreachable(node uint64) {
	for _, r := range s.replicaList() {
		r.reportUnreachableNode(node)
	}
}

func (s *Store) ticker() {
	defer s.done.Done()
	t := time.NewTicker(s.opts.TickInterval)
	defer t.Stop()
	var peers []uint64
	for ticks := 0; ; ticks++ {
		select {
		case <-s.stopC:
			return
		case now := <-t.C:
			rs := s.replicaList()
			s.sendKeepalives(rs, ticks, &peers)
			// Quiet replicas do not tick (quiesce.go).
			active := rs[:0]
			for _, r := range rs {
				if s.tickQuiet(r, now) {
					r.tickPending.Store(true)
					active = append(active, r)
				}
			}
			s.sched.enqueueAll(active)
		}
	}
}

func (s *Store) loop() {
	defer s.done.Done()
	var batch []*Replica
	for {
		batch = s.sched.take(batch[:0])
		if batch == nil {
			return
		}
		s.iterStart.Store(max(1, int64(time.Since(s.peers.start))))
		err := s.iterate(batch)
		s.iterStart.Store(0)
		if err != nil {
			s.fatal(err)
			return
		}
		clear(batch)
	}
}

// iterate processes one batch of replicas; see Store for the phases.
func (s *Store) iterate(rs []*Replica) error {
	s.stats.iterations.Add(1)
	if err := s.runPhase(rs, (*Replica).phase1); err != nil {
		return err
	}
	s.flushOutboxes()
	if f := s.opts.Knobs.BeforeLogCommit; f != nil && s.logBatch != nil {
		f()
	}
	if err := s.commitLog(); err != nil {
		return err
	}
	if err := s.runPhase(rs, (*Replica).phase3); err != nil {
		return err
	}
	s.flushOutboxes()
	return nil
}

// runPhase runs phase on every replica over the pool; each worker then
// commits what it applied and completes the waiters that unblocked. It
// returns the first error, which is fatal for the store.
func (s *Store) runPhase(rs []*Replica, phase func(*Replica, *worker) error) error {
	var first atomic.Pointer[error]
	fail := func(err error) { first.CompareAndSwap(nil, &err) }
	s.pool.run(len(rs), func(w *worker, i int) {
		if err := phase(rs[i], w); err != nil {
			if w.failed == nil {
				w.failed = err
			}
			fail(err)
		}
	}, func(w *worker) {
		failed := w.failed
		w.failed = nil
		if err := w.finishApply(failed); err != nil {
			fail(err)
		}
	})
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}

// stageLog runs fn with the shared log batch.
func (s *Store) stageLog(mustSync bool, fn func(b *storage.Batch) error) error {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if s.logBatch == nil {
		s.logBatch = s.eng.NewBatch()
	}
	s.logMustSync = s.logMustSync || mustSync
	s.logReplicas++
	err := fn(s.logBatch)
	if err != nil && s.logErr == nil {
		s.logErr = err
	}
	return err
}

// commitLog commits the shared log batch: one sync for every replica's
// entries and HardState of this iteration.
func (s *Store) commitLog() error {
	b, sync, n, staged := s.logBatch, s.logMustSync, s.logReplicas, s.logErr
	s.logBatch, s.logMustSync, s.logReplicas, s.logErr = nil, false, 0, nil
	if b == nil {
		return nil
	}
	defer b.Close()
	if staged != nil {
		// Half a truncation (its entries deleted, its state not moved)
		// would leave a gap in the log after a restart.
		return fmt.Errorf("raftstore: log batch dropped after a failed write: %w", staged)
	}
	if err := b.Commit(sync); err != nil {
		return fmt.Errorf("raftstore: log commit: %w", err)
	}
	if sync {
		s.stats.logSyncs.Add(1)
		s.stats.logSyncReplicas.Add(uint64(n))
		if f := s.opts.Knobs.AfterLogSync; f != nil {
			f(n)
		}
	}
	return nil
}

// flushOutboxes hands every worker's outgoing messages to the transport, one
// batch per destination node.
func (s *Store) flushOutboxes() {
	var merged map[uint64][]*shoalpb.RaftMessage
	for _, w := range s.pool.workers {
		if len(w.outbox) == 0 {
			continue
		}
		if merged == nil {
			merged = w.outbox
			w.outbox = map[uint64][]*shoalpb.RaftMessage{}
			continue
		}
		for to, msgs := range w.outbox {
			merged[to] = append(merged[to], msgs...)
		}
		clear(w.outbox)
	}
	for to, msgs := range merged {
		if err := s.opts.Transport.Send(to, msgs); err != nil {
			s.stats.dropped.Add(uint64(len(msgs)))
			s.reportUnreachable(msgs)
			continue
		}
		s.countSent(msgs)
	}
}

// reportUnreachable tells the senders of dropped messages that their peers
// are unreachable.
func (s *Store) reportUnreachable(msgs []*shoalpb.RaftMessage) {
	for _, m := range msgs {
		if r, err := s.replica(m.ShardId); err == nil {
			r.reportUnreachable(m.Message.GetTo())
		}
	}
}

// finishApply ends a phase on a worker: it commits the apply batch, tells
// the state machines, delivers the proposers' results, serves the reads
// that waited for the batch and destroys the replicas whose removal was
// applied. When a replica's phase failed (failed) or the commit does, the
// batch is dropped instead, since it may hold part of a replica's entries
// without its applied index, which a restart would apply again; nothing of
// it reaches the engine, the proposers are told the outcome is unknown
// (the entries are in the log), and the reads wait for the stopping store
// to fail them.
func (w *worker) finishApply(failed error) error {
	if b := w.apply; b != nil {
		w.apply = nil
		if failed == nil {
			if err := b.Commit(false); err != nil {
				failed = fmt.Errorf("raftstore: apply commit: %w", err)
			}
		}
		b.Close()
	}
	w.committed() // on failure the engine is unchanged: nothing stale to keep out
	for i, d := range w.results {
		if failed != nil {
			d.r = result{err: ambiguous(fmt.Errorf("%w: an apply on this node failed: %v", ErrStopped, failed))}
		}
		d.p.finish(d.r)
		w.results[i] = delivery{}
	}
	w.results = w.results[:0]
	if failed != nil {
		clear(w.applied)
		w.applied = w.applied[:0]
		clear(w.destroy)
		w.destroy = w.destroy[:0]
		return failed
	}
	for i, r := range w.applied {
		r.serveReads()
		w.applied[i] = nil
	}
	w.applied = w.applied[:0]
	// Replicas whose removal was applied go once nothing more will be
	// written for them.
	for i, r := range w.destroy {
		w.destroy[i] = nil
		if err := r.destroy(fmt.Errorf("%w: removed from the shard", ErrShardRemoved)); err != nil {
			return err
		}
	}
	w.destroy = w.destroy[:0]
	return nil
}

// committed tells the state machines that staged writes in the apply batch
// that it was committed (Committer).
func (w *worker) committed() {
	for i, c := range w.committers {
		c.Committed()
		w.committers[i] = nil
	}
	w.committers = w.committers[:0]
}

func (w *worker) applyBatch() *storage.Batch {
	if w.apply == nil {
		w.apply = w.store.eng.NewIndexedBatch()
	}
	return w.apply
}

// send queues r's messages for their nodes; quiesce marks them (they are
// the heartbeats that quiesce the followers, quiesce.go).
func (w *worker) send(r *Replica, msgs []*raftpb.Message, quiesce bool) {
	for _, m := range msgs {
		to := r.nodeOf(m.GetTo())
		if to == 0 {
			w.store.stats.dropped.Add(1)
			continue
		}
		switch m.GetType() {
		case raftpb.MsgSnap:
			r.sendSnapshot(m, to)
			continue
		case raftpb.MsgTimeoutNow:
			r.sentTimeoutNow(m.GetTerm())
		}
		w.outbox[to] = append(w.outbox[to], &shoalpb.RaftMessage{
			ShardId:  r.shardID,
			FromNode: w.store.opts.NodeID,
			ToNode:   to,
			Epoch:    r.desc.Epoch,
			Message:  m,
			Quiesce:  quiesce,
		})
	}
}

func unmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }
