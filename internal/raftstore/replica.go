package raftstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftlog"
	"github.com/shoaldb/shoal/internal/storage"
)

// Replica is one node's member of one shard's Raft group.
//
// Fields under "worker-owned" are touched only by the worker that processes
// the replica; the scheduler guarantees that is one goroutine at a time.
// Other goroutines hand it work through mu and read it through status.
type Replica struct {
	store     *Store
	shardID   uint64
	replicaID uint64
	log       *slog.Logger

	// queued is guarded by store.sched.mu.
	queued      bool
	tickPending atomic.Bool

	mu struct {
		sync.Mutex
		msgs        []*shoalpb.RaftMessage
		props       []*proposal
		reads       []*readRequest
		unreachable []uint64
		// snaps are received snapshots to hand to Raft.
		snaps []*incomingSnapshot
		// snapReports are outcomes of snapshots this replica sent.
		snapReports []snapReport
		// transfers are leadership transfers requested, and withdrawn.
		transfers []transferRequest
		// removedAt is the highest epoch at which a peer said this replica
		// was removed from the shard (0: none).
		removedAt uint64
		// gone is set when the replica is destroyed; it takes no more work.
		gone bool
		// checksums wait for a consistent view of the replica.
		checksums []*checksumRequest
	}

	// Worker-owned.
	//
	// initialized is false for a replica created empty to receive its first
	// snapshot: it has no descriptor range, no state machine data and no
	// configuration yet. destroyed is set once the replica was removed; a
	// destroyed replica is never processed again.
	initialized bool
	destroyed   bool
	raw         *raft.RawNode
	storage     *raftlog.Storage
	sm          StateMachine
	desc        *shoalpb.ShardDescriptor
	confState   *raftpb.ConfState
	leader      uint64
	state       raft.StateType
	// softState is the role the last Ready's SoftState gave: state may be
	// refreshed in between (before proposals and reads), and onSoftState
	// compares with this one, so that a replica that won its election in
	// the phase that refreshed state is still seen to become leader.
	softState raft.StateType
	term      uint64
	ticks     int
	// campaignAt, when positive, is the tick at which a freshly bootstrapped
	// replica campaigns, so the shard gets the leader its placement names
	// instead of waiting for a randomized election timeout.
	campaignAt int
	// jointTicks counts a leader's ticks in a joint configuration it could
	// have left (maybeLeaveJoint).
	jointTicks int
	applied    uint64
	// confIndex is the index of the last configuration change this replica
	// appended (at start, its last index: the log may hold one): until it
	// is applied, a leader tells its followers every commit at once (see
	// dropCommitNotices).
	confIndex uint64
	// proposals are the proposals in the log that have not been applied,
	// by ID and by log index.
	proposals map[proposalID]*proposal
	byIndex   map[uint64]*proposal
	// Reads wait in pendingReads for the next ReadIndex round, in
	// readBatches for its answer, in waitingReads for the apply.
	pendingReads []*readRequest
	readBatches  map[uint64]*readBatch
	waitingReads []*readRequest
	rd           raft.Ready
	hasReady     bool
	sentEarly    bool
	// applyAfterSync are committed entries of rd that rd itself appends;
	// they are applied in phase 3, once durable.
	applyAfterSync []*raftpb.Entry
	// justProposed are the proposals handed to Raft in this phase; each
	// must get an index from this Ready or has been dropped by Raft.
	justProposed []*proposal
	// proposeRun and proposeEnts are propose's scratch lists of the
	// proposals to hand Raft together and of their entries.
	proposeRun  []*proposal
	proposeEnts []*raftpb.Entry
	// heldProps are proposals that reached this leader while it was
	// handing its leadership over (Raft refuses proposals then). They wait
	// for the transfer to end: proposed if this replica still leads
	// (Raft abandons a transfer after an election timeout), failed with
	// the new leader once it has stepped down. Failing them at once would
	// name the transferee, which still names this replica until it wins,
	// and a Redis client would be sent back and forth between the two.
	heldProps []*proposal
	// transferee is, on a leader, the replica a leadership transfer in
	// Raft hands over to: set when one starts (here or by a follower's
	// MsgTransferLeader), refreshed from Raft while it is not 0, so that
	// the common case (no transfer) never asks Raft.
	transferee uint64
	// wantTransfer is a transfer asked for (TransferLeader) that is not
	// handed to Raft yet: its target is more than transferMaxLag entries
	// behind, and Raft would refuse every proposal until it caught up. It
	// is handed over once the target is close, or at tick
	// wantTransferBy whatever the lag (as etcd raft would have).
	// wantTerm is the term it was asked for in: a later term drops it.
	// wantTransferReq is the request that last asked for it, which alone
	// may withdraw it (TransferLeader, when its caller gives up).
	wantTransfer, wantTerm, wantTransferReq uint64
	wantTransferBy                          int
	// pendingSnaps are received snapshots stepped into Raft, waiting for
	// the Ready that restores one.
	pendingSnaps []*incomingSnapshot
	// removeAfterApply is set when an applied configuration no longer has
	// this replica; it is destroyed once the apply batch is committed.
	removeAfterApply bool
	// progress is the leader's view of its followers, refreshed on ticks.
	progress map[uint64]Progress
	// progressChanged: progress was replaced since the last publishStatus.
	progressChanged bool
	// senders maps replicas that sent messages here to their nodes.
	senders map[uint64]uint64

	// noLeaseTerm is a term in which this leader sent a transfer's target
	// MsgTimeoutNow: no lease is taken in it (lease.go).
	noLeaseTerm uint64

	// idleTicks counts a leader's ticks in a row with its shard idle;
	// quiesceNext asks that its next heartbeats quiesce (quiesce.go).
	// Worker-owned.
	idleTicks   int
	quiesceNext bool
	// quiet: the replica does not tick; quietLeaderNode is, on a quiet
	// follower, the node whose silence wakes it (quiesce.go).
	quiet           atomic.Bool
	quietLeaderNode atomic.Uint64

	// voteGuardUntil: (pre-)votes are ignored until then (lease.go). Set
	// before the replica is shared, immutable afterwards.
	voteGuardUntil time.Time

	status atomic.Pointer[ReplicaStatus]
	// statusWaiters counts the callers of Store.WaitLeader waiting on this
	// replica; while there are any, publishing a status closes
	// statusChanged (guarded by statusMu) to wake them.
	statusWaiters atomic.Int32
	statusMu      sync.Mutex
	statusChanged chan struct{}
	// lease is the leader's read lease, nil if none; leaseUsed is set when a
	// read was served under it; appliedPub is the applied index whose
	// writes are committed to the engine. Read by any goroutine.
	lease      atomic.Pointer[lease]
	leaseUsed  atomic.Bool
	appliedPub atomic.Uint64
	// commitPub is the commit index a leader has told (or is about to
	// tell) its followers; lease reads wait until it is applied (lease.go).
	commitPub atomic.Uint64
}

