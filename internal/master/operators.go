package master

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/master/schedule"
)

// The master leader runs every operator in flight with one goroutine (a
// runner) that takes its steps one after another: it sends the step to the
// node that leads the shard (NodeAdmin.RunStep) and records in the meta
// group that the step is done, together with the descriptor and leader it
// left. A new leader starts runners for the operators it finds; a runner
// first checks whether its step already took effect (schedule.StepDone), so
// a step is never run twice. A step that does not finish within
// OperatorStepTimeout, an operator that can no longer finish (a node it
// needs went down) or one an administrator cancels is rolled back: the
// learners it added are removed.

// runner is the leader's handle on the goroutine running one operator.
type runner struct {
	id     uint64
	cancel context.CancelFunc
	done   chan struct{}

	mu struct {
		sync.Mutex
		// abort, when set, asks the runner to roll the operator back.
		abort string
		// stepCancel ends the step in progress.
		stepCancel context.CancelFunc
		lastErr    string
	}
}

func (r *runner) requestAbort(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.abort == "" {
		r.mu.abort = reason
	}
	if r.mu.stepCancel != nil {
		r.mu.stepCancel()
	}
}

func (r *runner) abortReason() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.abort
}

// leaderContext returns a context that ends when this master stops leading
// (or stops), creating it on a new leadership.
func (s *Server) leaderContext() context.Context {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return s.lmu.ctx
}

// runOperators starts a runner for every operator in flight that has none.
func (s *Server) runOperators() {
	ctx := s.leaderContext()
	if ctx == nil || ctx.Err() != nil {
		return
	}
	ops, _ := s.meta.operators()
	s.lmu.Lock()
	defer s.lmu.Unlock()
	for _, op := range ops {
		if _, ok := s.lmu.running[op.Id]; ok {
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &runner{id: op.Id, cancel: cancel, done: make(chan struct{})}
		s.lmu.running[op.Id] = r
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer close(r.done)
			defer cancel()
			s.execute(rctx, r)
			s.lmu.Lock()
			if s.lmu.running[r.id] == r {
				delete(s.lmu.running, r.id)
			}
			s.lmu.Unlock()
		}()
	}
}

// abortOperator asks the runner of operator id to roll it back. It reports
// whether a runner took the request.
func (s *Server) abortOperator(id uint64, reason string) bool {
	s.lmu.Lock()
	r := s.lmu.running[id]
	s.lmu.Unlock()
	if r == nil {
		return false
	}
	r.requestAbort(reason)
	return true
}

