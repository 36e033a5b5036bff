package master

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/master/schedule"
	"github.com/shoaldb/shoal/internal/raftstore"
)

var errNoMetaLeader = errors.New("master: the meta group has no leader")

// codedError is a failure with a wire error code: a MetaResult's error, or
// one a handler decides.
type codedError struct {
	code shoalpb.ErrorCode
	msg  string
}

func (e *codedError) Error() string { return e.msg }

func coded(code shoalpb.ErrorCode, format string, args ...any) error {
	return &codedError{code: code, msg: fmt.Sprintf(format, args...)}
}

// toStatus turns a handler's error into a gRPC status with an ErrorDetail.
func (s *Server) toStatus(err error) error {
	if err == nil {
		return nil
	}
	detail := &shoalpb.ErrorDetail{}
	var ce *codedError
	switch {
	case errors.As(err, &ce):
		detail.Code = ce.code
	case errors.Is(err, raftstore.ErrNotLeader), errors.Is(err, raftstore.ErrNoLeader), errors.Is(err, errNoMetaLeader),
		errors.Is(err, raftstore.ErrLeadershipLost):
		detail.Code = shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER
	case errors.Is(err, raftstore.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, raftstore.ErrStopped), errors.Is(err, raftstore.ErrOverloaded):
		return status.Error(codes.Unavailable, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
	if detail.Code == shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER {
		if st, serr := s.store.Status(MetaShard); serr == nil && st.LeaderReplica != 0 && st.LeaderReplica != s.cfg.ID {
			detail.LeaderId, detail.LeaderAddr = st.LeaderReplica, s.cfg.Peers[st.LeaderReplica]
		}
	}
	return shoalpb.StatusError(detail, err.Error())
}

// fromStatus turns another master's status back into a codedError.
func fromStatus(err error) error {
	if d := shoalpb.DetailOf(err); d != nil {
		return &codedError{code: d.Code, msg: status.Convert(err).Message()}
	}
	return err
}

// requireLeader fails unless this master leads the meta group.
func (s *Server) requireLeader() error {
	if !s.IsLeader() {
		return coded(shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, "master %d is not the leader", s.cfg.ID)
	}
	return nil
}

// Bootstrap implements shoalpb.MasterServer.
func (s *Server) Bootstrap(ctx context.Context, req *shoalpb.BootstrapRequest) (*shoalpb.ClusterInfo, error) {
	if err := s.requireLeader(); err != nil {
		return nil, s.toStatus(err)
	}
	cl, err := s.doBootstrap(ctx, req)
	return cl, s.toStatus(err)
}

// RegisterNode implements shoalpb.MasterServer.
func (s *Server) RegisterNode(ctx context.Context, req *shoalpb.RegisterNodeRequest) (*shoalpb.RegisterNodeResponse, error) {
	if err := s.requireLeader(); err != nil {
		return nil, s.toStatus(err)
	}
	if req.DataSeq != 0 {
		// A barrier first: a leader that has just taken over may not yet
		// have applied the records (and tokens) its predecessor committed
		// last (registerStale reads them).
		if err := s.store.ReadIndex(ctx, MetaShard); err != nil {
			return nil, s.toStatus(err)
		}
	}
	if err := s.registerStale(req); err != nil {
		s.log.Error("node refused: its data is older than it last reported", "node", req.NodeId, "err", err)
		return nil, s.toStatus(err)
	}
	cmd := &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_RegisterNode{RegisterNode: req}}
	res, err := s.propose(ctx, cmd)
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.lmu.Lock()
	s.lmu.lastRegistered = time.Now()
	if s.lmu.lastSeen != nil {
		s.lmu.lastSeen[res.Node.Id] = time.Now()
	}
	s.lmu.Unlock()
	n := res.Node
	// A node is new if this command created it; otherwise it registered
	// again (a restart with its ID, or a retry with its token), and a down
	// node is up again.
	again := n.RegisteredMs != cmd.NowMs || req.NodeId != 0
	s.log.Info("node registered", "node", n.Id, "addr", n.Addr, "zone", n.Zone, "weight", n.Weight,
		"again", again, "by_token", req.NodeId == 0 && again, "state", n.State.Name(), "reason", n.StateReason)
	if again && n.State == shoalpb.NodeState_NODE_STATE_UP && n.StateSinceMs == cmd.NowMs {
		s.log.Info("node up again", "node", n.Id, "state", n.State.Name(), "reason", n.StateReason)
	}
	return &shoalpb.RegisterNodeResponse{ClusterId: res.Cluster.ClusterId, Node: n}, nil
}

// registerStale refuses the registration of a node whose data sequence is
// not above what its heartbeats carried: the node synced each before
// sending it, so a lower one at a new start means its data directory is
// an older copy. The leader knows them from the heartbeats it received
// and from the meta group's records (RecordDataSeqs, which carry them
// across leader changes). The check is the leader's, before it proposes:
// the meta group's apply checks only the previous registration
// (metaState.registerLocked), so that masters whose records differ (one
// that was older than the records during a rolling upgrade) still apply
// the same registrations.
//
// A node that registers again by its token (its directory has the token but
// not yet the ID it was given) is checked as the node the token names: a
// copy taken in that window and restored after the node ran is as stale.
func (s *Server) registerStale(req *shoalpb.RegisterNodeRequest) error {
	id := req.NodeId
	if id == 0 && req.RegistrationToken != "" {
		id = s.meta.nodeByToken(req.RegistrationToken)
	}
	if id == 0 || req.DataSeq == 0 {
		return nil
	}
	recorded := s.meta.heartbeatSeq(id)
	s.lmu.Lock()
	seen := max(s.lmu.dataSeqs[id], recorded)
	s.lmu.Unlock()
	if req.DataSeq > seen {
		return nil
	}
	return coded(shoalpb.ErrorCode_ERROR_CODE_STALE_DATA, "%s", staleDataMsg(id, req.DataSeq, seen, "carried by its heartbeats"))
}

// staleDataMsg says why a node whose data is older than the masters have
// seen is refused, and what to do.
func staleDataMsg(node, got, seen uint64, where string) string {
	return fmt.Sprintf("node %d's data directory is older than the one it last ran with (data sequence %d at this start, %d already %s): "+
		"it was restored from an old copy, and its Raft state could forget writes it acknowledged or vote twice in a term; "+
		"start it on its latest directory, or remove it (shoal node remove %d) and add the machine as a new node on an empty one",
		node, got, seen, where, node)
}

// GetRoutes implements shoalpb.MasterServer; followers serve it too.
func (s *Server) GetRoutes(context.Context, *shoalpb.GetRoutesRequest) (*shoalpb.RouteTable, error) {
	t, _ := s.meta.routeTable()
	return t, nil
}

// WatchRoutes implements shoalpb.MasterServer: the table now if newer than
// the caller's, then every new version.
//
// A master that knows no leader of the meta group (one cut off from the
// other masters, or a deposed leader) would serve a table that no longer
// changes, and its watchers would never learn of new leaders or moves: it
// refuses to start a watch, and ends those it serves within an election
// timeout or two, with Unavailable, which sends clients to another master.
func (s *Server) WatchRoutes(req *shoalpb.WatchRoutesRequest, stream shoalpb.Master_WatchRoutesServer) error {
	after := req.AfterVersion
	check := time.NewTicker(s.store.ElectionTimeout())
	defer check.Stop()
	for {
		if st, err := s.store.Status(MetaShard); err != nil || st.LeaderReplica == 0 {
			return status.Error(codes.Unavailable, "this master knows no leader of the meta group (cut off from the other masters?): ask another")
		}
		t, changed := s.meta.routeTable()
		if t.Version > after {
			if err := stream.Send(t); err != nil {
				return err
			}
			after = t.Version
		}
		select {
		case <-changed:
		case <-check.C:
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-s.stopC:
			return status.Error(codes.Unavailable, "master stopping")
		}
	}
}

// GetCluster implements shoalpb.MasterServer; followers serve it too.
func (s *Server) GetCluster(context.Context, *shoalpb.GetClusterRequest) (*shoalpb.ClusterState, error) {
	return s.clusterState(), nil
}

func (s *Server) clusterState() *shoalpb.ClusterState {
	t, _ := s.meta.routeTable()
	cs := &shoalpb.ClusterState{Cluster: s.meta.cluster(), Nodes: s.meta.nodes(), Routes: t, SchedulingPaused: s.meta.schedulingPaused(),
		RecordedDataSeqs: s.meta.heartbeatSeqs()}
	inFlight, finished := s.meta.operators()
	cs.Operators, cs.Finished = s.withProgress(inFlight), finished
	cs.NodeOpsPerSec = map[uint64]float64{}
	isLeader := s.IsLeader()
	s.lmu.Lock()
	for _, rt := range t.Shards {
		st, ok := s.lmu.shardStats[rt.Shard.ShardId]
		if !ok {
			continue
		}
		for _, r := range rt.Shard.Replicas {
			if r.ReplicaId == rt.LeaderReplica {
				cs.NodeOpsPerSec[r.NodeId] += st.ops
			}
		}
		cs.OpsPerSec += st.ops
	}
	if isLeader {
		now := time.Now()
		cs.NodeHeartbeats = make(map[uint64]*shoalpb.NodeHeartbeat, len(s.lmu.beats))
		for id, b := range s.lmu.beats {
			hb := proto.Clone(b.hb).(*shoalpb.NodeHeartbeat)
			hb.AgeMs = now.Sub(b.at).Milliseconds()
			cs.NodeHeartbeats[id] = hb
		}
	}
	s.lmu.Unlock()
	st, err := s.store.Status(MetaShard)
	for id, addr := range s.cfg.Peers {
		leader := err == nil && st.LeaderReplica == id
		if leader {
			cs.LeaderMaster = id
		}
		cs.Masters = append(cs.Masters, &shoalpb.MasterInfo{Id: id, Addr: addr, Leader: leader})
	}
	return cs
}

// SetNodeState implements shoalpb.MasterServer: administrators set
// draining and removed (and back to up).
func (s *Server) SetNodeState(ctx context.Context, req *shoalpb.SetNodeStateRequest) (*shoalpb.SetNodeStateResponse, error) {
	if err := s.requireLeader(); err != nil {
		return nil, s.toStatus(err)
	}
	switch req.State {
	case shoalpb.NodeState_NODE_STATE_UP, shoalpb.NodeState_NODE_STATE_DRAINING, shoalpb.NodeState_NODE_STATE_REMOVED:
	default:
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_INVALID, "an administrator sets up, draining or removed, not %v", req.State))
	}
	if req.Reason == "" {
		req.Reason = "set by an administrator"
	}
	if req.State == shoalpb.NodeState_NODE_STATE_UP {
		// Undrain. A down node comes up by heartbeating; set up by hand it
		// would only be marked down again, with its repair clock started
		// over.
		req.OnlyFrom = shoalpb.NodeState_NODE_STATE_DRAINING
	}
	if n := s.meta.node(req.NodeId); req.State == shoalpb.NodeState_NODE_STATE_REMOVED && n != nil &&
		(n.State == shoalpb.NodeState_NODE_STATE_UP || n.State == shoalpb.NodeState_NODE_STATE_DRAINING) && s.meta.involved(n.Id) {
		// A live node that leads shards would have to run the steps that
		// replace it, as a stranger to the cluster.
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_INVALID,
			"node %d is %s and holds replicas: drain it (it is removed once empty), or stop it first",
			n.Id, n.State.Name()))
	}
	res, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_SetNodeState{SetNodeState: req}})
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("node state set", "node", req.NodeId, "state", req.State, "reason", req.Reason)
	return &shoalpb.SetNodeStateResponse{Node: res.Node}, nil
}

