package master

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
)

// MetaShard is the shard ID of the meta group in the masters' stores.
const MetaShard = 1

// Meta records live in the master's engine as data keys of slot 0, inside
// the meta shard's range, so the meta group's snapshots carry them.
func metaKey(name string) []byte { return keys.DataKey(0, []byte("meta/"+name)) }

var (
	clusterKey    = metaKey("cluster")
	idsKey        = metaKey("ids")
	nodePrefix    = "node/"
	routePref     = "route/"
	opPrefix      = "op/"
	donePrefix    = "opdone/"
	tokenPrefix   = "regtoken/"
	dataSeqPrefix = "dataseq/"
	schedulingKey = metaKey("scheduling")
)

// keepFinished is how many finished operators the meta group keeps for
// operators of the cluster to look at: the last to finish.
const keepFinished = 64

// finishOrder orders finished operators by when they finished, then ID.
func finishOrder(a, b *shoalpb.Operator) int {
	if a.FinishedMs != b.FinishedMs {
		if a.FinishedMs < b.FinishedMs {
			return -1
		}
		return 1
	}
	return cmpU64(a.Id, b.Id)
}

func nodeKey(id uint64) []byte  { return metaKey(fmt.Sprintf("%s%020d", nodePrefix, id)) }
func routeKey(id uint64) []byte { return metaKey(fmt.Sprintf("%s%020d", routePref, id)) }
func opKey(id uint64) []byte    { return metaKey(fmt.Sprintf("%s%020d", opPrefix, id)) }
func doneKey(id uint64) []byte  { return metaKey(fmt.Sprintf("%s%020d", donePrefix, id)) }
func tokenKey(t string) []byte  { return metaKey(tokenPrefix + t) }
func dataSeqKey(id uint64) []byte {
	return metaKey(fmt.Sprintf("%s%020d", dataSeqPrefix, id))
}

// maxTokenLen bounds a registration token.
const maxTokenLen = 64

func prefixSpan(p string) keys.Span {
	s := metaKey(p)
	e := append(slices.Clone(s[:len(s)-1]), s[len(s)-1]+1)
	return keys.Span{Start: s, End: e}
}

// metaState is the replicated metadata: applied by the meta group's state
// machine, read by the master's handlers. Apply runs on the store's worker;
// readers take mu.
type metaState struct {
	eng *storage.Engine

	mu struct {
		sync.RWMutex
		cluster *shoalpb.ClusterInfo
		nodes   map[uint64]*shoalpb.NodeInfo
		routes  map[uint64]*shoalpb.ShardRoute
		ids     *shoalpb.MetaIDs
		// tokens maps the registration tokens of new nodes to the IDs
		// they were given, so a retried registration finds its node.
		tokens map[string]uint64
		// ops are the operators in flight, by ID; finished the
		// keepFinished last finished, in finish order (finishOrder).
		ops        map[uint64]*shoalpb.Operator
		finished   []*shoalpb.Operator
		scheduling *shoalpb.SetSchedulingRequest
		// heartbeatSeqs are the highest data sequences the nodes'
		// heartbeats carried, as leaders recorded them (RecordDataSeqs);
		// kept apart from NodeInfo so that recording them does not
		// change the route table's version.
		heartbeatSeqs map[uint64]uint64
		// changed is closed and replaced whenever the route table or the
		// nodes change, waking WatchRoutes streams.
		changed chan struct{}
	}
}

func newMetaState(eng *storage.Engine) *metaState {
	m := &metaState{eng: eng}
	m.mu.changed = make(chan struct{})
	return m
}

