package master

import (
	"context"
	"errors"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/master/schedule"
	"github.com/shoaldb/shoal/internal/raftstore"
)

// opsSmoothing weighs a shard's newest ops/s report against the average
// of the earlier ones (an exponential moving average over about five
// heartbeats).
const opsSmoothing = 0.2

// run is the leader's periodic work: the failure detector, the first
// placement, and proposing the route updates heartbeats brought.
func (s *Server) run() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.ScheduleInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stopC:
			return
		case <-t.C:
		}
		if !s.leading() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*s.cfg.ScheduleInterval)
		s.detectFailures(ctx)
		s.maybePlace(ctx)
		s.flushRoutes(ctx)
		s.recordDataSeqs(ctx)
		s.runOperators()
		s.scheduleRound(ctx)
		cancel()
	}
}

// leading reports whether this master leads, and sets up the leader-only
// memory when it has just become leader.
func (s *Server) leading() bool {
	st, err := s.store.Status(MetaShard)
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if err != nil || st.Role != raftstore.RoleLeader {
		if s.lmu.cancel != nil {
			s.lmu.cancel()
			s.lmu.cancel, s.lmu.ctx = nil, nil
		}
		s.lmu.term = 0
		return false
	}
	if st.Term < s.lmu.term {
		// A status read before a newer one that another call already
		// acted on.
		return true
	}
	if s.lmu.term != st.Term {
		if s.lmu.cancel != nil {
			s.lmu.cancel()
		}
		s.lmu.ctx, s.lmu.cancel = context.WithCancel(s.baseCtx)
		s.lmu.running = map[uint64]*runner{}
		s.lmu.leaderNodes = map[uint64]uint64{}
		s.lmu.shardStats = map[uint64]shardStat{}
		s.lmu.snaps = map[snapKey]*snapReport{}
		s.lmu.beats = map[uint64]nodeBeat{}
		// A new leadership: every node gets a full NodeDownAfter from now
		// before it can be declared down, so a failover declares nobody
		// down by itself.
		s.lmu.term, s.lmu.since = st.Term, time.Now()
		s.lmu.lastSeen = map[uint64]time.Time{}
		s.lmu.dataSeqs = map[uint64]uint64{}
		s.lmu.lastSeqRecord = time.Time{}
		s.lmu.hints = map[uint64]*shoalpb.ShardRoute{}
		for _, n := range s.meta.nodes() {
			s.lmu.lastSeen[n.Id] = s.lmu.since
		}
		s.log.Info("leading the meta group", "term", st.Term)
	}
	return true
}

// stateChanged reports whether err is a node state change refused because
// the node's state is no longer the one it was proposed from.
func stateChanged(err error) bool {
	var ce *codedError
	return errors.As(err, &ce) && ce.code == shoalpb.ErrorCode_ERROR_CODE_INVALID
}

// detectFailures marks down the up nodes that have not heartbeated for
// NodeDownAfter.
func (s *Server) detectFailures(ctx context.Context) {
	now := time.Now()
	for _, n := range s.meta.nodes() {
		// A draining node stays draining even if silent: its replicas move
		// off either way, and a restart must not end the drain.
		if n.State != shoalpb.NodeState_NODE_STATE_UP {
			continue
		}
		s.lmu.Lock()
		seen, ok := s.lmu.lastSeen[n.Id]
		if !ok {
			seen = now
			s.lmu.lastSeen[n.Id] = now
		}
		s.lmu.Unlock()
		if silent := now.Sub(seen); silent > s.cfg.NodeDownAfter {
			reason := "no heartbeat for " + silent.Round(time.Second).String()
			// Only from up: an administrator's drain, proposed meanwhile,
			// stands.
			if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_SetNodeState{SetNodeState: &shoalpb.SetNodeStateRequest{
				NodeId: n.Id, State: shoalpb.NodeState_NODE_STATE_DOWN, Reason: reason, OnlyFrom: shoalpb.NodeState_NODE_STATE_UP,
			}}}); err != nil {
				if stateChanged(err) {
					s.log.Info("node not marked down: its state changed meanwhile", "node", n.Id, "err", err)
				} else {
					s.log.Warn("cannot mark node down", "node", n.Id, "err", err)
				}
				continue
			}
			s.log.Warn("node down", "node", n.Id, "addr", n.Addr, "reason", reason)
		}
	}
}