func (s *Store) newReplica(st *shoalpb.LocalReplicaState) (*Replica, error) {
	desc := st.Shard
	rs, err := raftlog.Load(s.eng, desc.ShardId, s.opts.EntryCacheBytes)
	if err != nil {
		return nil, err
	}
	r := s.makeReplica(desc.ShardId, st.ReplicaId, rs)
	r.initialized = true
	r.desc = desc
	r.sm = s.opts.NewStateMachine(desc)
	if err := r.startRaft(); err != nil {
		return nil, err
	}
	return r, nil
}

// newEmptyReplica returns an uninitialized replica that waits for the
// snapshot a leader will send it. It has no state on disk until then.
func (s *Store) newEmptyReplica(shard, replicaID uint64) (*Replica, error) {
	rs, err := raftlog.NewEmpty(s.eng, shard, s.opts.EntryCacheBytes)
	if err != nil {
		return nil, err
	}
	r := s.makeReplica(shard, replicaID, rs)
	r.desc = &shoalpb.ShardDescriptor{ShardId: shard}
	if err := r.startRaft(); err != nil {
		return nil, err
	}
	return r, nil
}

func (s *Store) makeReplica(shard, replicaID uint64, rs *raftlog.Storage) *Replica {
	applied := rs.Applied()
	r := &Replica{
		store:       s,
		shardID:     shard,
		replicaID:   replicaID,
		log:         s.log.With("shard", shard, "replica", replicaID),
		storage:     rs,
		confState:   applied.GetConfState(),
		applied:     applied.Index,
		proposals:   map[proposalID]*proposal{},
		byIndex:     map[uint64]*proposal{},
		readBatches: map[uint64]*readBatch{},
	}
	rs.SetSnapshotter(r.raftSnapshot)
	return r
}

func (r *Replica) startRaft() error {
	o := &r.store.opts
	raw, err := raft.NewRawNode(&raft.Config{
		ID:                        r.replicaID,
		ElectionTick:              o.ElectionTicks,
		HeartbeatTick:             o.HeartbeatTicks,
		Storage:                   r.storage,
		Applied:                   r.applied,
		MaxSizePerMsg:             o.MaxSizePerMsg,
		MaxCommittedSizePerReady:  4 * o.MaxSizePerMsg,
		MaxUncommittedEntriesSize: o.MaxUncommittedBytes,
		MaxInflightMsgs:           o.MaxInflightMsgs,
		CheckQuorum:               true,
		PreVote:                   true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		DisableProposalForwarding: true,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{r.log},
	})
	if err != nil {
		return fmt.Errorf("raftstore: shard %d: %w", r.shardID, err)
	}
	r.raw = raw
	r.term = r.storage.HardState().GetTerm()
	// The log past the applied index may hold a configuration change.
	r.confIndex = math.MaxUint64
	if last, err := r.storage.LastIndex(); err == nil {
		r.confIndex = last
	}
	r.appliedPub.Store(r.applied)
	if o.ReadLease > 0 && r.term > raftlog.InitialIndex {
		// It may have acknowledged a heartbeat of a leader whose lease
		// runs on (lease.go). Not in the bootstrap term, which no leader
		// ever has (an election raises the term): a bootstrapped replica
		// must not ignore the first campaign.
		r.voteGuardUntil = time.Now().Add(time.Duration(o.ElectionTicks) * o.TickInterval)
	}
	r.publishStatus()
	return nil
}

// Status returns a snapshot of the replica's state.
func (r *Replica) Status() ReplicaStatus { return *r.status.Load() }

func (r *Replica) publishStatus() {
	entries, bytes := r.storage.LogSize()
	role, leaderNode := roleOf(r.state), r.nodeOf(r.leader)
	quiet := r.quiet.Load()
	if r.transferee != 0 {
		r.refreshTransferee()
	}
	if cur := r.status.Load(); cur != nil && !r.progressChanged && cur.Role == role && cur.Term == r.term && cur.Quiet == quiet && cur.LeadTransferee == r.transferee &&
		cur.LeaderReplica == r.leader && cur.LeaderNode == leaderNode && cur.Applied == r.applied &&
		cur.Initialized == r.initialized && cur.Removed == r.destroyed && cur.Descriptor == r.desc &&
		cur.LogEntries == entries && cur.LogBytes == bytes && (cur.Progress != nil) == (r.state == raft.StateLeader) {
		// Nothing changed (an idle replica's tick): keep the published
		// status rather than allocate an equal one.
		return
	}
	r.progressChanged = false
	st := &ReplicaStatus{
		ShardID:        r.shardID,
		ReplicaID:      r.replicaID,
		Role:           role,
		Term:           r.term,
		LeaderReplica:  r.leader,
		LeaderNode:     leaderNode,
		Applied:        r.applied,
		Initialized:    r.initialized,
		Removed:        r.destroyed,
		Descriptor:     r.desc,
		Quiet:          quiet,
		LeadTransferee: r.transferee,
	}
	if r.state == raft.StateLeader {
		st.Progress = r.progress
	}
	st.LogEntries, st.LogBytes = entries, bytes
	r.status.Store(st)
	if r.statusWaiters.Load() > 0 {
		r.statusMu.Lock()
		if r.statusChanged != nil {
			close(r.statusChanged)
			r.statusChanged = nil
		}
		r.statusMu.Unlock()
	}
}

// waitLeader waits until the replica knows a leader and its node (what
// routing needs) or is removed, or ctx ends, and returns its last status.
// The waiter is counted before the status is read, so a status published
// after that read sees it and wakes it.
func (r *Replica) waitLeader(ctx context.Context) ReplicaStatus {
	r.statusWaiters.Add(1)
	defer r.statusWaiters.Add(-1)
	for first := true; ; first = false {
		r.statusMu.Lock()
		if r.statusChanged == nil {
			r.statusChanged = make(chan struct{})
		}
		changed := r.statusChanged
		r.statusMu.Unlock()
		st := r.Status()
		if st.LeaderNode != 0 || st.Removed {
			return st
		}
		if first {
			r.store.stats.leaderWaits.Add(1)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return st
		}
	}
}