// execute runs operator r.id to its end, or until ctx ends (this master
// stopped leading; the next leader takes over).
func (s *Server) execute(ctx context.Context, r *runner) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		op := s.meta.operator(r.id)
		if op == nil || op.Outcome != "" {
			return
		}
		if int(op.Current) >= len(op.Steps) {
			outcome := "done"
			if op.RollingBack {
				outcome = "rolled back"
			}
			// Counted and logged only once recorded: a leader that lost its
			// place leaves the operator to the next, which finishes it.
			if s.updateOperator(ctx, op, &shoalpb.UpdateOperator{Id: op.Id, Current: op.Current, Outcome: outcome}) {
				s.opsFinished.WithLabelValues(op.Kind.Name(), strings.ReplaceAll(outcome, " ", "-")).Inc()
				s.log.Info("operator finished", "op", op.Id, "shard", op.ShardId, "kind", op.Kind.Name(), "outcome", outcome,
					"took", time.Since(time.UnixMilli(op.CreatedMs)).Round(time.Millisecond))
			}
			return
		}
		reason := r.abortReason()
		if reason == "" {
			reason = op.AbortRequested
		}
		if reason != "" && !op.RollingBack {
			s.rollback(ctx, op, reason)
			continue
		}
		step := op.Steps[op.Current]
		rt := s.meta.route(op.ShardId)
		if rt == nil {
			s.updateOperator(ctx, op, &shoalpb.UpdateOperator{Id: op.Id, Current: op.Current, Outcome: "failed: the shard is gone"})
			return
		}
		if rm := step.GetRemoveReplica(); op.RollingBack && rm != nil {
			// Undo only a learner. The route may lag the shard, but the
			// step runs under its epoch, so the leader confirms or refuses
			// what the route says.
			if rep := rt.Shard.Replica(rm.ReplicaId); rep != nil && rep.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
				s.updateOperator(ctx, op, &shoalpb.UpdateOperator{Id: op.Id, Current: op.Current + 1})
				continue
			}
		} else if schedule.StepDone(rt.Shard, rt.LeaderReplica, step) {
			s.updateOperator(ctx, op, &shoalpb.UpdateOperator{Id: op.Id, Current: op.Current + 1})
			backoff = 50 * time.Millisecond
			continue
		}
		deadline := time.UnixMilli(op.StepStartedMs).Add(s.cfg.OperatorStepTimeout)
		if time.Now().After(deadline) {
			reason := fmt.Sprintf("step %d (%s) did not finish within %s", op.Current+1, step.Describe(), s.cfg.OperatorStepTimeout)
			if last := r.lastError(); last != "" {
				reason += ": " + last
			}
			if op.RollingBack {
				if s.updateOperator(ctx, op, &shoalpb.UpdateOperator{Id: op.Id, Current: op.Current, Outcome: "failed: rollback " + reason}) {
					s.opsFinished.WithLabelValues(op.Kind.Name(), "failed").Inc()
					s.log.Error("operator rollback failed", "op", op.Id, "shard", op.ShardId, "reason", reason)
				}
				return
			}
			s.rollback(ctx, op, reason)
			continue
		}
		sctx, scancel := context.WithDeadline(ctx, deadline)
		r.mu.Lock()
		r.mu.stepCancel = scancel
		r.mu.Unlock()
		route, err := s.runStep(sctx, rt, step)
		scancel()
		r.mu.Lock()
		r.mu.stepCancel = nil
		r.mu.Unlock()
		if err == nil {
			s.updateOperator(ctx, op, &shoalpb.UpdateOperator{Id: op.Id, Current: op.Current + 1, Route: route})
			r.setLastError("")
			backoff = 50 * time.Millisecond
			continue
		}
		if ctx.Err() != nil {
			return
		}
		r.setLastError(err.Error())
		d := shoalpb.DetailOf(err)
		switch d.GetCode() {
		case shoalpb.ErrorCode_ERROR_CODE_EPOCH_MISMATCH:
			// The shard moved on (a reply we lost, or a change we did not
			// make): record where it is and look again.
			if d.Shard != nil && d.Shard.Epoch > rt.Shard.Epoch {
				s.updateRoutes(ctx, &shoalpb.ShardRoute{Shard: d.Shard})
				continue
			}
			// The node is behind the route (it has not applied the change
			// yet): wait below.
		case shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER:
			if d.LeaderId != 0 {
				s.noteLeaderNode(op.ShardId, d.LeaderId)
			}
		case shoalpb.ErrorCode_ERROR_CODE_INVALID:
			if !op.RollingBack {
				s.rollback(ctx, op, fmt.Sprintf("step %d (%s) refused: %v", op.Current+1, step.Describe(), err))
				continue
			}
		}
		s.log.Debug("operator step failed; retrying", "op", op.Id, "shard", op.ShardId, "step", step.Describe(), "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (r *runner) setLastError(e string) {
	r.mu.Lock()
	r.mu.lastErr = e
	r.mu.Unlock()
}

func (r *runner) lastError() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.lastErr
}

// rollback replaces what is left of op by the steps that undo it.
func (s *Server) rollback(ctx context.Context, op *shoalpb.Operator, reason string) {
	steps := schedule.Rollback(op)
	s.log.Warn("rolling operator back", "op", op.Id, "shard", op.ShardId, "kind", op.Kind.Name(), "reason", reason, "undo_steps", len(steps))
	s.updateOperator(ctx, op, &shoalpb.UpdateOperator{Id: op.Id, Current: op.Current, StartRollback: true, Rollback: steps, LastError: reason})
}

// updateOperator proposes u for op as the runner last read it, retrying
// until it is recorded, refused (op moved on: the runner reads it again) or
// ctx ends.
func (s *Server) updateOperator(ctx context.Context, op *shoalpb.Operator, u *shoalpb.UpdateOperator) (applied bool) {
	u.ExpectCurrent, u.ExpectRollingBack = op.Current, op.RollingBack
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.propose(pctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_UpdateOperator{UpdateOperator: u}})
		cancel()
		var ce *codedError
		if err == nil || errors.As(err, &ce) {
			if err != nil {
				s.log.Warn("operator update refused", "op", u.Id, "err", err)
			}
			return err == nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}