// maybePlace places every shard once the cluster is bootstrapped, at least
// replication-factor nodes are up, and registrations have settled.
func (s *Server) maybePlace(ctx context.Context) {
	cl := s.meta.cluster()
	if cl == nil || s.meta.placed() {
		return
	}
	s.lmu.Lock()
	settled := time.Since(s.lmu.lastRegistered) >= s.cfg.PlacementDelay
	s.lmu.Unlock()
	var up []schedule.Node
	for _, n := range s.meta.nodes() {
		if n.State == shoalpb.NodeState_NODE_STATE_UP {
			up = append(up, schedule.Node{ID: n.Id, Zone: n.Zone, Weight: n.Weight})
		}
	}
	if len(up) < int(cl.Replicas) || !settled {
		return
	}
	shards, err := schedule.PlaceInitial(up, int(cl.Shards), int(cl.Replicas), s.meta.nextReplicaID())
	if err != nil {
		s.log.Error("placement failed", "err", err)
		return
	}
	if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_PlaceShards{PlaceShards: &shoalpb.PlaceShards{Shards: shards}}}); err != nil {
		s.log.Warn("cannot record the placement", "err", err)
		return
	}
	s.log.Info("shards placed", "shards", len(shards), "nodes", len(up), "replicas", cl.Replicas)
}

// flushRoutes proposes the leader hints and descriptors that heartbeats
// reported since the last flush, when they change the table.
func (s *Server) flushRoutes(ctx context.Context) {
	s.lmu.Lock()
	hints := s.lmu.hints
	s.lmu.hints = map[uint64]*shoalpb.ShardRoute{}
	s.lmu.Unlock()
	var upd []*shoalpb.ShardRoute
	for id, h := range hints {
		cur := s.meta.route(id)
		if cur == nil {
			continue
		}
		if h.Shard.Epoch > cur.Shard.Epoch || h.LeaderTerm > cur.LeaderTerm ||
			(h.LeaderTerm == cur.LeaderTerm && h.LeaderReplica != cur.LeaderReplica) {
			upd = append(upd, h)
		}
	}
	if len(upd) == 0 {
		return
	}
	if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_UpdateRoutes{UpdateRoutes: &shoalpb.UpdateRoutes{Routes: upd}}}); err != nil {
		s.log.Warn("cannot record route updates", "err", err)
		// Keep them for the next round.
		s.lmu.Lock()
		for _, h := range upd {
			if _, newer := s.lmu.hints[h.Shard.ShardId]; !newer {
				s.lmu.hints[h.Shard.ShardId] = h
			}
		}
		s.lmu.Unlock()
	}
}

// recordDataSeqs records in the meta group the data sequences heartbeats
// brought above the records, about every DataSeqRecordInterval: a master
// that leads later refuses a registration at or below them (a node
// started on an older copy of its data), as this one does from memory
// (registerStale).
func (s *Server) recordDataSeqs(ctx context.Context) {
	recorded := s.meta.heartbeatSeqs()
	s.lmu.Lock()
	// The schedule ticks every ScheduleInterval: a record due within half
	// of one is made now rather than a whole tick late.
	if time.Since(s.lmu.lastSeqRecord) < s.cfg.DataSeqRecordInterval-s.cfg.ScheduleInterval/2 {
		s.lmu.Unlock()
		return
	}
	var rec []*shoalpb.NodeDataSeq
	for id, seq := range s.lmu.dataSeqs {
		if seq > recorded[id] {
			rec = append(rec, &shoalpb.NodeDataSeq{NodeId: id, DataSeq: seq})
		}
	}
	s.lmu.lastSeqRecord = time.Now()
	s.lmu.Unlock()
	if len(rec) == 0 {
		return
	}
	slices.SortFunc(rec, func(a, b *shoalpb.NodeDataSeq) int { return cmpU64(a.NodeId, b.NodeId) })
	if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_RecordDataSeqs{RecordDataSeqs: &shoalpb.RecordDataSeqs{Seqs: rec}}}); err != nil {
		s.log.Warn("cannot record the nodes' data sequences", "err", err)
	}
}

