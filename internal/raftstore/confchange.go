package raftstore

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/raft/v3/confchange"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// ChangeType is one kind of membership change.
type ChangeType int

// Membership changes. A new replica always joins as a learner: it receives a
// snapshot and catches up without counting towards any quorum, and is
// promoted once it has.
const (
	// AddLearner adds a new replica (a fresh replica ID on a node without
	// one) as a learner.
	AddLearner ChangeType = iota + 1
	// PromoteLearner makes a learner a voter.
	PromoteLearner
	// RemoveReplica removes a voter or a learner.
	RemoveReplica
	// DemoteVoter makes a voter a learner.
	DemoteVoter
)

func (t ChangeType) String() string {
	switch t {
	case AddLearner:
		return "add-learner"
	case PromoteLearner:
		return "promote"
	case RemoveReplica:
		return "remove"
	case DemoteVoter:
		return "demote"
	}
	return fmt.Sprintf("ChangeType(%d)", int(t))
}

// ReplicaChange is one change to a shard's membership.
type ReplicaChange struct {
	Type      ChangeType
	NodeID    uint64
	ReplicaID uint64
}

const (
	roleVoter    = shoalpb.ReplicaRole_REPLICA_ROLE_VOTER
	roleLearner  = shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER
	roleIncoming = shoalpb.ReplicaRole_REPLICA_ROLE_VOTER_INCOMING
	roleOutgoing = shoalpb.ReplicaRole_REPLICA_ROLE_VOTER_OUTGOING
	roleDemoting = shoalpb.ReplicaRole_REPLICA_ROLE_VOTER_DEMOTING
)

// IsJoint reports whether desc is a joint configuration, between the enter
// and leave entries of a change of several voters.
func IsJoint(desc *shoalpb.ShardDescriptor) bool {
	for _, r := range desc.Replicas {
		switch r.Role {
		case roleIncoming, roleOutgoing, roleDemoting:
			return true
		}
	}
	return false
}