// refreshProgress takes a fresh copy of the leader's view of its followers
// for Status.
func (r *Replica) refreshProgress() {
	same := len(r.progress) > 0
	n := 0
	r.raw.WithProgress(func(id uint64, typ raft.ProgressType, pr tracker.Progress) {
		n++
		if old, ok := r.progress[id]; !ok || old.Match != pr.Match || old.State != progressState(pr.State) || old.Learner != (typ == raft.ProgressTypeLearner) {
			same = false
		}
	})
	if same && n == len(r.progress) {
		return // an idle leader's tick: the published copy is current
	}
	p := make(map[uint64]Progress, len(r.desc.Replicas))
	r.raw.WithProgress(func(id uint64, typ raft.ProgressType, pr tracker.Progress) {
		p[id] = Progress{Match: pr.Match, State: progressState(pr.State), Learner: typ == raft.ProgressTypeLearner}
	})
	r.progress, r.progressChanged = p, true
}

// progressState names a member's replication state as Progress.State
// documents it.
func progressState(s tracker.StateType) string {
	switch s {
	case tracker.StateProbe:
		return "probe"
	case tracker.StateReplicate:
		return "replicate"
	case tracker.StateSnapshot:
		return "snapshot"
	}
	return s.String()
}

func roleOf(s raft.StateType) Role {
	switch s {
	case raft.StateLeader:
		return RoleLeader
	case raft.StateCandidate:
		return RoleCandidate
	case raft.StatePreCandidate:
		return RolePreCandidate
	}
	return RoleFollower
}

// nodeOf returns the node of a replica of this shard, 0 if unknown: from
// the descriptor, or for a replica not in it (an empty replica knows no
// descriptor yet) from the messages received from it.
func (r *Replica) nodeOf(replicaID uint64) uint64 {
	if n := nodeOf(r.desc, replicaID); n != 0 {
		return n
	}
	return r.senders[replicaID]
}

func nodeOf(desc *shoalpb.ShardDescriptor, replicaID uint64) uint64 {
	if replicaID == 0 {
		return 0
	}
	for _, rd := range desc.Replicas {
		if rd.ReplicaId == replicaID {
			return rd.NodeId
		}
	}
	return 0
}

// notLeader returns the error for a request that needs the leader.
func (r *Replica) notLeader(leader uint64) error { return notLeaderError(r.desc, leader) }

func notLeaderError(desc *shoalpb.ShardDescriptor, leader uint64) error {
	if leader == 0 {
		return fmt.Errorf("%w: shard %d", ErrNoLeader, desc.ShardId)
	}
	return &NotLeaderError{Shard: desc.ShardId, LeaderReplica: leader, LeaderNode: nodeOf(desc, leader)}
}

func (r *Replica) enqueueProposal(p *proposal) error {
	// Fail fast when this replica is known not to lead; the worker checks
	// again with authority before proposing.
	if st := r.status.Load(); st.Role != RoleLeader {
		return notLeaderError(st.Descriptor, st.LeaderReplica)
	}
	return enqueue(r, &r.mu.props, p, "proposals")
}

func (r *Replica) enqueueRead(rr *readRequest) error {
	return enqueue(r, &r.mu.reads, rr, "reads")
}

// enqueue appends v to the queue q (a field under r.mu), refusing when the
// store is stopping or the queue is at its bound, and schedules r.
func enqueue[T any](r *Replica, q *[]T, v T, what string) error {
	r.mu.Lock()
	if r.store.stopping.Load() {
		r.mu.Unlock()
		return fmt.Errorf("%w: shard %d", ErrStopped, r.shardID)
	}
	if r.mu.gone {
		r.mu.Unlock()
		return fmt.Errorf("%w: shard %d on node %d (replica removed)", ErrShardNotFound, r.shardID, r.store.opts.NodeID)
	}
	if n := len(*q); n >= r.store.opts.MaxQueuedProposals {
		r.mu.Unlock()
		return fmt.Errorf("%w: shard %d has %d %s queued", ErrOverloaded, r.shardID, n, what)
	}
	*q = append(*q, v)
	r.mu.Unlock()
	r.store.sched.enqueue(r)
	return nil
}

func (r *Replica) enqueueMessage(m *shoalpb.RaftMessage) bool {
	r.mu.Lock()
	if r.mu.gone || len(r.mu.msgs) >= r.store.opts.MaxQueuedMessages {
		r.mu.Unlock()
		return false
	}
	r.mu.msgs = append(r.mu.msgs, m)
	r.mu.Unlock()
	r.store.sched.enqueue(r)
	return true
}

// enqueueRemoved records that a peer at epoch said this replica was removed.
func (r *Replica) enqueueRemoved(epoch uint64) {
	r.mu.Lock()
	r.mu.removedAt = max(r.mu.removedAt, epoch)
	r.mu.Unlock()
	r.store.sched.enqueue(r)
}

func (r *Replica) reportUnreachable(replicaID uint64) {
	r.mu.Lock()
	if !slices.Contains(r.mu.unreachable, replicaID) {
		r.mu.unreachable = append(r.mu.unreachable, replicaID)
	}
	r.mu.Unlock()
	r.store.sched.enqueue(r)
}

func (r *Replica) reportUnreachableNode(node uint64) {
	st := r.status.Load()
	if st.Role != RoleLeader {
		return
	}
	for _, rd := range st.Descriptor.Replicas {
		if rd.NodeId == node {
			r.reportUnreachable(rd.ReplicaId)
		}
	}
}