// Heartbeat implements shoalpb.MasterServer: it records that the node is
// alive and what its replicas say, and answers with work and, when the
// node's copy is old, the route table.
func (s *Server) Heartbeat(ctx context.Context, req *shoalpb.HeartbeatRequest) (*shoalpb.HeartbeatResponse, error) {
	if !s.leading() {
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, "master %d is not the leader", s.cfg.ID))
	}
	cl := s.meta.cluster()
	if cl == nil {
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_NOT_BOOTSTRAPPED, "the cluster is not bootstrapped"))
	}
	if req.ClusterId != cl.ClusterId {
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER, "node %d belongs to cluster %s; this is cluster %s",
			req.NodeId, req.ClusterId, cl.ClusterId))
	}
	n := s.meta.node(req.NodeId)
	if n == nil || n.State == shoalpb.NodeState_NODE_STATE_REMOVED {
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE, "cluster %s has no node %d (or it was removed)", cl.ClusterId, req.NodeId))
	}
	now := time.Now()
	leaders := 0
	for _, r := range req.Replicas {
		if r.Role == string(raftstore.RoleLeader) {
			leaders++
		}
	}
	beat := nodeBeat{at: now, hb: &shoalpb.NodeHeartbeat{
		LastHeartbeatMs: now.UnixMilli(), Stats: req.Stats, Replicas: uint32(len(req.Replicas)), Leaders: uint32(leaders),
	}}
	s.lmu.Lock()
	s.lmu.lastSeen[n.Id] = now
	s.lmu.beats[n.Id] = beat
	if s.lmu.dataSeqs != nil {
		s.lmu.dataSeqs[n.Id] = max(s.lmu.dataSeqs[n.Id], req.DataSeq)
	}
	for k, p := range s.lmu.snaps {
		if p.fromNode == n.Id {
			delete(s.lmu.snaps, k)
		}
	}
	for _, p := range req.Snapshots {
		s.lmu.snaps[snapKey{p.ShardId, p.ToNode}] = &snapReport{SnapshotReport: p, fromNode: n.Id}
	}
	exhausted := s.exhaustedLocked(now)
	for _, r := range req.Replicas {
		if r.Role != string(raftstore.RoleLeader) || r.Shard == nil {
			continue
		}
		// Rates are smoothed over a few heartbeats: the scheduler reacts
		// to load that lasts, not to one busy second.
		ops := r.OpsPerSec
		if old, ok := s.lmu.shardStats[r.ShardId]; ok {
			ops = old.ops + (ops-old.ops)*opsSmoothing
		}
		s.lmu.shardStats[r.ShardId] = shardStat{ops: ops, size: r.SizeBytes}
		h := s.lmu.hints[r.ShardId]
		if h == nil || r.Term > h.LeaderTerm || r.Epoch > h.Shard.Epoch {
			s.lmu.hints[r.ShardId] = &shoalpb.ShardRoute{Shard: r.Shard, LeaderReplica: r.ReplicaId, LeaderTerm: r.Term}
		}
	}
	s.lmu.Unlock()
	if n.State == shoalpb.NodeState_NODE_STATE_DOWN {
		// Only from down: an administrator's drain or removal, proposed
		// meanwhile, stands.
		if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_SetNodeState{SetNodeState: &shoalpb.SetNodeStateRequest{
			NodeId: n.Id, State: shoalpb.NodeState_NODE_STATE_UP, Reason: "heartbeats resumed", OnlyFrom: shoalpb.NodeState_NODE_STATE_DOWN,
		}}}); err == nil {
			s.log.Info("node up again", "node", n.Id, "reason", "heartbeats resumed")
		} else if !stateChanged(err) {
			return nil, s.toStatus(err)
		}
	}
	resp := &shoalpb.HeartbeatResponse{Work: s.workFor(n.Id, req), DiskExhaustedNodes: exhausted}
	if req.RoutesVersion < s.meta.version() {
		resp.Routes, _ = s.meta.routeTable()
	}
	return resp, nil
}

// exhaustedLocked lists the nodes whose latest heartbeat, within
// NodeDownAfter of now, said their disk is below half its reserve (they take
// no Raft entries), in ascending order. Requires s.lmu.
func (s *Server) exhaustedLocked(now time.Time) []uint64 {
	var out []uint64
	for id, b := range s.lmu.beats {
		if b.hb.GetStats().GetDiskExhausted() && now.Sub(b.at) <= s.cfg.NodeDownAfter {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// workFor decides what node should do: create its replicas of the initial
// placement that it does not have yet. Everything else (moving replicas,
// balancing leaders) is done by operators.
func (s *Server) workFor(node uint64, req *shoalpb.HeartbeatRequest) []*shoalpb.Work {
	has := map[uint64]*shoalpb.ReplicaReport{}
	for _, r := range req.Replicas {
		has[r.ShardId] = r
	}
	t, _ := s.meta.routeTable()
	var work []*shoalpb.Work
	for _, rt := range t.Shards {
		d := rt.Shard
		mine := false
		for _, r := range d.Replicas {
			mine = mine || r.NodeId == node
		}
		rep := has[d.ShardId]
		if mine && rep == nil && d.Epoch == 1 {
			// Only the initial placement is created this way: every replica
			// of it starts from the same empty state. Replicas added later
			// join as learners and get a snapshot.
			work = append(work, &shoalpb.Work{Work: &shoalpb.Work_CreateReplica{CreateReplica: proto.Clone(d).(*shoalpb.ShardDescriptor)}})
			continue
		}
	}
	return work
}