// planChange returns the descriptor that applying changes to desc gives,
// and the Raft configuration change that makes it so. One change is simple;
// several go through joint consensus (Raft's automatic transition), whose
// joint descriptor marks the voters that come and go.
func planChange(desc *shoalpb.ShardDescriptor, changes []ReplicaChange) (*shoalpb.ShardDescriptor, *raftpb.ConfChangeV2, error) {
	if len(changes) == 0 {
		return nil, nil, fmt.Errorf("%w: no changes", ErrInvalidChange)
	}
	if IsJoint(desc) {
		return nil, nil, fmt.Errorf("%w: shard %d is in a joint configuration", ErrConfChangeInProgress, desc.ShardId)
	}
	joint := len(changes) > 1
	next := proto.Clone(desc).(*shoalpb.ShardDescriptor)
	next.Epoch++
	cc := &raftpb.ConfChangeV2{}
	seen := map[uint64]bool{}
	find := func(id uint64) (int, *shoalpb.ReplicaDescriptor) {
		for i, r := range next.Replicas {
			if r.ReplicaId == id {
				return i, r
			}
		}
		return -1, nil
	}
	for _, c := range changes {
		if c.ReplicaID == 0 || seen[c.ReplicaID] {
			return nil, nil, fmt.Errorf("%w: replica %d named twice or zero", ErrInvalidChange, c.ReplicaID)
		}
		seen[c.ReplicaID] = true
		i, cur := find(c.ReplicaID)
		single := &raftpb.ConfChangeSingle{NodeId: new(c.ReplicaID)}
		switch c.Type {
		case AddLearner:
			if cur != nil {
				return nil, nil, fmt.Errorf("%w: replica %d is already in shard %d", ErrInvalidChange, c.ReplicaID, desc.ShardId)
			}
			if c.NodeID == 0 {
				return nil, nil, fmt.Errorf("%w: replica %d has no node", ErrInvalidChange, c.ReplicaID)
			}
			for _, r := range next.Replicas {
				if r.NodeId == c.NodeID {
					return nil, nil, fmt.Errorf("%w: node %d already holds replica %d of shard %d", ErrInvalidChange, c.NodeID, r.ReplicaId, desc.ShardId)
				}
			}
			next.Replicas = append(next.Replicas, &shoalpb.ReplicaDescriptor{NodeId: c.NodeID, ReplicaId: c.ReplicaID, Role: roleLearner})
			single.Type = raftpb.ConfChangeAddLearnerNode.Enum()
		case PromoteLearner:
			if cur == nil || cur.Role != roleLearner {
				return nil, nil, fmt.Errorf("%w: replica %d is not a learner of shard %d", ErrInvalidChange, c.ReplicaID, desc.ShardId)
			}
			cur.Role = roleVoter
			if joint {
				cur.Role = roleIncoming
			}
			single.Type = raftpb.ConfChangeAddNode.Enum()
		case RemoveReplica:
			if cur == nil {
				return nil, nil, fmt.Errorf("%w: replica %d is not in shard %d", ErrInvalidChange, c.ReplicaID, desc.ShardId)
			}
			if joint && cur.Role == roleVoter {
				cur.Role = roleOutgoing
			} else {
				next.Replicas = slices.Delete(next.Replicas, i, i+1)
			}
			single.Type = raftpb.ConfChangeRemoveNode.Enum()
		case DemoteVoter:
			if cur == nil || cur.Role != roleVoter {
				return nil, nil, fmt.Errorf("%w: replica %d is not a voter of shard %d", ErrInvalidChange, c.ReplicaID, desc.ShardId)
			}
			cur.Role = roleLearner
			if joint {
				cur.Role = roleDemoting
			}
			single.Type = raftpb.ConfChangeAddLearnerNode.Enum()
		default:
			return nil, nil, fmt.Errorf("%w: unknown change %v", ErrInvalidChange, c.Type)
		}
		cc.Changes = append(cc.Changes, single)
	}
	if len(voters(leaveJoint(next))) == 0 {
		return nil, nil, fmt.Errorf("%w: the change leaves shard %d without voters", ErrInvalidChange, desc.ShardId)
	}
	// Every replica checks, as it applies the change, that the descriptor
	// and Raft agree on the membership, and stops if not (applyConfChange).
	// Ask Raft now what the change would make of the configuration: a
	// change it reads differently (several learner changes, which Raft
	// makes a joint configuration the descriptor does not describe) must
	// never reach the log, where it would stop every replica, again after
	// each restart.
	if got, err := raftConfAfter(desc, cc); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidChange, err)
	} else if want := ConfStateOf(next); !sameConfState(got, want) {
		return nil, nil, fmt.Errorf("%w: Raft would make shard %d's membership %v, not %v; make learner changes one at a time", ErrInvalidChange, desc.ShardId, got, want)
	}
	return next, cc, nil
}

// raftConfAfter returns the configuration etcd raft makes of desc's by
// applying cc, as ApplyConfChange would.
func raftConfAfter(desc *shoalpb.ShardDescriptor, cc *raftpb.ConfChangeV2) (*raftpb.ConfState, error) {
	chg := confchange.Changer{Tracker: tracker.MakeProgressTracker(1, 0), LastIndex: 1}
	cfg, trk, err := confchange.Restore(chg, ConfStateOf(desc))
	if err != nil {
		return nil, err
	}
	chg.Tracker.Config, chg.Tracker.Progress = cfg, trk
	if autoLeave, ok := cc.EnterJoint(); ok {
		cfg, trk, err = chg.EnterJoint(autoLeave, cc.Changes...)
	} else {
		cfg, trk, err = chg.Simple(cc.Changes...)
	}
	if err != nil {
		return nil, err
	}
	chg.Tracker.Config, chg.Tracker.Progress = cfg, trk
	return chg.Tracker.ConfState(), nil
}

// leaveJoint returns the descriptor after leaving the joint configuration
// desc (desc itself if it is not joint): incoming voters become voters,
// outgoing ones leave, demoting ones become learners. The epoch goes up by
// one when there was a joint configuration to leave.
func leaveJoint(desc *shoalpb.ShardDescriptor) *shoalpb.ShardDescriptor {
	if !IsJoint(desc) {
		return desc
	}
	next := proto.Clone(desc).(*shoalpb.ShardDescriptor)
	next.Epoch++
	next.Replicas = next.Replicas[:0]
	for _, r := range desc.Replicas {
		r := proto.Clone(r).(*shoalpb.ReplicaDescriptor)
		switch r.Role {
		case roleIncoming:
			r.Role = roleVoter
		case roleOutgoing:
			continue
		case roleDemoting:
			r.Role = roleLearner
		}
		next.Replicas = append(next.Replicas, r)
	}
	return next
}