func (s *Server) handleStatus(w http.ResponseWriter, _ *http.Request) {
	b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(s.clusterState())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}

// SetNodeLabels implements shoalpb.MasterServer.
func (s *Server) SetNodeLabels(ctx context.Context, req *shoalpb.SetNodeLabelsRequest) (*shoalpb.SetNodeStateResponse, error) {
	if err := s.requireLeader(); err != nil {
		return nil, s.toStatus(err)
	}
	res, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_SetNodeLabels{SetNodeLabels: req}})
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("node labels set", "node", req.NodeId, "zone", res.Node.Zone, "weight", res.Node.Weight)
	return &shoalpb.SetNodeStateResponse{Node: res.Node}, nil
}

// SetScheduling implements shoalpb.MasterServer.
func (s *Server) SetScheduling(ctx context.Context, req *shoalpb.SetSchedulingRequest) (*shoalpb.SetSchedulingRequest, error) {
	if err := s.requireLeader(); err != nil {
		return nil, s.toStatus(err)
	}
	// After the planners: a scheduler round that found scheduling on has
	// recorded its operators before the pause is, so when a pause returns
	// no round starts another (TestHTTPAdmin waited for the operators in
	// flight to finish, then met one recorded after the pause).
	s.planMu.Lock()
	defer s.planMu.Unlock()
	if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_SetScheduling{SetScheduling: req}}); err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("scheduling set", "paused", req.Paused)
	return req, nil
}

