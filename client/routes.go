package client

import (
	"sort"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// routeCache is the client's copy of the shard table, with the leaders it
// has learned since.
type routeCache struct {
	mu      sync.RWMutex
	ver     uint64
	cluster string
	shards  []*shardEntry // by start slot
	nodes   map[uint64]string
}

type shardEntry struct {
	desc   *shoalpb.ShardDescriptor
	leader uint64 // node, 0 if unknown
}

// Shard returns the descriptor.
func (e *shardEntry) GetShard() *shoalpb.ShardDescriptor {
	if e == nil {
		return nil
	}
	return e.desc
}

func newRouteCache() *routeCache { return &routeCache{nodes: map[uint64]string{}} }

func (r *routeCache) replace(t *shoalpb.RouteTable) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t.Version < r.ver {
		return
	}
	old := map[uint64]*shardEntry{}
	for _, e := range r.shards {
		old[e.desc.ShardId] = e
	}
	r.ver, r.cluster = t.Version, t.ClusterId
	r.shards = r.shards[:0]
	for _, rt := range t.Shards {
		e := &shardEntry{desc: rt.Shard}
		for _, rd := range rt.Shard.Replicas {
			if rd.ReplicaId == rt.LeaderReplica {
				e.leader = rd.NodeId
			}
		}
		// Keep what the client learned if it is newer than the table.
		if o := old[rt.Shard.ShardId]; o != nil && o.desc.Epoch > e.desc.Epoch {
			e.desc = o.desc
		}
		r.shards = append(r.shards, e)
	}
	sort.Slice(r.shards, func(i, j int) bool { return r.shards[i].desc.StartSlot < r.shards[j].desc.StartSlot })
	r.nodes = map[uint64]string{}
	for _, n := range t.Nodes {
		r.nodes[n.Id] = n.Addr
	}
}

// clusterID is the ID of the cluster the table describes.
func (r *routeCache) clusterID() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cluster
}

func (r *routeCache) version() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.ver
}

func (r *routeCache) current() *shoalpb.RouteTable {
	r.mu.RLock()
	defer r.mu.RUnlock()
	t := &shoalpb.RouteTable{Version: r.ver}
	for _, e := range r.shards {
		rt := &shoalpb.ShardRoute{Shard: e.desc}
		for _, rd := range e.desc.Replicas {
			if rd.NodeId == e.leader {
				rt.LeaderReplica = rd.ReplicaId
			}
		}
		t.Shards = append(t.Shards, rt)
	}
	for id, a := range r.nodes {
		t.Nodes = append(t.Nodes, &shoalpb.NodeInfo{Id: id, Addr: a})
	}
	return t
}

func (r *routeCache) findLocked(slot uint16) *shardEntry {
	i := sort.Search(len(r.shards), func(i int) bool { return r.shards[i].desc.EndSlot > uint32(slot) })
	if i < len(r.shards) && r.shards[i].desc.StartSlot <= uint32(slot) {
		return r.shards[i]
	}
	return nil
}

// target picks the node to send a request for slot to: the leader if
// known, else another replica (voters first), skipping excluded addresses.
// With forward, any node will do.
//
// It returns the shard's descriptor as it stands now (descriptors are
// replaced, never changed in place, so the caller may read it unlocked).
func (r *routeCache) target(slot uint16, forward bool, exclude map[string]bool) (*shoalpb.ShardDescriptor, string, uint64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e := r.findLocked(slot)
	if e == nil {
		return nil, "", 0
	}
	try := func(node uint64) (string, bool) {
		a := r.nodes[node]
		return a, node != 0 && a != "" && !exclude[a]
	}
	if a, ok := try(e.leader); ok {
		return e.desc, a, e.leader
	}
	for _, voter := range []bool{true, false} {
		for _, rd := range e.desc.Replicas {
			if (rd.Role != shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER) != voter {
				continue
			}
			if a, ok := try(rd.NodeId); ok {
				return e.desc, a, rd.NodeId
			}
		}
	}
	if forward {
		for id := range r.nodes {
			if a, ok := try(id); ok {
				return e.desc, a, id
			}
		}
	}
	return e.desc, "", 0
}

// learn takes what a response says of its shard.
func (r *routeCache) learn(shard uint64, rh *shoalpb.ResponseHeader) {
	if rh == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.shards {
		if e.desc.ShardId != shard {
			continue
		}
		if rh.Shard != nil && rh.Shard.Epoch > e.desc.Epoch {
			e.desc = rh.Shard
		}
		if rh.LeaderNodeId != 0 {
			e.leader = rh.LeaderNodeId
		}
	}
}

// setLeader records the leader a NOT_LEADER answer named; it reports
// whether that is news (so the request can go there at once).
func (r *routeCache) setLeader(slot uint16, node uint64, addr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.findLocked(slot)
	if e == nil || node == 0 || e.leader == node {
		return false
	}
	e.leader = node
	if addr != "" {
		r.nodes[node] = addr
	}
	return true
}

// addrs returns the node addresses the client knows.
func (r *routeCache) addrs() map[string]bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[string]bool, len(r.nodes))
	for _, a := range r.nodes {
		out[a] = true
	}
	return out
}

// addrOf returns the address of node, or "" if it is unknown.
func (r *routeCache) addrOf(node uint64) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.nodes[node]
}

func (r *routeCache) forgetLeader(slot uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.findLocked(slot); e != nil {
		e.leader = 0
	}
}

// setShard records a newer descriptor; it reports whether it was newer.
func (r *routeCache) setShard(d *shoalpb.ShardDescriptor) bool {
	if d == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.shards {
		if e.desc.ShardId == d.ShardId && d.Epoch > e.desc.Epoch {
			e.desc = proto.Clone(d).(*shoalpb.ShardDescriptor)
			return true
		}
	}
	return false
}

// shardsIn returns the descriptors of the shards covering [start, end).
func (r *routeCache) shardsIn(start, end uint32) []*shoalpb.ShardDescriptor {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*shoalpb.ShardDescriptor
	for _, e := range r.shards {
		if e.desc.EndSlot > start && e.desc.StartSlot < end {
			out = append(out, e.desc)
		}
	}
	return out
}