// load reads the whole state from the engine, replacing the mirror. The
// store calls it (through newStateMachine) when it creates the replica and
// when a snapshot replaces its data.
func (m *metaState) load() error {
	r := m.eng.Reader()
	cluster := &shoalpb.ClusterInfo{}
	ok, err := storage.GetProto(r, clusterKey, cluster)
	if err != nil {
		return err
	}
	if !ok {
		cluster = nil
	}
	ids := &shoalpb.MetaIDs{}
	if _, err := storage.GetProto(r, idsKey, ids); err != nil {
		return err
	}
	nodes := map[uint64]*shoalpb.NodeInfo{}
	if err := scan(r, prefixSpan(nodePrefix), func(v []byte) error {
		n := &shoalpb.NodeInfo{}
		if err := proto.Unmarshal(v, n); err != nil {
			return err
		}
		nodes[n.Id] = n
		return nil
	}); err != nil {
		return err
	}
	tokens := map[string]uint64{}
	if err := scan(r, prefixSpan(tokenPrefix), func(v []byte) error {
		reg := &shoalpb.NodeRegistration{}
		if err := proto.Unmarshal(v, reg); err != nil {
			return err
		}
		tokens[reg.Token] = reg.NodeId
		return nil
	}); err != nil {
		return err
	}
	routes := map[uint64]*shoalpb.ShardRoute{}
	if err := scan(r, prefixSpan(routePref), func(v []byte) error {
		rt := &shoalpb.ShardRoute{}
		if err := proto.Unmarshal(v, rt); err != nil {
			return err
		}
		routes[rt.Shard.ShardId] = rt
		return nil
	}); err != nil {
		return err
	}
	ops := map[uint64]*shoalpb.Operator{}
	if err := scan(r, prefixSpan(opPrefix), func(v []byte) error {
		op := &shoalpb.Operator{}
		if err := proto.Unmarshal(v, op); err != nil {
			return err
		}
		ops[op.Id] = op
		return nil
	}); err != nil {
		return err
	}
	var finished []*shoalpb.Operator
	if err := scan(r, prefixSpan(donePrefix), func(v []byte) error {
		op := &shoalpb.Operator{}
		if err := proto.Unmarshal(v, op); err != nil {
			return err
		}
		finished = append(finished, op)
		return nil
	}); err != nil {
		return err
	}
	slices.SortFunc(finished, finishOrder)
	sched := &shoalpb.SetSchedulingRequest{}
	if _, err := storage.GetProto(r, schedulingKey, sched); err != nil {
		return err
	}
	beatSeqs := map[uint64]uint64{}
	if err := scan(r, prefixSpan(dataSeqPrefix), func(v []byte) error {
		ds := &shoalpb.NodeDataSeq{}
		if err := proto.Unmarshal(v, ds); err != nil {
			return err
		}
		beatSeqs[ds.NodeId] = ds.DataSeq
		return nil
	}); err != nil {
		return err
	}
	m.mu.Lock()
	m.mu.cluster, m.mu.ids, m.mu.nodes, m.mu.routes, m.mu.tokens = cluster, ids, nodes, routes, tokens
	m.mu.ops, m.mu.finished, m.mu.scheduling, m.mu.heartbeatSeqs = ops, finished, sched, beatSeqs
	m.notifyLocked()
	m.mu.Unlock()
	return nil
}

func scan(r storage.Reader, span keys.Span, f func(v []byte) error) error {
	it, err := storage.NewIter(r, span)
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if err := f(it.Value()); err != nil {
			return fmt.Errorf("master: decode %q: %w", it.Key(), err)
		}
	}
	return it.Error()
}

func (m *metaState) notifyLocked() {
	close(m.mu.changed)
	m.mu.changed = make(chan struct{})
}

// stateMachine adapts metaState to raftstore.StateMachine. m is nil when
// the metadata could not be loaded, and loadErr says why.
type stateMachine struct {
	m       *metaState
	loadErr error
}

// newStateMachine is the meta group's raftstore.Options.NewStateMachine:
// the state it applies to is the master's single metaState, reloaded from
// the engine whenever the store makes a new state machine (at start and
// after a snapshot).
func (m *metaState) newStateMachine(*shoalpb.ShardDescriptor) raftstore.StateMachine {
	if err := m.load(); err != nil {
		// The store cannot go on with unreadable metadata; Apply reports
		// it, with why.
		return stateMachine{loadErr: err}
	}
	return stateMachine{m: m}
}

// Apply implements raftstore.StateMachine.
func (sm stateMachine) Apply(b *storage.Batch, cmds []raftstore.Command) ([]any, error) {
	if sm.m == nil {
		return nil, fmt.Errorf("master: metadata could not be loaded: %w", sm.loadErr)
	}
	out := make([]any, len(cmds))
	for i, c := range cmds {
		cmd := &shoalpb.MetaCommand{}
		if err := proto.Unmarshal(c.Data, cmd); err != nil {
			out[i] = &shoalpb.MetaResult{Code: shoalpb.ErrorCode_ERROR_CODE_INVALID, Error: "malformed meta command"}
			continue
		}
		res, err := sm.m.apply(b, cmd)
		if err != nil {
			return nil, err
		}
		out[i] = res
	}
	return out, nil
}