func voters(desc *shoalpb.ShardDescriptor) []uint64 {
	var out []uint64
	for _, r := range desc.Replicas {
		if r.Role != roleLearner {
			out = append(out, r.ReplicaId)
		}
	}
	return out
}

// ConfStateOf returns the Raft configuration a descriptor stands for: in
// a joint configuration, Voters is the incoming majority's and
// VotersOutgoing the outgoing one's; otherwise VotersOutgoing is empty.
func ConfStateOf(desc *shoalpb.ShardDescriptor) *raftpb.ConfState {
	cs := &raftpb.ConfState{}
	joint := IsJoint(desc)
	for _, r := range desc.Replicas {
		switch r.Role {
		case roleVoter:
			cs.Voters = append(cs.Voters, r.ReplicaId)
			if joint {
				cs.VotersOutgoing = append(cs.VotersOutgoing, r.ReplicaId)
			}
		case roleLearner:
			cs.Learners = append(cs.Learners, r.ReplicaId)
		case roleIncoming:
			cs.Voters = append(cs.Voters, r.ReplicaId)
		case roleOutgoing:
			cs.VotersOutgoing = append(cs.VotersOutgoing, r.ReplicaId)
		case roleDemoting:
			cs.VotersOutgoing = append(cs.VotersOutgoing, r.ReplicaId)
			cs.LearnersNext = append(cs.LearnersNext, r.ReplicaId)
		}
	}
	return cs
}

func sameConfState(a, b *raftpb.ConfState) bool {
	eq := func(x, y []uint64) bool {
		x, y = slices.Clone(x), slices.Clone(y)
		slices.Sort(x)
		slices.Sort(y)
		return slices.Equal(x, y)
	}
	return eq(a.GetVoters(), b.GetVoters()) && eq(a.GetVotersOutgoing(), b.GetVotersOutgoing()) &&
		eq(a.GetLearners(), b.GetLearners()) && eq(a.GetLearnersNext(), b.GetLearnersNext())
}

// applyConfChange applies a committed configuration change: the new
// descriptor is staged in b with the applied state, and Raft's
// configuration follows. A change proposed against another epoch is
// rejected (not applied, by every replica alike) and its proposer told so.
func (r *Replica) applyConfChange(b *storage.Batch, index uint64, cc *raftpb.ConfChangeV2) (result, error) {
	var next *shoalpb.ShardDescriptor
	if cc.LeaveJoint() {
		next = leaveJoint(r.desc)
	} else {
		_, payload, ok := decodeEntry(cc.GetContext())
		next = &shoalpb.ShardDescriptor{}
		if !ok || proto.Unmarshal(payload, next) != nil {
			return result{}, fmt.Errorf("raftstore: shard %d: configuration change at %d has no descriptor", r.shardID, index)
		}
		if next.ShardId != r.shardID || next.Epoch != r.desc.Epoch+1 {
			r.log.Info("rejected a stale configuration change", "index", index, "epoch", r.desc.Epoch, "proposed_epoch", next.Epoch)
			return result{err: &EpochMismatchError{Current: r.desc}}, nil
		}
	}
	r.confState = r.raw.ApplyConfChange(cc)
	if want := ConfStateOf(next); !sameConfState(r.confState, want) {
		// INVARIANT: the descriptor and Raft agree on the membership.
		return result{}, fmt.Errorf("raftstore: shard %d: at %d the descriptor %v stands for %v but Raft has %v",
			r.shardID, index, next, want, r.confState)
	}
	if err := b.SetProto(keys.ReplicaStateKey(r.shardID), &shoalpb.LocalReplicaState{ReplicaId: r.replicaID, Shard: next}); err != nil {
		return result{}, err
	}
	r.log.Info("configuration changed", "index", index, "epoch", next.Epoch, "replicas", describeReplicas(next))
	r.desc = next
	if !r.inDescriptor(r.replicaID) {
		r.removeAfterApply = true
	}
	return result{value: next}, nil
}

func describeReplicas(desc *shoalpb.ShardDescriptor) string {
	s := ""
	for i, rd := range desc.Replicas {
		if i > 0 {
			s += " "
		}
		role := "voter"
		switch rd.Role {
		case roleLearner:
			role = "learner"
		case roleIncoming:
			role = "incoming"
		case roleOutgoing:
			role = "outgoing"
		case roleDemoting:
			role = "demoting"
		}
		s += fmt.Sprintf("%d@n%d:%s", rd.ReplicaId, rd.NodeId, role)
	}
	return s
}

