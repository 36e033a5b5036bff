package node

import (
	"context"
	"fmt"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
)

// adminService runs the steps of the master's operators on this node's
// shard leaders.
type adminService struct {
	shoalpb.UnimplementedNodeAdminServer
	n *Node
}

// catchUpPoll is how often a promotion checks whether its learners have
// caught up.
const catchUpPoll = 20 * time.Millisecond

// RunStep implements shoalpb.NodeAdminServer. It returns once the step has
// taken effect on this replica, or fails with the reason; a step whose
// effect is already there succeeds without doing anything, so the master
// may resend a step whose answer it lost.
func (a *adminService) RunStep(ctx context.Context, req *shoalpb.RunStepRequest) (*shoalpb.RunStepResponse, error) {
	if c := req.GetClusterId(); c != "" && c != a.n.cfg.ClusterID {
		return nil, a.n.kvsvc.toStatus(&routeError{detail: &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER},
			msg: fmt.Sprintf("node %d is in cluster %q, not %q", a.n.cfg.NodeID, a.n.cfg.ClusterID, c)})
	}
	if id := req.GetNodeId(); id != 0 && id != a.n.cfg.NodeID {
		return nil, a.n.kvsvc.toStatus(&routeError{detail: &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE},
			msg: fmt.Sprintf("this is node %d, not node %d", a.n.cfg.NodeID, id)})
	}
	st := a.n.store
	shard := req.ShardId
	err := func() error {
		switch s := req.Step.GetStep().(type) {
		case *shoalpb.OperatorStep_AddLearner:
			_, err := st.ChangeReplicas(ctx, shard, req.Epoch, []raftstore.ReplicaChange{{
				Type: raftstore.AddLearner, NodeID: s.AddLearner.NodeId, ReplicaID: s.AddLearner.ReplicaId,
			}})
			return err
		case *shoalpb.OperatorStep_ChangeVoters:
			if err := a.waitCaughtUp(ctx, shard, s.ChangeVoters.Promote); err != nil {
				return err
			}
			var changes []raftstore.ReplicaChange
			for _, id := range s.ChangeVoters.Promote {
				changes = append(changes, raftstore.ReplicaChange{Type: raftstore.PromoteLearner, ReplicaID: id})
			}
			for _, id := range s.ChangeVoters.Remove {
				changes = append(changes, raftstore.ReplicaChange{Type: raftstore.RemoveReplica, ReplicaID: id})
			}
			_, err := st.ChangeReplicas(ctx, shard, req.Epoch, changes)
			return err
		case *shoalpb.OperatorStep_TransferLeader:
			return st.TransferLeader(ctx, shard, s.TransferLeader.ToReplica)
		case *shoalpb.OperatorStep_RemoveReplica:
			// Already gone at the epoch the master planned on: done (a
			// rollback confirming that a learner was never added).
			if cur, err := st.Status(shard); err == nil && cur.Role == raftstore.RoleLeader &&
				cur.Descriptor.GetEpoch() == req.Epoch && cur.Descriptor.Replica(s.RemoveReplica.ReplicaId) == nil {
				return nil
			}
			_, err := st.ChangeReplicas(ctx, shard, req.Epoch, []raftstore.ReplicaChange{{
				Type: raftstore.RemoveReplica, ReplicaID: s.RemoveReplica.ReplicaId,
			}})
			return err
		}
		return fmt.Errorf("%w: empty step", raftstore.ErrInvalidChange)
	}()
	if err != nil {
		return nil, a.n.kvsvc.toStatus(err)
	}
	s, err := st.Status(shard)
	if err != nil {
		return nil, a.n.kvsvc.toStatus(err)
	}
	return &shoalpb.RunStepResponse{Route: &shoalpb.ShardRoute{
		Shard: s.Descriptor, LeaderReplica: s.LeaderReplica, LeaderTerm: s.Term,
	}}, nil
}

// waitCaughtUp waits until every learner to promote has the log up to at
// least the leader's applied index when the wait began, so that it can
// vote without holding back commits. A learner that gets a snapshot shows
// no progress until the snapshot is in; the master's step timeout bounds
// the wait.
func (a *adminService) waitCaughtUp(ctx context.Context, shard uint64, learners []uint64) error {
	if len(learners) == 0 {
		return nil
	}
	st, err := a.n.store.Status(shard)
	if err != nil {
		return err
	}
	target := st.Applied
	t := time.NewTicker(catchUpPoll)
	defer t.Stop()
	for {
		st, err := a.n.store.Status(shard)
		if err != nil {
			return err
		}
		if st.Role != raftstore.RoleLeader {
			return &raftstore.NotLeaderError{Shard: shard, LeaderReplica: st.LeaderReplica, LeaderNode: st.LeaderNode}
		}
		behind := false
		for _, id := range learners {
			if p, ok := st.Progress[id]; ok && p.Match < target {
				behind = true
			}
		}
		if !behind {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: learners %v of shard %d not caught up to index %d", raftstore.ErrNotCaughtUp, learners, shard, target)
		case <-t.C:
		}
	}
}

// snapshotReports lists the snapshots this node is sending, for the
// master's view of operator progress.
func (n *Node) snapshotReports() []*shoalpb.SnapshotReport {
	var out []*shoalpb.SnapshotReport
	for _, p := range n.store.Snapshots() {
		if !p.Sending {
			continue
		}
		out = append(out, &shoalpb.SnapshotReport{
			ShardId: p.Shard, ToNode: p.ToNode, Bytes: uint64(max(p.Bytes, 0)), TotalBytes: uint64(max(p.TotalBytes, 0)),
		})
	}
	return out
}