func fail(code shoalpb.ErrorCode, format string, args ...any) *shoalpb.MetaResult {
	return &shoalpb.MetaResult{Code: code, Error: fmt.Sprintf(format, args...)}
}

// apply applies one command: it stages records in b and updates the mirror.
// It is deterministic: time comes from cmd.now_ms.
func (m *metaState) apply(b *storage.Batch, cmd *shoalpb.MetaCommand) (*shoalpb.MetaResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := cmd.NowMs
	switch c := cmd.Cmd.(type) {
	case *shoalpb.MetaCommand_Bootstrap:
		want := c.Bootstrap
		if have := m.mu.cluster; have != nil {
			if have.Shards != want.Shards || have.Replicas != want.Replicas {
				return fail(shoalpb.ErrorCode_ERROR_CODE_BOOTSTRAP_MISMATCH,
					"cluster %s was bootstrapped with %d shards and %d replicas; they cannot change (asked for %d and %d)",
					have.ClusterId, have.Shards, have.Replicas, want.Shards, want.Replicas), nil
			}
			return &shoalpb.MetaResult{Cluster: have}, nil
		}
		if want.ClusterId == "" || want.Shards == 0 || want.Shards&(want.Shards-1) != 0 || want.Shards > keys.SlotCount ||
			want.Replicas == 0 || want.Replicas > 7 {
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "invalid bootstrap: %v", want), nil
		}
		cl := proto.Clone(want).(*shoalpb.ClusterInfo)
		cl.BootstrappedMs = now
		if err := b.SetProto(clusterKey, cl); err != nil {
			return nil, err
		}
		m.mu.cluster = cl
		return &shoalpb.MetaResult{Cluster: cl}, nil

	case *shoalpb.MetaCommand_RegisterNode:
		return m.registerLocked(b, c.RegisterNode, now)

	case *shoalpb.MetaCommand_SetNodeState:
		req := c.SetNodeState
		n := m.mu.nodes[req.NodeId]
		if n == nil {
			return fail(shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE, "no node %d", req.NodeId), nil
		}
		if n.State == shoalpb.NodeState_NODE_STATE_REMOVED && req.State != shoalpb.NodeState_NODE_STATE_REMOVED {
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "node %d was removed; it cannot become %v", n.Id, req.State), nil
		}
		if n.State == req.State {
			return &shoalpb.MetaResult{Node: n}, nil
		}
		if req.OnlyFrom != shoalpb.NodeState_NODE_STATE_UNSPECIFIED && n.State != req.OnlyFrom {
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "node %d is %v, not %v", n.Id, n.State, req.OnlyFrom), nil
		}
		// A live node is removed only once nothing involves it (a drain
		// that finished). Checked here, as the command applies, not only
		// where it was proposed: a down node an administrator removes can
		// heartbeat its way back up in between.
		if req.State == shoalpb.NodeState_NODE_STATE_REMOVED && n.State != shoalpb.NodeState_NODE_STATE_DOWN && m.involvedLocked(n.Id) {
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "node %d is %s and still holds replicas or is the target of an operator",
				n.Id, n.State.Name()), nil
		}
		n = proto.Clone(n).(*shoalpb.NodeInfo)
		n.State, n.StateReason, n.StateSinceMs = req.State, req.Reason, now
		if err := m.putNodeLocked(b, n); err != nil {
			return nil, err
		}
		return &shoalpb.MetaResult{Node: n}, nil

	case *shoalpb.MetaCommand_PlaceShards:
		if m.mu.cluster == nil {
			return fail(shoalpb.ErrorCode_ERROR_CODE_NOT_BOOTSTRAPPED, "cluster not bootstrapped"), nil
		}
		if len(m.mu.routes) > 0 {
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "shards are already placed"), nil
		}
		for _, d := range c.PlaceShards.Shards {
			rt := &shoalpb.ShardRoute{Shard: d}
			if err := b.SetProto(routeKey(d.ShardId), rt); err != nil {
				return nil, err
			}
			m.mu.routes[d.ShardId] = rt
			for _, r := range d.Replicas {
				m.mu.ids.NextReplica = max(m.mu.ids.NextReplica, r.ReplicaId+1)
			}
		}
		if err := m.bumpLocked(b); err != nil {
			return nil, err
		}
		return &shoalpb.MetaResult{}, nil

	case *shoalpb.MetaCommand_UpdateRoutes:
		if err := m.updateRoutesLocked(b, c.UpdateRoutes.Routes); err != nil {
			return nil, err
		}
		return &shoalpb.MetaResult{}, nil

	case *shoalpb.MetaCommand_StartOperators:
		return m.startOperatorsLocked(b, c.StartOperators.Operators, now)

	case *shoalpb.MetaCommand_UpdateOperator:
		return m.updateOperatorLocked(b, c.UpdateOperator, now)

	case *shoalpb.MetaCommand_SetScheduling:
		if err := b.SetProto(schedulingKey, c.SetScheduling); err != nil {
			return nil, err
		}
		m.mu.scheduling = c.SetScheduling
		return &shoalpb.MetaResult{}, nil

	case *shoalpb.MetaCommand_RecordDataSeqs:
		for _, ds := range c.RecordDataSeqs.Seqs {
			n := m.mu.nodes[ds.NodeId]
			if n == nil || n.State == shoalpb.NodeState_NODE_STATE_REMOVED || ds.DataSeq <= m.mu.heartbeatSeqs[ds.NodeId] {
				continue
			}
			if err := b.SetProto(dataSeqKey(ds.NodeId), ds); err != nil {
				return nil, err
			}
			m.mu.heartbeatSeqs[ds.NodeId] = ds.DataSeq
		}
		return &shoalpb.MetaResult{}, nil

	case *shoalpb.MetaCommand_SetNodeLabels:
		req := c.SetNodeLabels
		n := m.mu.nodes[req.NodeId]
		if n == nil || n.State == shoalpb.NodeState_NODE_STATE_REMOVED {
			return fail(shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE, "no node %d (or it was removed)", req.NodeId), nil
		}
		if req.Weight < 0 || !validWeight(req.Weight) {
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "weight %v: want a finite number > 0", req.Weight), nil
		}
		if req.Weight == 0 && req.Zone == "" && !req.ClearZone {
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "nothing to set: give a weight or a zone"), nil
		}
		n = proto.Clone(n).(*shoalpb.NodeInfo)
		if req.Zone != "" || req.ClearZone {
			n.Zone = req.Zone
		}
		if req.Weight > 0 {
			n.Weight = req.Weight
		}
		n.LabelsSetByAdmin = true
		if err := m.putNodeLocked(b, n); err != nil {
			return nil, err
		}
		return &shoalpb.MetaResult{Node: n}, nil
	}
	return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "unknown meta command"), nil
}