// ChangeReplicas changes the membership of shard. It must be called on the
// shard's leader with the epoch of the descriptor the caller planned from;
// a different current epoch fails with an EpochMismatchError carrying the
// current descriptor, and nothing changes.
//
// One change is made directly. Several are made atomically through joint
// consensus: ChangeReplicas returns once the joint configuration has been
// left again and the final descriptor is applied here.
//
// A change that removes or demotes the leader's own replica first transfers
// leadership to another voter that stays, and then fails with a
// NotLeaderError naming it: call again there.
func (s *Store) ChangeReplicas(ctx context.Context, shard, epoch uint64, changes []ReplicaChange) (*shoalpb.ShardDescriptor, error) {
	r, err := s.replica(shard)
	if err != nil {
		return nil, err
	}
	st := r.Status()
	if st.Role != RoleLeader {
		return nil, notLeaderError(st.Descriptor, st.LeaderReplica)
	}
	desc := st.Descriptor
	if desc.Epoch != epoch {
		return nil, &EpochMismatchError{Current: desc}
	}
	for _, c := range changes {
		// A learner votes only once it has the log: promoting one that has
		// not even received its snapshot would let a replica with no state
		// count towards quorums.
		if c.Type == PromoteLearner && st.Progress[c.ReplicaID].Match == 0 {
			return nil, fmt.Errorf("%w: learner %d of shard %d", ErrNotCaughtUp, c.ReplicaID, shard)
		}
	}
	next, cc, err := planChange(desc, changes)
	if err != nil {
		return nil, err
	}
	if final := leaveJoint(next); !inVoters(final, st.ReplicaID) {
		target := pickTransferTarget(st, final)
		if target == 0 {
			return nil, fmt.Errorf("%w: no voter of shard %d to hand leadership to", ErrInvalidChange, shard)
		}
		if err := s.TransferLeader(ctx, shard, target); err != nil {
			return nil, err
		}
		return nil, &NotLeaderError{Shard: shard, LeaderReplica: target, LeaderNode: nodeOf(desc, target)}
	}
	payload, err := proto.Marshal(next)
	if err != nil {
		return nil, err
	}
	p := &proposal{
		id:   proposalID{node: s.opts.NodeID, seq: s.proposalSeq.Add(1)},
		ctx:  ctx,
		done: make(chan result, 1),
	}
	cc.Context = encodeEntry(p.id, payload)
	p.cc = cc
	if err := r.enqueueProposal(p); err != nil {
		return nil, err
	}
	res := p.wait(ctx)
	if res.err != nil {
		return nil, res.err
	}
	applied := res.value.(*shoalpb.ShardDescriptor)
	if !IsJoint(applied) {
		return applied, nil
	}
	// Raft proposes leaving the joint configuration by itself; wait for it.
	return s.waitDescriptor(ctx, r, func(d *shoalpb.ShardDescriptor) bool {
		return d.Epoch > applied.Epoch && !IsJoint(d)
	})
}

func inVoters(desc *shoalpb.ShardDescriptor, replicaID uint64) bool {
	return slices.Contains(voters(desc), replicaID)
}

// pickTransferTarget returns the voter of final (other than the leader)
// whose log is furthest along, 0 if none.
func pickTransferTarget(st ReplicaStatus, final *shoalpb.ShardDescriptor) uint64 {
	best, bestMatch := uint64(0), uint64(0)
	for _, id := range voters(final) {
		// Only a current voter can take over: a learner being promoted
		// by the same change cannot.
		if id == st.ReplicaID || !inVoters(st.Descriptor, id) {
			continue
		}
		if m := st.Progress[id].Match; best == 0 || m > bestMatch {
			best, bestMatch = id, m
		}
	}
	return best
}

// waitDescriptor polls the replica's descriptor until ok accepts it.
func (s *Store) waitDescriptor(ctx context.Context, r *Replica, ok func(*shoalpb.ShardDescriptor) bool) (*shoalpb.ShardDescriptor, error) {
	t := time.NewTicker(s.opts.TickInterval / 4)
	defer t.Stop()
	for {
		d := r.Status().Descriptor
		if ok(d) {
			return d, nil
		}
		select {
		case <-ctx.Done():
			return nil, ambiguous(timeoutError(ctx.Err()))
		case <-s.stopC:
			return nil, ambiguous(ErrStopped)
		case <-t.C:
		}
	}
}