// MoveReplica implements shoalpb.MasterServer.
func (s *Server) MoveReplica(ctx context.Context, req *shoalpb.MoveReplicaRequest) (*shoalpb.Operator, error) {
	return s.startAdmin(ctx, func(snap schedule.Snapshot) (*shoalpb.Operator, error) {
		return schedule.MoveReplica(snap, req.ShardId, req.FromNode, req.ToNode)
	})
}

// TransferShardLeader implements shoalpb.MasterServer.
func (s *Server) TransferShardLeader(ctx context.Context, req *shoalpb.TransferShardLeaderRequest) (*shoalpb.Operator, error) {
	return s.startAdmin(ctx, func(snap schedule.Snapshot) (*shoalpb.Operator, error) {
		return schedule.TransferLeader(snap, req.ShardId, req.ToNode)
	})
}

// startAdmin plans an administrator's operator and records it.
func (s *Server) startAdmin(ctx context.Context, plan func(schedule.Snapshot) (*shoalpb.Operator, error)) (*shoalpb.Operator, error) {
	// leading, not only the Raft role: a leader's memory (last heartbeats,
	// shard stats) is set up for its term there, and a request that came
	// before the leader's first tick found it missing, or left from an
	// earlier term.
	if !s.leading() {
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, "master %d is not the leader", s.cfg.ID))
	}
	if !s.meta.placed() {
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_NOT_BOOTSTRAPPED, "the shards are not placed yet"))
	}
	// One planner at a time: plans take IDs from the same allocators.
	s.planMu.Lock()
	op, err := plan(s.snapshot())
	if err != nil {
		s.planMu.Unlock()
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_INVALID, "%s", err.Error()))
	}
	_, err = s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_StartOperators{StartOperators: &shoalpb.StartOperators{
		Operators: []*shoalpb.Operator{op}}}})
	s.planMu.Unlock()
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("operator started", "op", op.Id, "shard", op.ShardId, "kind", op.Kind.Name(), "reason", op.Reason, "steps", shoalpb.DescribeSteps(op.Steps))
	s.runOperators()
	if cur := s.meta.operator(op.Id); cur != nil {
		op = cur
	}
	return op, nil
}

// CancelOperator implements shoalpb.MasterServer.
func (s *Server) CancelOperator(ctx context.Context, req *shoalpb.CancelOperatorRequest) (*shoalpb.Operator, error) {
	if err := s.requireLeader(); err != nil {
		return nil, s.toStatus(err)
	}
	op := s.meta.operator(req.Id)
	switch {
	case op == nil:
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_INVALID, "no operator %d", req.Id))
	case op.Outcome != "":
		return nil, s.toStatus(coded(shoalpb.ErrorCode_ERROR_CODE_INVALID, "operator %d already finished: %s", req.Id, op.Outcome))
	}
	// Recorded first, so that a new master leader rolls it back too; then
	// the step in progress here is interrupted.
	const reason = "cancelled by an administrator"
	if _, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_UpdateOperator{UpdateOperator: &shoalpb.UpdateOperator{
		Id: req.Id, RequestAbort: reason}}}); err != nil {
		return nil, s.toStatus(err)
	}
	s.runOperators()
	s.abortOperator(req.Id, reason)
	s.log.Info("operator cancelled", "op", req.Id)
	return s.meta.operator(req.Id), nil
}