// updateRoutesLocked records newer descriptors and leader hints.
func (m *metaState) updateRoutesLocked(b *storage.Batch, routes []*shoalpb.ShardRoute) error {
	changed := false
	for _, u := range routes {
		cur := m.mu.routes[u.GetShard().GetShardId()]
		if cur == nil {
			continue
		}
		next := proto.Clone(cur).(*shoalpb.ShardRoute)
		if u.Shard.Epoch > cur.Shard.Epoch {
			next.Shard = u.Shard
		}
		if u.LeaderReplica != 0 && u.LeaderTerm >= cur.LeaderTerm {
			next.LeaderReplica, next.LeaderTerm = u.LeaderReplica, u.LeaderTerm
		}
		if proto.Equal(next, cur) {
			continue
		}
		if err := b.SetProto(routeKey(next.Shard.ShardId), next); err != nil {
			return err
		}
		m.mu.routes[next.Shard.ShardId] = next
		changed = true
	}
	if changed {
		return m.bumpLocked(b)
	}
	return nil
}

// startOperatorsLocked records new operators, all or none.
func (m *metaState) startOperatorsLocked(b *storage.Batch, ops []*shoalpb.Operator, now int64) (*shoalpb.MetaResult, error) {
	busy := map[uint64]bool{}
	for _, op := range m.mu.ops {
		busy[op.ShardId] = true
	}
	for _, op := range ops {
		rt := m.mu.routes[op.ShardId]
		switch {
		case rt == nil:
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "operator %d: no shard %d", op.Id, op.ShardId), nil
		case busy[op.ShardId]:
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "operator %d: shard %d has an operator in flight", op.Id, op.ShardId), nil
		case op.Epoch != rt.Shard.Epoch:
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "operator %d: planned on epoch %d of shard %d, which is at %d",
				op.Id, op.Epoch, op.ShardId, rt.Shard.Epoch), nil
		case op.Id < m.mu.ids.NextOperator || m.mu.ops[op.Id] != nil:
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "operator ID %d already used", op.Id), nil
		}
		for _, st := range op.Steps {
			if al := st.GetAddLearner(); al != nil && al.ReplicaId < m.mu.ids.NextReplica {
				return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "operator %d: replica ID %d already used", op.Id, al.ReplicaId), nil
			}
		}
		busy[op.ShardId] = true
	}
	for _, op := range ops {
		op = proto.Clone(op).(*shoalpb.Operator)
		op.CreatedMs, op.StepStartedMs = now, now
		if err := b.SetProto(opKey(op.Id), op); err != nil {
			return nil, err
		}
		m.mu.ops[op.Id] = op
		m.mu.ids.NextOperator = max(m.mu.ids.NextOperator, op.Id+1)
		for _, st := range op.Steps {
			if al := st.GetAddLearner(); al != nil {
				m.mu.ids.NextReplica = max(m.mu.ids.NextReplica, al.ReplicaId+1)
			}
		}
	}
	if err := b.SetProto(idsKey, m.mu.ids); err != nil {
		return nil, err
	}
	m.notifyLocked()
	return &shoalpb.MetaResult{}, nil
}