func (s *Server) updateRoutes(ctx context.Context, rt ...*shoalpb.ShardRoute) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.propose(pctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_UpdateRoutes{UpdateRoutes: &shoalpb.UpdateRoutes{Routes: rt}}}); err != nil {
		s.log.Debug("cannot record a route", "err", err)
	}
}

// noteLeaderNode remembers which node a replica said leads a shard, until
// the route table says better.
func (s *Server) noteLeaderNode(shard, node uint64) {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.lmu.leaderNodes != nil {
		s.lmu.leaderNodes[shard] = node
	}
}

// runStep sends step to the node leading rt's shard (or, not knowing it,
// to each replica in turn) and returns the route the step left.
func (s *Server) runStep(ctx context.Context, rt *shoalpb.ShardRoute, step *shoalpb.OperatorStep) (*shoalpb.ShardRoute, error) {
	node := uint64(0)
	for _, r := range rt.Shard.Replicas {
		if r.ReplicaId == rt.LeaderReplica {
			node = r.NodeId
		}
	}
	s.lmu.Lock()
	if n, ok := s.lmu.leaderNodes[rt.Shard.ShardId]; ok {
		node = n
		delete(s.lmu.leaderNodes, rt.Shard.ShardId)
	}
	s.lmu.Unlock()
	candidates := []uint64{}
	if node != 0 {
		candidates = append(candidates, node)
	}
	for _, r := range rt.Shard.Replicas {
		if r.NodeId != node && r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			candidates = append(candidates, r.NodeId)
		}
	}
	var last error
	for i, id := range candidates {
		n := s.meta.node(id)
		// The leader is asked whatever the master thinks of its node: only
		// it can run the step. Other replicas only if they are live.
		if n == nil || (i > 0 || node == 0) && n.State != shoalpb.NodeState_NODE_STATE_UP && n.State != shoalpb.NodeState_NODE_STATE_DRAINING {
			continue
		}
		conn, err := s.conns.Get(n.Addr)
		if err != nil {
			return nil, err
		}
		resp, err := shoalpb.NewNodeAdminClient(conn).RunStep(ctx, &shoalpb.RunStepRequest{
			ShardId: rt.Shard.ShardId, Epoch: rt.Shard.Epoch, Step: step,
			ClusterId: s.meta.cluster().GetClusterId(), NodeId: id,
		})
		if err == nil {
			return resp.Route, nil
		}
		last = err
		// Another replica may run it: this node has none, or the address
		// is another node's now (of this cluster or another).
		switch shoalpb.DetailOf(err).GetCode() {
		case shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE, shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE, shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER:
			if ctx.Err() == nil {
				continue
			}
		}
		return nil, err
	}
	if last == nil {
		last = fmt.Errorf("no live node holds a voter of shard %d", rt.Shard.ShardId)
	}
	return nil, last
}

// scheduleRound looks at the cluster and starts what the scheduler plans:
// it aborts the operators that can no longer finish, and, unless
// scheduling is paused, records new operators.
func (s *Server) scheduleRound(ctx context.Context) {
	if s.meta.cluster() == nil || !s.meta.placed() {
		return
	}
	s.planMu.Lock()
	defer s.planMu.Unlock()
	snap := s.snapshot()
	for _, id := range schedule.Obsolete(snap) {
		s.abortOperator(id, "a node it needs is no longer up")
	}
	s.removeDrained(ctx, snap)
	if s.meta.schedulingPaused() {
		return
	}
	ops := schedule.Schedule(snap, s.cfg.Scheduler)
	if len(ops) == 0 {
		return
	}
	if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_StartOperators{StartOperators: &shoalpb.StartOperators{Operators: ops}}}); err != nil {
		s.log.Warn("cannot record operators", "count", len(ops), "err", err)
		return
	}
	for _, op := range ops {
		s.log.Info("operator started", "op", op.Id, "shard", op.ShardId, "kind", op.Kind.Name(), "reason", op.Reason, "steps", shoalpb.DescribeSteps(op.Steps))
	}
	s.runOperators()
}

