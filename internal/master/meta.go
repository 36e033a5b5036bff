package master

import (
	"fmt"
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
	clusterKey = metaKey("cluster")
	idsKey     = metaKey("ids")
	nodePrefix = "node/"
	routePref  = "route/"
)

func nodeKey(id uint64) []byte  { return metaKey(fmt.Sprintf("%s%020d", nodePrefix, id)) }
func routeKey(id uint64) []byte { return metaKey(fmt.Sprintf("%s%020d", routePref, id)) }
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
	m.mu.Lock()
	m.mu.cluster, m.mu.ids, m.mu.nodes, m.mu.routes = cluster, ids, nodes, routes
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

// stateMachine adapts metaState to raftstore.StateMachine.
type stateMachine struct{ m *metaState }

// newStateMachine is the meta group's raftstore.Options.NewStateMachine:
// the state it applies to is the master's single metaState, reloaded from
// the engine whenever the store makes a new state machine (at start and
// after a snapshot).
func (m *metaState) newStateMachine(*shoalpb.ShardDescriptor) raftstore.StateMachine {
	if err := m.load(); err != nil {
		// The store cannot go on with unreadable metadata; Apply reports it.
		return stateMachine{m: nil}
	}
	return stateMachine{m: m}
}

// Apply implements raftstore.StateMachine.
func (sm stateMachine) Apply(b *storage.Batch, cmds []raftstore.Command) ([]any, error) {
	if sm.m == nil {
		return nil, fmt.Errorf("master: metadata could not be loaded")
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
		changed := false
		for _, u := range c.UpdateRoutes.Routes {
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
				return nil, err
			}
			m.mu.routes[next.Shard.ShardId] = next
			changed = true
		}
		if changed {
			if err := m.bumpLocked(b); err != nil {
				return nil, err
			}
		}
		return &shoalpb.MetaResult{}, nil
	}
	return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "unknown meta command"), nil
}

func (m *metaState) registerLocked(b *storage.Batch, req *shoalpb.RegisterNodeRequest, now int64) (*shoalpb.MetaResult, error) {
	cl := m.mu.cluster
	if cl == nil {
		return fail(shoalpb.ErrorCode_ERROR_CODE_NOT_BOOTSTRAPPED, "the cluster is not bootstrapped yet"), nil
	}
	if req.ClusterId != "" && req.ClusterId != cl.ClusterId {
		return fail(shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER,
			"node %d belongs to cluster %s; this is cluster %s", req.NodeId, req.ClusterId, cl.ClusterId), nil
	}
	if req.Addr == "" || req.Weight <= 0 {
		return fail(shoalpb.ErrorCode_ERROR_CODE_INVALID, "a node needs an address and a positive weight"), nil
	}
	var n *shoalpb.NodeInfo
	if req.NodeId != 0 {
		old := m.mu.nodes[req.NodeId]
		if old == nil {
			return fail(shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE, "cluster %s has no node %d", cl.ClusterId, req.NodeId), nil
		}
		if old.State == shoalpb.NodeState_NODE_STATE_REMOVED {
			return fail(shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE, "node %d was removed from cluster %s", req.NodeId, cl.ClusterId), nil
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
	}
	n.Addr, n.RespAddr, n.HttpAddr, n.Zone, n.Weight = req.Addr, req.RespAddr, req.HttpAddr, req.Zone, req.Weight
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