// updateOperatorLocked records an operator's progress, rollback or end.
func (m *metaState) updateOperatorLocked(b *storage.Batch, u *shoalpb.UpdateOperator, now int64) (*shoalpb.MetaResult, error) {
	cur := m.mu.ops[u.Id]
	if cur == nil {
		return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "no operator %d in flight", u.Id), nil
	}
	if u.Route != nil {
		if err := m.updateRoutesLocked(b, []*shoalpb.ShardRoute{u.Route}); err != nil {
			return nil, err
		}
	}
	if u.RequestAbort != "" {
		if cur.RollingBack {
			return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "operator %d is already rolling back", u.Id), nil
		}
		op := proto.Clone(cur).(*shoalpb.Operator)
		op.AbortRequested = u.RequestAbort
		if err := b.SetProto(opKey(op.Id), op); err != nil {
			return nil, err
		}
		m.mu.ops[op.Id] = op
		m.notifyLocked()
		return &shoalpb.MetaResult{}, nil
	}
	if cur.Current != u.ExpectCurrent || cur.RollingBack != u.ExpectRollingBack {
		return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "operator %d is at step %d (rolling back %v), not %d (%v)",
			u.Id, cur.Current, cur.RollingBack, u.ExpectCurrent, u.ExpectRollingBack), nil
	}
	op := proto.Clone(cur).(*shoalpb.Operator)
	if u.Current != op.Current {
		op.Current, op.StepStartedMs, op.ProgressBytes, op.TotalBytes = u.Current, now, 0, 0
	}
	if u.StepStartedMs != 0 {
		op.StepStartedMs = u.StepStartedMs
	}
	if u.StartRollback {
		op.Steps = append(op.Steps[:min(int(op.Current), len(op.Steps))], u.Rollback...)
		op.RollingBack, op.StepStartedMs = true, now
		op.Reason += "; rolling back: " + u.LastError
	}
	if u.Outcome != "" {
		// After the last to finish, by a millisecond at least: a new
		// leader's clock may be behind the old one's, and keeping the
		// last keepFinished to finish (finishOrder) must not trim the one
		// finishing now.
		op.Outcome, op.FinishedMs = u.Outcome, now
		if n := len(m.mu.finished); n > 0 {
			op.FinishedMs = max(now, m.mu.finished[n-1].FinishedMs+1)
		}
		if err := b.Delete(opKey(op.Id), nil); err != nil {
			return nil, err
		}
		delete(m.mu.ops, op.Id)
		if err := b.SetProto(doneKey(op.Id), op); err != nil {
			return nil, err
		}
		// In finish order (finished_ms, then ID), as load() sorts them:
		// the oldest finished goes first, so that an operator that ran
		// long is not trimmed as it finishes for having a low ID, and a
		// master that restarted or took a snapshot trims the same ones as
		// its peers (finished_ms is the command's time, the same on all).
		i, _ := slices.BinarySearchFunc(m.mu.finished, op, finishOrder)
		m.mu.finished = slices.Insert(m.mu.finished, i, op)
		for len(m.mu.finished) > keepFinished {
			if err := b.Delete(doneKey(m.mu.finished[0].Id), nil); err != nil {
				return nil, err
			}
			m.mu.finished = m.mu.finished[1:]
		}
	} else {
		if err := b.SetProto(opKey(op.Id), op); err != nil {
			return nil, err
		}
		m.mu.ops[op.Id] = op
	}
	m.notifyLocked()
	return &shoalpb.MetaResult{}, nil
}