// removeDrained marks removed the draining nodes that hold no replica any
// more and have no operator touching them.
func (s *Server) removeDrained(ctx context.Context, snap schedule.Snapshot) {
	holds := map[uint64]bool{}
	for _, sh := range snap.Shards {
		for _, r := range sh.Desc.Replicas {
			holds[r.NodeId] = true
		}
	}
	for _, op := range snap.Operators {
		for _, st := range op.Steps {
			if al := st.GetAddLearner(); al != nil {
				holds[al.NodeId] = true
			}
		}
	}
	for _, n := range snap.Nodes {
		if n.State != shoalpb.NodeState_NODE_STATE_DRAINING || holds[n.ID] {
			continue
		}
		if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_SetNodeState{SetNodeState: &shoalpb.SetNodeStateRequest{
			NodeId: n.ID, State: shoalpb.NodeState_NODE_STATE_REMOVED, Reason: "drained: it holds no replica",
			OnlyFrom: shoalpb.NodeState_NODE_STATE_DRAINING,
		}}}); err != nil {
			s.log.Warn("cannot remove a drained node", "node", n.ID, "err", err)
			continue
		}
		s.log.Info("node removed", "node", n.ID, "reason", "drained: it holds no replica")
	}
}

// snapshot is the cluster as the scheduler sees it.
func (s *Server) snapshot() schedule.Snapshot {
	cl := s.meta.cluster()
	snap := schedule.Snapshot{
		NowMs: time.Now().UnixMilli(), ReplicationFactor: int(cl.GetReplicas()),
		NextReplicaID: s.meta.nextReplicaID(), NextOperatorID: s.meta.nextOperatorID(),
	}
	for _, n := range s.meta.nodes() {
		snap.Nodes = append(snap.Nodes, schedule.NodeStatus{ID: n.Id, Zone: n.Zone, Weight: n.Weight, State: n.State, StateSinceMs: n.StateSinceMs})
	}
	t, _ := s.meta.routeTable()
	s.lmu.Lock()
	for i := range snap.Nodes {
		n := &snap.Nodes[i]
		st := s.lmu.beats[n.ID].hb.GetStats()
		n.DiskFull, n.DiskExhausted = st.GetDiskFull(), st.GetDiskExhausted()
		if n.State == shoalpb.NodeState_NODE_STATE_DRAINING {
			// Timed from when this leader first looked, as the failure
			// detector times up nodes.
			seen, ok := s.lmu.lastSeen[n.ID]
			if !ok {
				seen = time.Now()
				if s.lmu.lastSeen != nil { // nil until leading sets it up
					s.lmu.lastSeen[n.ID] = seen
				}
			}
			n.Silent = time.Since(seen) > s.cfg.NodeDownAfter
		}
	}
	for _, rt := range t.Shards {
		st := s.lmu.shardStats[rt.Shard.ShardId]
		snap.Shards = append(snap.Shards, schedule.ShardStatus{
			Desc: rt.Shard, LeaderReplica: rt.LeaderReplica, OpsPerSec: st.ops, SizeBytes: st.size,
		})
	}
	s.lmu.Unlock()
	snap.Operators, _ = s.meta.operators()
	return snap
}

// shardStat is what the shard's leader last reported of its load.
type shardStat struct {
	ops  float64
	size uint64
}

// withProgress returns copies of ops with the progress of their current
// step (the snapshot being streamed to a new replica) and an ETA.
func (s *Server) withProgress(ops []*shoalpb.Operator) []*shoalpb.Operator {
	out := make([]*shoalpb.Operator, 0, len(ops))
	now := time.Now()
	s.lmu.Lock()
	defer s.lmu.Unlock()
	for _, op := range ops {
		op = proto.Clone(op).(*shoalpb.Operator)
		if r := s.lmu.running[op.Id]; r != nil {
			op.LastError = r.lastError()
		}
		if int(op.Current) < len(op.Steps) {
			if p := s.lmu.snaps[snapKey{op.ShardId, learnerNode(op)}]; p != nil && p.TotalBytes > 0 {
				op.ProgressBytes, op.TotalBytes = p.Bytes, p.TotalBytes
				if el := now.Sub(time.UnixMilli(op.StepStartedMs)); p.Bytes > 0 && el > 0 {
					rate := float64(p.Bytes) / el.Seconds()
					op.EtaMs = int64(float64(p.TotalBytes-min(p.Bytes, p.TotalBytes)) / rate * 1000)
				}
			}
		}
		out = append(out, op)
	}
	return out
}

type snapKey struct{ shard, node uint64 }

// snapReport is a snapshot a node reported sending.
type snapReport struct {
	*shoalpb.SnapshotReport
	fromNode uint64
}

// learnerNode is the node op adds a replica on, 0 if none.
func learnerNode(op *shoalpb.Operator) uint64 {
	for _, st := range op.Steps {
		if al := st.GetAddLearner(); al != nil {
			return al.NodeId
		}
	}
	return 0
}