// TransferLeader moves the leadership of shard to replica target. It must be
// called on the leader, and returns once target leads (as this replica sees
// it) or fails with ErrTransferFailed if Raft gave up (the target was not
// caught up within an election timeout, or is not a voter).
func (s *Store) TransferLeader(ctx context.Context, shard, target uint64) error {
	r, err := s.replica(shard)
	if err != nil {
		return err
	}
	st := r.Status()
	if st.LeaderReplica == target {
		return nil
	}
	if st.Role != RoleLeader {
		return notLeaderError(st.Descriptor, st.LeaderReplica)
	}
	if !inVoters(st.Descriptor, target) {
		return fmt.Errorf("%w: replica %d is not a voter of shard %d", ErrTransferFailed, target, shard)
	}
	id := s.proposalSeq.Add(1)
	if err := enqueue(r, &r.mu.transfers, transferRequest{id: id, to: target}, "transfers"); err != nil {
		return err
	}
	// The transfer is handed to Raft within an election timeout (once the
	// target is close, maybeStartTransfer), and Raft abandons it after
	// another; allow three.
	deadline := time.Now().Add(3 * time.Duration(s.opts.ElectionTicks) * s.opts.TickInterval)
	t := time.NewTicker(s.opts.TickInterval / 4)
	defer t.Stop()
	for {
		st := r.Status()
		if st.LeaderReplica == target {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: shard %d: replica %d did not take over (leader is %d)", ErrTransferFailed, shard, target, st.LeaderReplica)
		}
		select {
		case <-ctx.Done():
			// Withdraw the request if it still waits for its target to
			// catch up, so that the caller, told it failed, does not see
			// it happen later. One Raft already runs goes on (Raft
			// abandons it after an election timeout).
			_ = enqueue(r, &r.mu.transfers, transferRequest{id: id, cancel: true}, "transfers")
			return timeoutError(ctx.Err())
		case <-t.C:
		}
	}
}

// destroy removes the replica from this node: its data and Raft state are
// deleted and a tombstone keeps any late message from creating it again.
// Waiters fail with reason. Runs on the replica's worker, after every
// batch that wrote for it is committed.
func (r *Replica) destroy(reason error) error {
	// Readers that read the engine without the worker check the status
	// after reading (Store.Serving): publish the removal before the data
	// goes, so a read that might have seen it gone is told.
	r.destroyed = true
	r.lease.Store(nil)
	r.publishStatus()
	b := r.store.eng.NewBatch()
	defer b.Close()
	if r.initialized {
		defer r.store.beforeDataReset(r.desc)()
		if err := b.DeleteSpan(keys.DataSpan(r.desc.StartSlot, r.desc.EndSlot)); err != nil {
			return err
		}
		if err := b.DeleteSpan(keys.ExpirySpan(r.desc.StartSlot, r.desc.EndSlot)); err != nil {
			return err
		}
	}
	if err := b.DeleteSpan(keys.ShardRaftSpan(r.shardID)); err != nil {
		return err
	}
	tomb := &shoalpb.LocalReplicaState{Tombstone: true, TombstoneReplicaId: r.replicaID, Shard: r.desc}
	if err := b.SetProto(keys.ReplicaStateKey(r.shardID), tomb); err != nil {
		return err
	}
	if err := b.Commit(true); err != nil {
		return fmt.Errorf("raftstore: shard %d: destroy: %w", r.shardID, err)
	}
	r.store.removeReplica(r)
	r.mu.Lock()
	r.mu.gone = true
	r.mu.Unlock()
	r.failAll(reason) // and discards its received snapshots
	r.log.Info("replica removed", "epoch", r.desc.Epoch, "reason", reason)
	r.publishStatus()
	return nil
}

// sendRemoved tells replica to on node that the shard's configuration no
// longer has it.
func (w *worker) sendRemoved(r *Replica, node, to uint64) {
	if node == 0 {
		return
	}
	w.outbox[node] = append(w.outbox[node], &shoalpb.RaftMessage{
		ShardId:  r.shardID,
		FromNode: w.store.opts.NodeID,
		ToNode:   node,
		Epoch:    r.desc.Epoch,
		Removed:  true,
		Message:  &raftpb.Message{To: new(to), From: new(r.replicaID)},
	})
}