// involvedLocked reports whether a shard has a replica on node or an
// operator in flight adds one there.
func (m *metaState) involvedLocked(node uint64) bool {
	for _, rt := range m.mu.routes {
		for _, r := range rt.Shard.Replicas {
			if r.NodeId == node {
				return true
			}
		}
	}
	for _, op := range m.mu.ops {
		for _, st := range op.Steps {
			if st.GetAddLearner().GetNodeId() == node {
				return true
			}
		}
	}
	return false
}

// involved reports whether a shard or an operator in flight involves node.
func (m *metaState) involved(node uint64) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.involvedLocked(node)
}

func validWeight(w float64) bool { return !math.IsNaN(w) && !math.IsInf(w, 0) }

func (m *metaState) registerLocked(b *storage.Batch, req *shoalpb.RegisterNodeRequest, now int64) (*shoalpb.MetaResult, error) {
	cl := m.mu.cluster
	if cl == nil {
		return fail(shoalpb.ErrorCode_ERROR_CODE_NOT_BOOTSTRAPPED, "the cluster is not bootstrapped yet"), nil
	}
	if req.ClusterId != "" && req.ClusterId != cl.ClusterId {
		return fail(shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER,
			"node %d belongs to cluster %s; this is cluster %s", req.NodeId, req.ClusterId, cl.ClusterId), nil
	}
	if req.Addr == "" || req.Weight <= 0 || !validWeight(req.Weight) {
		return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "a node needs an address and a positive weight"), nil
	}
	if len(req.RegistrationToken) > maxTokenLen {
		return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "registration token of %d bytes: at most %d", len(req.RegistrationToken), maxTokenLen), nil
	}
	id, byToken := req.NodeId, false
	if id == 0 && req.RegistrationToken != "" {
		// A retry of a registration that committed: the same node.
		id, byToken = m.mu.tokens[req.RegistrationToken], true
	}
	var n *shoalpb.NodeInfo
	if id != 0 {
		old := m.mu.nodes[id]
		if old == nil {
			return fail(shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE, "cluster %s has no node %d", cl.ClusterId, id), nil
		}
		if old.State == shoalpb.NodeState_NODE_STATE_REMOVED {
			if byToken {
				return fail(shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE,
					"this registration token already registered node %d, which was removed from cluster %s; start the node on an empty data directory to join as a new node",
					id, cl.ClusterId), nil
			}
			return fail(shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE, "node %d was removed from cluster %s", id, cl.ClusterId), nil
		}
		// A new start registers with a data sequence above the last
		// registration's; the same one only as a retry of that start.
		if req.DataSeq != 0 && old.DataSeq != 0 &&
			(req.DataSeq < old.DataSeq || req.DataSeq == old.DataSeq && req.StartId != old.StartId) {
			return fail(shoalpb.ErrorCode_ERROR_CODE_STALE_DATA, "%s", staleDataMsg(id, req.DataSeq, old.DataSeq, "in its previous registration")), nil
		}
		n = proto.Clone(old).(*shoalpb.NodeInfo)
		if n.State == shoalpb.NodeState_NODE_STATE_DOWN {
			n.State, n.StateReason, n.StateSinceMs = shoalpb.NodeState_NODE_STATE_UP, "registered again", now
		}
	} else {
		m.mu.ids.NextNode = max(m.mu.ids.NextNode, 1)
		n = &shoalpb.NodeInfo{
			Id: m.mu.ids.NextNode, State: shoalpb.NodeState_NODE_STATE_UP,
			StateReason: "registered", StateSinceMs: now, RegisteredMs: now,
		}
		m.mu.ids.NextNode++
		if err := b.SetProto(idsKey, m.mu.ids); err != nil {
			return nil, err
		}
		if t := req.RegistrationToken; t != "" {
			if err := b.SetProto(tokenKey(t), &shoalpb.NodeRegistration{Token: t, NodeId: n.Id}); err != nil {
				return nil, err
			}
			m.mu.tokens[t] = n.Id
		}
	}
	n.Addr, n.RespAddr, n.HttpAddr = req.Addr, req.RespAddr, req.HttpAddr
	if req.DataSeq != 0 {
		n.DataSeq, n.StartId = req.DataSeq, req.StartId
	}
	if !n.LabelsSetByAdmin {
		n.Zone, n.Weight = req.Zone, req.Weight
	}
	if err := m.putNodeLocked(b, n); err != nil {
		return nil, err
	}
	return &shoalpb.MetaResult{Node: n, Cluster: cl}, nil
}