// phase1 does everything up to the group commit; see Store.
func (r *Replica) phase1(w *worker) error {
	r.hasReady, r.sentEarly = false, false
	if r.destroyed {
		return nil
	}
	r.mu.Lock()
	msgs, props, reads, unreachable := r.mu.msgs, r.mu.props, r.mu.reads, r.mu.unreachable
	snaps, reports, transfers, removedAt := r.mu.snaps, r.mu.snapReports, r.mu.transfers, r.mu.removedAt
	checksums := r.mu.checksums
	r.mu.msgs, r.mu.props, r.mu.reads, r.mu.unreachable = nil, nil, nil, nil
	r.mu.snaps, r.mu.snapReports, r.mu.transfers, r.mu.removedAt = nil, nil, nil, 0
	r.mu.checksums = nil
	r.mu.Unlock()
	r.takeChecksums(checksums)
	if r.quiet.Load() && (r.peerSilent(time.Now()) || removedAt > 0 || len(props)+len(reads)+len(snaps)+len(reports)+len(unreachable)+len(transfers)+len(checksums) > 0 || anyWakes(msgs)) {
		r.unquiesce()
	}

	if removedAt > r.desc.Epoch {
		// A peer has applied a newer configuration without this replica.
		// Replica IDs are never reused, so this replica can never be a
		// member again; it missed its removal (it was down or cut off) and
		// would otherwise campaign forever.
		r.log.Info("removed from the shard by a newer configuration", "epoch", r.desc.Epoch, "peer_epoch", removedAt)
		// Hand back what was taken, so that destroy fails every waiter.
		r.mu.Lock()
		r.mu.props = append(props, r.mu.props...)
		r.mu.reads = append(reads, r.mu.reads...)
		r.mu.snaps = append(snaps, r.mu.snaps...)
		r.mu.Unlock()
		return r.destroy(fmt.Errorf("%w: removed from the shard", ErrShardRemoved))
	}
	for _, m := range msgs {
		r.step(w, m)
		// Not with reads taken in this phase: they go out below, and a
		// quiet replica would not ask again for one whose request was lost
		// (retryReads runs on ticks).
		if m.Quiesce && len(reads) == 0 {
			r.maybeQuiesceFollower(m)
		}
	}
	for _, sn := range snaps {
		r.stepSnapshot(sn)
	}
	for _, rep := range reports {
		status := raft.SnapshotFinish
		if rep.failed {
			status = raft.SnapshotFailure
		}
		r.raw.ReportSnapshot(rep.to, status)
	}
	for _, id := range unreachable {
		r.raw.ReportUnreachable(id)
	}
	for _, tr := range transfers {
		if tr.cancel {
			// Its caller gave up: a transfer not yet handed to Raft is
			// dropped, unless a later request wants it.
			if r.wantTransfer != 0 && r.wantTransferReq == tr.id {
				r.wantTransfer = 0
				r.store.stats.transfersCancelled.Add(1)
			}
			continue
		}
		r.revokeLease()
		r.store.stats.transfersRequested.Add(1)
		if tr.to != r.wantTransfer {
			// A repeated request keeps its deadline.
			r.wantTransfer, r.wantTransferBy = tr.to, r.ticks+r.store.opts.ElectionTicks
		}
		r.wantTransferReq = tr.id
		r.wantTerm = r.raw.BasicStatus().GetTerm()
	}
	if r.tickPending.Swap(false) {
		r.tick()
	}
	if r.wantTransfer != 0 {
		r.maybeStartTransfer()
	}
	if len(r.heldProps) > 0 {
		// Held first: they arrived before this phase's proposals.
		props = append(r.heldProps, props...)
		r.heldProps = nil
	}
	if len(props) > 0 || len(reads) > 0 {
		// The steps above may have changed the leader; proposals and reads
		// must see that now, not at the next Ready's SoftState.
		bs := r.raw.BasicStatus()
		r.leader, r.state = bs.Lead, bs.RaftState
	}
	r.propose(props)
	r.pendingReads = append(r.pendingReads, reads...)
	r.issueReads()

	if !r.raw.HasReady() {
		return nil
	}
	rd := r.raw.Ready()
	r.rd, r.hasReady = rd, true
	if rd.SoftState != nil {
		r.onSoftState(rd.SoftState)
	}
	if rd.HardState != nil {
		r.term = rd.HardState.GetTerm()
		// Before this Ready's messages carry the commit index to the
		// followers (lease.go).
		r.commitPub.Store(rd.HardState.GetCommit())
	}
	r.indexProposals(rd.Entries)
	r.dropUnindexed()
	r.dropOverwritten(rd.Entries)
	if !raft.IsEmptySnap(rd.Snapshot) {
		// Etcd raft's order: the snapshot is persisted before the entries
		// and HardState that follow it.
		if err := r.applySnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	r.noteConfChanges(rd.Entries)
	if r.state == raft.StateLeader {
		// Filtered in place: r.rd must not keep the old length.
		rd.Messages = r.dropCommitNotices(rd.Messages)
		r.rd.Messages = rd.Messages
		w.send(r, rd.Messages, r.maybeQuiesceLeader(&rd))
		r.sentEarly = true
	}
	hs := rd.HardState
	if hs != nil && r.storage.CommitOnly(hs) {
		hs = nil // only the commit index moved: nothing to write
	}
	if len(rd.Entries) > 0 || hs != nil {
		err := r.store.stageLog(rd.MustSync, func(b *storage.Batch) error {
			if err := r.storage.Append(b, rd.Entries); err != nil {
				return err
			}
			if hs != nil {
				return r.storage.SetHardState(b, hs)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("raftstore: shard %d: stage log: %w", r.shardID, err)
		}
	}
	for _, rs := range rd.ReadStates {
		r.onReadState(rs)
	}
	// In synchronous-storage mode Raft may hand out committed entries that
	// this same Ready is appending (a follower learns entries and their
	// commit in one message). Those may be applied only after the group
	// commit has made them durable, in phase 3; everything before the new
	// entries was synced in an earlier iteration and is applied now.
	committed := rd.CommittedEntries
	if len(rd.Entries) > 0 {
		first := rd.Entries[0].GetIndex()
		split := len(committed)
		for i, e := range committed {
			if e.GetIndex() >= first {
				split = i
				break
			}
		}
		committed, r.applyAfterSync = committed[:split], committed[split:]
	}
	if err := r.apply(w, committed); err != nil {
		return err
	}
	if len(rd.ReadStates) > 0 || len(committed) > 0 || !raft.IsEmptySnap(rd.Snapshot) {
		w.applied = append(w.applied, r)
	}
	if len(r.pendingSnaps) > 0 {
		r.discardSnapshots(r.applied)
	}
	return nil
}

// step hands one received message to Raft, after checking it is meant for
// this incarnation of the replica and comes from a current member.
func (r *Replica) step(w *worker, m *shoalpb.RaftMessage) {
	from := m.Message.GetFrom()
	if r.initialized && m.Epoch < r.desc.Epoch && !r.inDescriptor(from) {
		// The sender was removed in a configuration it has not applied
		// (it was down or cut off): tell it, so it destroys itself instead
		// of campaigning forever.
		w.sendRemoved(r, m.FromNode, from)
		return
	}
	if from != 0 && m.FromNode != 0 && r.senders[from] != m.FromNode {
		if r.senders == nil {
			r.senders = map[uint64]uint64{}
		}
		r.senders[from] = m.FromNode
	}
	switch m.Message.GetType() {
	case raftpb.MsgReadIndex:
		if r.readIndexTooEarly() {
			return // the replica asks again (ReadRetryTicks)
		}
	case raftpb.MsgTransferLeader:
		r.revokeLease()
	case raftpb.MsgVote, raftpb.MsgPreVote:
		if r.ignoreVote(m.Message) {
			return
		}
	}
	if m.Message.GetType() == raftpb.MsgTimeoutNow && r.store.refuseLeadership.Load() {
		// Going away: a leader handing over to us (the scheduler balancing
		// leaders back) would make us leave as a leader again.
		return
	}
	// Errors are messages from peers Raft no longer knows; drop them.
	_ = r.raw.Step(m.Message)
	if m.Message.GetType() == raftpb.MsgTransferLeader {
		// A follower asked for a transfer: Raft may run one now.
		r.refreshTransferee()
	}
}

// readIndexTooEarly reports whether this replica leads as its shard's only
// voter and has not committed an entry of its term yet. etcd raft answers
// another replica's ReadIndex (a learner's) at once with its commit index
// then, before the check it makes with more voters; after a power loss that
// index can be below a write this leader acknowledged before it, and the
// learner would serve a read without it. onSoftState covers this leader's
// own reads the same way.
func (r *Replica) readIndexTooEarly() bool {
	if len(r.confState.Voters) != 1 || len(r.confState.VotersOutgoing) != 0 {
		return false
	}
	st := r.raw.BasicStatus()
	if st.RaftState != raft.StateLeader {
		return false
	}
	t, err := r.storage.Term(st.GetCommit())
	return err != nil || t != st.GetTerm()
}

func (r *Replica) inDescriptor(replicaID uint64) bool {
	for _, rd := range r.desc.Replicas {
		if rd.ReplicaId == replicaID {
			return true
		}
	}
	return false
}

// tick advances Raft's clock and runs the periodic work of the replica.
func (r *Replica) tick() {
	r.raw.Tick()
	r.ticks++
	r.retryReads()
	r.trimEntryCache()
	if r.state == raft.StateLeader {
		r.refreshProgress()
		r.renewLease(time.Now())
		r.quiesceTick()
		if r.transferee != 0 {
			r.maybeAbortTransfer()
		}
		r.maybeLeaveJoint()
	}
	if r.ticks%truncateEveryTicks == 0 {
		r.maybeTruncateLog()
	}
	if r.campaignAt > 0 && r.ticks >= r.campaignAt {
		r.campaignAt = 0
		if r.raw.BasicStatus().Lead == 0 {
			_ = r.raw.Campaign()
		}
	}
}

// maybeLeaveJoint proposes leaving a joint configuration the leader has
// applied and not left for an election timeout. Raft proposes that itself
// when it applies the entry that entered it (a new leader, when it applies
// its first entry), but drops the proposal while a leadership transfer runs
// and tries again only when it next applies an entry: after a transfer that
// failed on an idle shard, the shard would stay joint (refusing every later
// change, needing both majorities) until the next write. Waiting the
// timeout leaves Raft's own leave the time to appear in the log (confIndex
// learns of it a phase later).
func (r *Replica) maybeLeaveJoint() {
	if !IsJoint(r.desc) || r.confIndex > r.applied || r.refreshTransferee() != 0 {
		// Not joint, the leave (or another change) is in the log, or Raft
		// would drop it.
		r.jointTicks = 0
		return
	}
	if r.jointTicks++; r.jointTicks < r.store.opts.ElectionTicks {
		return
	}
	r.jointTicks = 0
	r.log.Info("proposing to leave the joint configuration", "epoch", r.desc.Epoch)
	// An empty ConfChangeV2 is the leave, as Raft's own. Raft makes it an
	// empty entry, without an error, if another change is pending.
	_ = r.raw.ProposeConfChange(&raftpb.ConfChangeV2{})
}

// phase3 runs after the group commit: the entries and HardState of this
// Ready are durable.
func (r *Replica) phase3(w *worker) error {
	if r.destroyed {
		return nil
	}
	if !r.hasReady {
		r.publishStatus()
		if r.hasInput() {
			r.store.sched.enqueue(r)
		}
		return nil
	}
	if !r.sentEarly {
		w.send(r, r.rd.Messages, false)
	}
	if len(r.applyAfterSync) > 0 {
		err := r.apply(w, r.applyAfterSync)
		r.applyAfterSync = nil
		if err != nil {
			return err
		}
		w.applied = append(w.applied, r)
	}
	if r.removeAfterApply {
		// Everything this replica wrote in this iteration is committed by
		// the end of the phase; destroy it then.
		w.destroy = append(w.destroy, r)
		r.rd, r.hasReady = raft.Ready{}, false
		return nil
	}
	r.raw.Advance(r.rd)
	r.rd, r.hasReady = raft.Ready{}, false
	r.publishStatus()
	if r.raw.HasReady() || r.hasInput() {
		r.store.sched.enqueue(r)
	}
	return nil
}

// hasInput reports whether reads are waiting to be issued again, or held
// proposals can go on: the transfer they waited for ended (it can end
// while a configuration change is applied, not only at a tick or a
// message).
func (r *Replica) hasInput() bool {
	return len(r.pendingReads) > 0 ||
		len(r.heldProps) > 0 && (r.state != raft.StateLeader || r.transferee == 0)
}

func (r *Replica) onSoftState(ss *raft.SoftState) {
	prev := r.softState
	wasLeader := prev == raft.StateLeader
	r.leader, r.state, r.softState = ss.Lead, ss.RaftState, ss.RaftState
	if ss.RaftState != raft.StateLeader {
		r.lease.Store(nil)
	}
	if wasLeader != (ss.RaftState == raft.StateLeader) || len(r.readBatches) > 0 {
		// Reads in flight were addressed to a leader that may be gone; ask
		// again. On a new leader, too: a sole voter's Raft answers a
		// ReadIndex at once with its commit index, even before it has
		// committed an entry of its term, and after a power loss that
		// index can be below an acknowledged write at the end of its log
		// (TestSoleVoterReadAfterCrash). Asked again in the next phase,
		// after the group commit made its first entry durable, Raft has
		// committed it.
		for id, b := range r.readBatches {
			r.pendingReads = append(r.pendingReads, b.reads...)
			delete(r.readBatches, id)
		}
	}
	if ss.RaftState == raft.StateLeader && !wasLeader {
		r.refreshProgress()
		r.store.stats.leaderships.Add(1)
		if f := r.store.opts.OnLeader; f != nil {
			f(r.shardID)
		}
	}
	if ss.RaftState == raft.StateCandidate && prev != raft.StateCandidate {
		r.store.stats.campaigns.Add(1)
	}
	r.log.Debug("raft state", "role", roleOf(ss.RaftState), "leader", ss.Lead)
}

// propose hands props to Raft in order, as few MsgProps as
// MaxUncommittedBytes allows (one, unless they are large), so that the
// leader appends them together and sends each follower one append for
// them and gets one answer: etcd raft sends an append after every MsgProp
// it steps, so a MsgProp each would cost an append and an answer per
// proposal. A configuration change is an entry like the others: Raft
// checks each in a MsgProp as it would alone.
func (r *Replica) propose(props []*proposal) {
	if len(props) == 0 {
		return
	}
	// Proposals go straight to heldProps while a transfer runs, without
	// asking Raft (which would refuse each, and log it).
	transferring := r.state == raft.StateLeader && r.transferee != 0 && r.refreshTransferee() != 0
	group, ents := r.proposeRun[:0], r.proposeEnts[:0]
	for _, p := range props {
		if err := p.ctx.Err(); err != nil {
			p.finish(result{err: timeoutError(err)})
			continue
		}
		if r.state != raft.StateLeader {
			p.finish(result{err: r.notLeader(r.leader)})
			continue
		}
		if transferring {
			r.hold(p)
			continue
		}
		e, err := p.entry()
		if err != nil {
			p.finish(result{err: fmt.Errorf("%w: shard %d: %v", ErrOverloaded, r.shardID, err)})
			continue
		}
		if !p.submit() {
			continue // its waiter gave up, and was told nothing was applied
		}
		group, ents = append(group, p), append(ents, e)
	}
	for rest, rents := group, ents; len(rest) > 0; {
		if transferring {
			for _, p := range rest {
				p.unsubmit()
				r.hold(p)
			}
			break
		}
		n := fitting(rents, r.store.opts.MaxUncommittedBytes)
		transferring = r.proposeGroup(rest[:n], rents[:n])
		rest, rents = rest[n:], rents[n:]
	}
	clear(group)
	clear(ents)
	r.proposeRun, r.proposeEnts = group[:0], ents[:0]
}

// fitting returns how many of the first entries of ents fit budget bytes
// of payload together, so that one MsgProp cannot take the uncommitted log
// further past its bound than one proposal could: at least one, as Raft
// accepts any one proposal into an empty uncommitted log.
func fitting(ents []*raftpb.Entry, budget uint64) int {
	n, size := 1, uint64(len(ents[0].GetData()))
	for n < len(ents) && size+uint64(len(ents[n].GetData())) <= budget {
		size += uint64(len(ents[n].GetData()))
		n++
	}
	return n
}

// proposeGroup hands group, submitted, to Raft as one MsgProp of their
// entries ents (Raft copies what it appends). A group Raft refuses (a
// leadership transfer began, or the uncommitted log is nearly full) is
// offered one by one; one proposal Raft refuses waits for the leadership
// transfer that runs, or fails as overloaded. It returns whether a
// transfer runs.
func (r *Replica) proposeGroup(group []*proposal, ents []*raftpb.Entry) (transferring bool) {
	err := r.raw.Step(&raftpb.Message{Type: raftpb.MsgProp.Enum(), From: &r.replicaID, Entries: ents})
	if err == nil {
		for _, p := range group {
			r.proposed(p)
		}
		return false
	}
	if len(group) > 1 {
		for i, p := range group {
			if transferring {
				p.unsubmit()
				r.hold(p)
				continue
			}
			transferring = r.proposeGroup(group[i:i+1], ents[i:i+1])
		}
		return transferring
	}
	p := group[0]
	p.unsubmit() // Raft has no entry of it
	if r.refreshTransferee() != 0 {
		// Raft refuses proposals while it hands leadership over (a
		// transfer a follower asked for): wait for it to end.
		r.hold(p)
		return true
	}
	p.finish(result{err: fmt.Errorf("%w: shard %d: %v", ErrOverloaded, r.shardID, err)})
	return false
}

// proposed records p, which Raft took.
func (r *Replica) proposed(p *proposal) {
	r.proposals[p.id] = p
	r.justProposed = append(r.justProposed, p)
	r.store.stats.proposals.Add(1)
}

// hold keeps p until the leadership transfer in flight ends (heldProps),
// up to MaxQueuedProposals held; beyond, p fails as overloaded, as when
// the queue to the worker is full.
func (r *Replica) hold(p *proposal) {
	if !p.held {
		if len(r.heldProps) >= r.store.opts.MaxQueuedProposals {
			p.finish(result{err: fmt.Errorf("%w: shard %d: %d proposals wait for a leadership transfer", ErrOverloaded, r.shardID, len(r.heldProps))})
			return
		}
		p.held = true
		r.store.stats.proposalsHeld.Add(1)
	}
	r.heldProps = append(r.heldProps, p)
}

// refreshTransferee reads from Raft whether a leadership transfer runs, and
// to whom (0: none, or not the leader).
func (r *Replica) refreshTransferee() uint64 {
	r.transferee = 0
	if bs := r.raw.BasicStatus(); bs.RaftState == raft.StateLeader {
		r.transferee = bs.LeadTransferee
	}
	return r.transferee
}

// transferMaxLag is how far behind the leader's log a transfer's target may
// be when the transfer is handed to Raft, which refuses proposals from then
// until the target has caught up and won (TiKV's
// leader_transfer_max_log_lag is 128 too).
const transferMaxLag = 128

// maybeStartTransfer hands the wanted transfer to Raft once its target is
// within transferMaxLag of the leader's log, or once wantTransferBy has
// come if the target still answers (the node's peer clock, not Raft's
// RecentActive, which CheckQuorum clears every election timeout) and can
// catch up from the log (not waiting for a snapshot). Otherwise it gives
// the transfer up then, as Raft would after holding every write for an
// election timeout. It drops the transfer when this replica no longer
// leads in the term it was asked in, or the target is no longer a voter.
func (r *Replica) maybeStartTransfer() {
	to := r.wantTransfer
	st := r.raw.Status()
	pr, ok := st.Progress[to]
	if st.RaftState != raft.StateLeader || st.GetTerm() != r.wantTerm || !ok || pr.IsLearner || to == r.replicaID {
		r.wantTransfer = 0
		return
	}
	if last := st.Progress[r.replicaID].Match; pr.Match+transferMaxLag < last {
		if r.ticks < r.wantTransferBy {
			return
		}
		silence := r.store.peers.silence(r.nodeOf(to), time.Now())
		if silence >= r.store.ElectionTimeout() || pr.State == tracker.StateSnapshot {
			r.wantTransfer = 0
			r.store.stats.transfersGivenUp.Add(1)
			r.log.Info("leadership transfer given up: the target is behind and silent or needs a snapshot", "to", to,
				"match", pr.Match, "last", last, "silence", silence, "state", pr.State.String())
			return
		}
	}
	r.wantTransfer = 0
	r.store.stats.transfersStarted.Add(1)
	// A lease granted since the transfer was asked for goes too (and
	// sending MsgTimeoutNow drops any later one, lease.go).
	r.revokeLease()
	r.raw.TransferLeader(to)
	r.refreshTransferee()
}

// maybeAbortTransfer ends the transfer Raft runs when nothing has been
// heard from its target's node for half an election timeout (a live node
// answers every heartbeat, every two ticks): Raft would hold every write
// until a full election timeout had passed. A target already told to
// campaign may still win, as after any transfer; this leader takes no
// lease for the rest of the term either way (lease.go).
func (r *Replica) maybeAbortTransfer() {
	to := r.refreshTransferee()
	if to == 0 {
		return
	}
	silence := r.store.peers.silence(r.nodeOf(to), time.Now())
	if silence < r.store.ElectionTimeout()/2 {
		return
	}
	r.raw.TransferLeader(r.replicaID) // to itself: aborts the transfer
	r.refreshTransferee()
	r.store.stats.transfersAborted.Add(1)
	r.log.Info("leadership transfer aborted: nothing heard from the target", "to", to, "silence", silence)
}

// entryProposal returns the proposal ID an entry carries, if any, and for
// normal entries the command.
func entryProposal(e *raftpb.Entry) (id proposalID, cmd []byte, cc *raftpb.ConfChangeV2, ok bool) {
	switch e.GetType() {
	case raftpb.EntryNormal:
		id, cmd, ok = decodeEntry(e.GetData())
		return id, cmd, nil, ok
	case raftpb.EntryConfChangeV2:
		cc = &raftpb.ConfChangeV2{}
		if err := proto.Unmarshal(e.GetData(), cc); err != nil {
			return proposalID{}, nil, nil, false
		}
		id, _, ok = decodeEntry(cc.GetContext())
		return id, nil, cc, ok
	}
	return proposalID{}, nil, nil, false
}

// indexProposals records the log position of this node's new proposals.
func (r *Replica) indexProposals(ents []*raftpb.Entry) {
	if len(r.justProposed) == 0 {
		return
	}
	for _, e := range ents {
		id, _, _, ok := entryProposal(e)
		if !ok {
			continue
		}
		if p := r.proposals[id]; p != nil && p.index == 0 {
			p.index, p.term = e.GetIndex(), e.GetTerm()
			r.byIndex[p.index] = p
		}
	}
}

// dropUnindexed fails the proposals Raft accepted in this phase whose
// entries are not in the Ready: Raft replaced them with empty entries (it
// does so with a configuration change while another is pending), so they
// will never apply.
func (r *Replica) dropUnindexed() {
	for i, p := range r.justProposed {
		if p.index == 0 {
			delete(r.proposals, p.id)
			p.finish(result{err: fmt.Errorf("%w: shard %d: the leader dropped the proposal", ErrConfChangeInProgress, r.shardID)})
		}
		r.justProposed[i] = nil
	}
	r.justProposed = r.justProposed[:0]
}

// dropOverwritten fails the proposals whose entries ents replace: a new
// leader's entries that conflict with this replica's log truncate it from
// their first index, so an entry of ours at or after it can never commit.
func (r *Replica) dropOverwritten(ents []*raftpb.Entry) {
	if len(ents) == 0 || len(r.byIndex) == 0 {
		return
	}
	first := ents[0].GetIndex()
	if last, _ := r.storage.LastIndex(); first > last {
		return
	}
	for idx, p := range r.byIndex {
		if idx < first {
			continue
		}
		if i := idx - first; i < uint64(len(ents)) && ents[i].GetTerm() == p.term {
			continue
		}
		delete(r.byIndex, idx)
		delete(r.proposals, p.id)
		p.finish(result{err: fmt.Errorf("%w: shard %d index %d replaced", ErrLeadershipLost, r.shardID, idx)})
	}
}

// apply applies committed entries into the worker's apply batch and queues
// the proposers' results for delivery after the batch commits.
func (r *Replica) apply(w *worker, ents []*raftpb.Entry) (err error) {
	if len(ents) == 0 {
		return nil
	}
	b := w.applyBatch()
	cmds, owners := w.cmds[:0], w.owners[:0]
	// owner is the proposer of the entry being applied, once taken out of
	// the maps; owners, those of the commands not yet handed to the state
	// machine. On a failure they go with the worker's other results, which
	// finishApply tells that the outcome is unknown: out of the maps,
	// nothing else would ever answer them.
	var owner *proposal
	defer func() {
		if err == nil {
			return
		}
		for _, p := range append(owners, owner) {
			if p != nil {
				w.results = append(w.results, delivery{p: p, r: result{err: ambiguous(err)}})
			}
		}
		clear(owners)
	}()
	flush := func() error {
		if len(cmds) == 0 {
			return nil
		}
		res, err := r.sm.Apply(b, cmds)
		// Told even when Apply failed: it may have staged writes. (Told
		// once per Apply call; Committed is idempotent.)
		if c, ok := r.sm.(Committer); ok {
			w.committers = append(w.committers, c)
		}
		if err != nil {
			return fmt.Errorf("raftstore: shard %d: apply: %w", r.shardID, err)
		}
		if len(res) != len(cmds) {
			return fmt.Errorf("raftstore: shard %d: state machine returned %d results for %d commands", r.shardID, len(res), len(cmds))
		}
		for i, p := range owners {
			if p != nil {
				w.results = append(w.results, delivery{p: p, r: result{value: res[i]}})
			}
		}
		clear(cmds)
		clear(owners)
		cmds, owners = cmds[:0], owners[:0]
		return nil
	}
	for _, e := range ents {
		idx := e.GetIndex()
		id, cmd, cc, isProposal := entryProposal(e)
		owner = nil
		if p := r.byIndex[idx]; p != nil {
			delete(r.byIndex, idx)
			delete(r.proposals, p.id)
			if isProposal && p.id == id && p.term == e.GetTerm() {
				owner = p
			} else {
				w.results = append(w.results, delivery{p: p, r: result{err: fmt.Errorf(
					"%w: shard %d index %d", ErrLeadershipLost, r.shardID, idx)}})
			}
		}
		switch e.GetType() {
		case raftpb.EntryNormal:
			if isProposal {
				cmds = append(cmds, Command{Index: idx, Term: e.GetTerm(), Data: cmd})
				owners, owner = append(owners, owner), nil
			}
		case raftpb.EntryConfChange:
			return fmt.Errorf("raftstore: shard %d: unexpected v1 configuration change at %d", r.shardID, idx)
		case raftpb.EntryConfChangeV2:
			if err := flush(); err != nil {
				return err
			}
			if cc == nil {
				cc = &raftpb.ConfChangeV2{}
				if err := proto.Unmarshal(e.GetData(), cc); err != nil {
					return fmt.Errorf("raftstore: shard %d: configuration change at %d: %w", r.shardID, idx, err)
				}
			}
			res, err := r.applyConfChange(b, idx, cc)
			if err != nil {
				return err
			}
			if owner != nil {
				w.results = append(w.results, delivery{p: owner, r: res})
				owner = nil
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	w.cmds, w.owners = cmds, owners
	last := ents[len(ents)-1]
	r.applied = last.GetIndex()
	r.store.stats.applied.Add(uint64(len(ents)))
	return r.storage.SetApplied(b, &shoalpb.AppliedState{
		Index:     last.GetIndex(),
		Term:      last.GetTerm(),
		ConfState: r.confState,
	})
}

// trimEntryCache drops cached log entries nobody needs any more: applied
// here and, on a leader, acknowledged by every follower.
func (r *Replica) trimEntryCache() {
	upTo := r.applied
	if r.state == raft.StateLeader {
		r.raw.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
			if id != r.replicaID {
				upTo = min(upTo, pr.Match)
			}
		})
	}
	r.storage.TrimCache(upTo + 1)
}

// issueReads starts a ReadIndex round for the reads waiting for one.
func (r *Replica) issueReads() {
	if len(r.pendingReads) == 0 {
		return
	}
	if r.leader == 0 {
		err := r.notLeader(0)
		for _, rr := range r.pendingReads {
			rr.finish(err)
		}
		clear(r.pendingReads)
		r.pendingReads = r.pendingReads[:0]
		return
	}
	live := r.pendingReads[:0]
	for _, rr := range r.pendingReads {
		if err := rr.ctx.Err(); err != nil {
			rr.finish(timeoutError(err))
			continue
		}
		live = append(live, rr)
	}
	r.pendingReads = nil
	if len(live) == 0 {
		return
	}
	r.issueReadRound(live, time.Now())
}

// retryReads re-issues ReadIndex rounds that got no answer in time (the
// request or its answer was lost, or the leader changed).
func (r *Replica) retryReads() {
	for id, b := range r.readBatches {
		if r.ticks-b.issued >= r.store.opts.ReadRetryTicks {
			r.pendingReads = append(r.pendingReads, b.reads...)
			delete(r.readBatches, id)
		}
	}
}

func (r *Replica) onReadState(rs raft.ReadState) {
	if len(rs.RequestCtx) != 8 {
		return
	}
	id := binary.BigEndian.Uint64(rs.RequestCtx)
	b := r.readBatches[id]
	if b == nil {
		return
	}
	delete(r.readBatches, id)
	r.grantLease(b, rs.Index)
	for _, rr := range b.reads {
		rr.index = rs.Index
	}
	r.waitingReads = append(r.waitingReads, b.reads...)
}

// serveReads completes the reads whose index has been applied (and
// committed to the engine: the caller runs after the apply batch commits).
func (r *Replica) serveReads() {
	r.appliedPub.Store(r.applied)
	keep := r.waitingReads[:0]
	for _, rr := range r.waitingReads {
		if rr.index <= r.applied {
			rr.finish(nil)
		} else {
			keep = append(keep, rr)
		}
	}
	clear(r.waitingReads[len(keep):])
	r.waitingReads = keep
}

// failAll completes every waiter with err and deletes the files of the
// snapshots received for the replica. Only called where the replica's loop
// work cannot run concurrently: once the loop has stopped, or by the
// worker destroying the replica.
func (r *Replica) failAll(err error) {
	err = fmt.Errorf("%w: shard %d", err, r.shardID)
	r.mu.Lock()
	props, reads, checksums, snaps := r.mu.props, r.mu.reads, r.mu.checksums, r.mu.snaps
	r.mu.props, r.mu.reads, r.mu.checksums, r.mu.snaps = nil, nil, nil, nil
	r.mu.Unlock()
	for _, c := range checksums {
		close(c.done)
	}
	for _, in := range snaps {
		r.store.removeAll(in.dir)
	}
	// And those already stepped into Raft (the loop, which owns them, has
	// stopped).
	r.discardSnapshots(0)
	for _, p := range props {
		p.finish(result{err: err})
	}
	for _, p := range r.heldProps {
		p.finish(result{err: err}) // never handed to Raft
	}
	r.heldProps = nil
	for _, p := range r.proposals {
		p.finish(result{err: ambiguous(err)})
	}
	clear(r.proposals)
	clear(r.byIndex)
	for _, rr := range reads {
		rr.finish(err)
	}
	for _, rr := range r.pendingReads {
		rr.finish(err)
	}
	r.pendingReads = nil
	for id, b := range r.readBatches {
		for _, rr := range b.reads {
			rr.finish(err)
		}
		delete(r.readBatches, id)
	}
	for _, rr := range r.waitingReads {
		rr.finish(err)
	}
	r.waitingReads = nil
}

// noteConfChanges records the last configuration change among appended
// entries.
func (r *Replica) noteConfChanges(ents []*raftpb.Entry) {
	for _, e := range ents {
		if t := e.GetType(); t == raftpb.EntryConfChangeV2 || t == raftpb.EntryConfChange {
			r.confIndex = max(r.confIndex, e.GetIndex())
		}
	}
}

// dropCommitNotices removes from a leader's messages the appends that carry
// no entries to a follower that has acknowledged every entry sent to it
// (Match+1 == Next). etcd raft sends one to every follower each time the
// commit index advances, only to tell it; such a follower learns the index
// instead from the next append, or from the next heartbeat
// (HeartbeatTicks), which carries it up to the follower's match (a quiesce
// heartbeat does too). With writes that come one at a time per shard this
// saves about one message in five (docs/benchmarks.md). The price is
// latency only: a shard that stops writing has its last commit reach such
// followers up to a heartbeat later. A dropped notice still counts as sent
// in the follower's Progress (sentCommit), so raft does not send it again
// after the next acknowledgement either. TiKV's skip_bcast_commit skips
// these notices for every follower; this rule is narrower:
//
//   - A follower with entries in flight keeps its notice: to it an empty
//     append is also how the leader recovers an append lost on the way
//     (sent after a heartbeat answer; TestLostAppendRecovered), and the
//     notice spares its reads a heartbeat's wait for the index.
//   - While a configuration change may be appended and not applied here
//     (confIndex), every notice is sent: a removed replica must apply its
//     removal to learn it (TestRemovedFollowerToldAtOnce).
//
// The rule leans on how etcd raft v3.7 uses empty appends, not on its API:
// recheck it, and these tests, on a raft upgrade.
func (r *Replica) dropCommitNotices(msgs []*raftpb.Message) []*raftpb.Message {
	if r.confIndex > r.applied {
		return msgs
	}
	out := msgs[:0]
	for _, m := range msgs {
		if m.GetType() == raftpb.MsgApp && len(m.GetEntries()) == 0 && r.caughtUp(m.GetTo()) {
			continue
		}
		out = append(out, m)
	}
	if n := len(msgs) - len(out); n > 0 {
		r.store.stats.noticesDropped.Add(uint64(n)) // once per Ready, not per message
	}
	return out
}

// caughtUp reports whether the leader has replica id replicating with no
// entries unacknowledged (WithProgress hides the Inflights: Match+1 == Next
// says the same).
func (r *Replica) caughtUp(id uint64) bool {
	ok := false
	r.raw.WithProgress(func(pid uint64, _ raft.ProgressType, pr tracker.Progress) {
		if pid == id {
			ok = pr.State == tracker.StateReplicate && pr.Match+1 == pr.Next
		}
	})
	return ok
}