func (m *metaState) putNodeLocked(b *storage.Batch, n *shoalpb.NodeInfo) error {
	if err := b.SetProto(nodeKey(n.Id), n); err != nil {
		return err
	}
	m.mu.nodes[n.Id] = n
	return m.bumpLocked(b)
}

// bumpLocked advances the route version and wakes watchers.
func (m *metaState) bumpLocked(b *storage.Batch) error {
	m.mu.ids.RouteVersion++
	if err := b.SetProto(idsKey, m.mu.ids); err != nil {
		return err
	}
	m.notifyLocked()
	return nil
}

// Read accessors. They return shared records: callers must not modify them.

func (m *metaState) cluster() *shoalpb.ClusterInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.mu.cluster
}

func (m *metaState) node(id uint64) *shoalpb.NodeInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.mu.nodes[id]
}

// nodeByToken returns the ID of the node that registered with token, 0 if
// none did.
func (m *metaState) nodeByToken(token string) uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.mu.tokens[token]
}

func (m *metaState) nodes() []*shoalpb.NodeInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*shoalpb.NodeInfo, 0, len(m.mu.nodes))
	for _, n := range m.mu.nodes {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *shoalpb.NodeInfo) int { return cmpU64(a.Id, b.Id) })
	return out
}

// routeTable returns the route table and a channel closed at its next
// change.
func (m *metaState) routeTable() (*shoalpb.RouteTable, <-chan struct{}) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	t := &shoalpb.RouteTable{Version: m.mu.ids.GetRouteVersion()}
	if m.mu.cluster != nil {
		t.ClusterId = m.mu.cluster.ClusterId
	}
	for _, rt := range m.mu.routes {
		t.Shards = append(t.Shards, rt)
	}
	slices.SortFunc(t.Shards, func(a, b *shoalpb.ShardRoute) int { return cmpU64(a.Shard.ShardId, b.Shard.ShardId) })
	for _, n := range m.mu.nodes {
		if n.State != shoalpb.NodeState_NODE_STATE_REMOVED {
			t.Nodes = append(t.Nodes, n)
		}
	}
	slices.SortFunc(t.Nodes, func(a, b *shoalpb.NodeInfo) int { return cmpU64(a.Id, b.Id) })
	return t, m.mu.changed
}

func (m *metaState) version() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.mu.ids.GetRouteVersion()
}

func (m *metaState) route(shard uint64) *shoalpb.ShardRoute {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.mu.routes[shard]
}

// operators returns the operators in flight, by ID, and the recently
// finished ones, in ID order. Callers must not modify them.
func (m *metaState) operators() (inFlight, finished []*shoalpb.Operator) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, op := range m.mu.ops {
		inFlight = append(inFlight, op)
	}
	slices.SortFunc(inFlight, func(a, b *shoalpb.Operator) int { return cmpU64(a.Id, b.Id) })
	finished = slices.Clone(m.mu.finished)
	slices.SortFunc(finished, func(a, b *shoalpb.Operator) int { return cmpU64(a.Id, b.Id) })
	return inFlight, finished
}

// operator returns an operator in flight or recently finished, nil if
// unknown.
func (m *metaState) operator(id uint64) *shoalpb.Operator {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if op := m.mu.ops[id]; op != nil {
		return op
	}
	for _, op := range m.mu.finished {
		if op.Id == id {
			return op
		}
	}
	return nil
}

// heartbeatSeq returns the highest data sequence recorded for node's
// heartbeats (0: none).
func (m *metaState) heartbeatSeq(node uint64) uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.mu.heartbeatSeqs[node]
}

// heartbeatSeqs returns a copy of every node's recorded heartbeat data
// sequence.
func (m *metaState) heartbeatSeqs() map[uint64]uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return maps.Clone(m.mu.heartbeatSeqs)
}

func (m *metaState) schedulingPaused() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.mu.scheduling.GetPaused()
}

func (m *metaState) nextOperatorID() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return max(m.mu.ids.GetNextOperator(), 1)
}

func (m *metaState) placed() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.mu.routes) > 0
}

func (m *metaState) nextReplicaID() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return max(m.mu.ids.GetNextReplica(), 1)
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
