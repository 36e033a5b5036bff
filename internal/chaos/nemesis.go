package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/keys"
)

// observer reads the cluster's state for the nemesis and the measurements:
// who leads what (from the masters) and how far each replica has applied
// (from each node's /status).
type observer struct {
	cl      Cluster
	masters *client.MasterConn
	http    *http.Client
}

func (o *observer) state(ctx context.Context) (*shoalpb.ClusterState, error) {
	var st *shoalpb.ClusterState
	err := o.masters.Call(ctx, func(ctx context.Context, c shoalpb.MasterClient) error {
		var err error
		st, err = c.GetCluster(ctx, &shoalpb.GetClusterRequest{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("chaos: cluster state: %w", err)
	}
	return st, nil
}

// nodeIDs maps server names to node IDs (by advertised address).
func (o *observer) nodeIDs(st *shoalpb.ClusterState) map[string]uint64 {
	out := map[string]uint64{}
	for _, s := range o.cl.Servers() {
		for _, n := range st.GetNodes() {
			if n.GetAddr() == s.GRPCAddr {
				out[s.Name] = n.GetId()
			}
		}
	}
	return out
}

// ledBy returns the shards whose leader is on node id.
func ledBy(st *shoalpb.ClusterState, id uint64) []*shoalpb.ShardDescriptor {
	var out []*shoalpb.ShardDescriptor
	for _, r := range st.GetRoutes().GetShards() {
		if rep := r.GetShard().Replica(r.GetLeaderReplica()); rep != nil && rep.GetNodeId() == id {
			out = append(out, r.GetShard())
		}
	}
	return out
}

// busiestNode is the node server leading the most shards.
func (o *observer) busiestNode(st *shoalpb.ClusterState) string {
	ids := o.nodeIDs(st)
	best, bestN := "", -1
	for _, s := range o.cl.Servers() {
		if s.Role != RoleNode {
			continue
		}
		if n := len(ledBy(st, ids[s.Name])); n > bestN {
			best, bestN = s.Name, n
		}
	}
	return best
}

// masterLeader is the name of the leading master.
func (o *observer) masterLeader(st *shoalpb.ClusterState) string {
	return "m" + strconv.FormatUint(st.GetLeaderMaster(), 10)
}

type replicaStatus struct {
	Shard   uint64 `json:"shard"`
	Role    string `json:"role"`
	Applied uint64 `json:"applied"`
}

type nodeStatus struct {
	NodeID   uint64          `json:"node_id"`
	Replicas []replicaStatus `json:"replicas"`
}

func (o *observer) nodeStatus(ctx context.Context, s Server) (*nodeStatus, error) {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+s.HTTPAddr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := o.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ns nodeStatus
	if err := json.NewDecoder(resp.Body).Decode(&ns); err != nil {
		return nil, fmt.Errorf("chaos: %s /status: %w", s.Name, err)
	}
	return &ns, nil
}

// waitFullReplication returns how long it took until every replica of
// every shard (as the masters place them) has applied at least what the
// shard's leader had applied when the wait began.
func (o *observer) waitFullReplication(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	target := map[uint64]uint64{}
	for {
		ok, err := o.fullyReplicated(ctx, target)
		if ok {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("chaos: not fully replicated after %v (last: %v)", timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (o *observer) fullyReplicated(ctx context.Context, target map[uint64]uint64) (bool, error) {
	st, err := o.state(ctx)
	if err != nil {
		return false, err
	}
	ids := o.nodeIDs(st)
	applied := map[[2]uint64]uint64{} // (node, shard) -> applied
	for _, s := range o.cl.Servers() {
		if s.Role != RoleNode {
			continue
		}
		ns, err := o.nodeStatus(ctx, s)
		if err != nil {
			continue // a node that is down holds nothing we can count
		}
		for _, r := range ns.Replicas {
			applied[[2]uint64{ids[s.Name], r.Shard}] = r.Applied
			if _, ok := target[r.Shard]; !ok && r.Role == "leader" {
				target[r.Shard] = r.Applied
			}
		}
	}
	for _, r := range st.GetRoutes().GetShards() {
		d := r.GetShard()
		want, ok := target[d.GetShardId()]
		if !ok {
			return false, fmt.Errorf("shard %d: no leader seen yet", d.GetShardId())
		}
		for _, rep := range d.GetReplicas() {
			got, ok := applied[[2]uint64{rep.GetNodeId(), d.GetShardId()}]
			if !ok || got < want {
				return false, fmt.Errorf("shard %d: node %d applied %d of %d", d.GetShardId(), rep.GetNodeId(), got, want)
			}
		}
	}
	return true, nil
}

// probeKey returns a key that falls in shard d.
func probeKey(d *shoalpb.ShardDescriptor) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("probe-%d-%d", d.GetShardId(), i)
		if s := uint32(keys.Slot([]byte(k))); s >= d.GetStartSlot() && s <= d.GetEndSlot() {
			return k
		}
	}
}

// firstWrites writes to each shard in a loop from since until a write
// succeeds, and returns for each shard how long after since that was (or
// the limit, with ok false, if none did).
func firstWrites(ctx context.Context, c *client.Client, shards []*shoalpb.ShardDescriptor, since time.Time, limit time.Duration) []probeResult {
	out := make([]probeResult, len(shards))
	done := make(chan struct{}, len(shards))
	for i, d := range shards {
		go func() {
			defer func() { done <- struct{}{} }()
			key := probeKey(d)
			deadline := since.Add(limit)
			for n := 0; time.Now().Before(deadline) && ctx.Err() == nil; n++ {
				// A request's whole budget, as an application would give it:
				// the client moves on from a node that does not answer
				// (client.WithAttemptTimeout) within it.
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := c.Put(pctx, []byte(key), []byte(strconv.Itoa(n)))
				cancel()
				if err == nil {
					out[i] = probeResult{Shard: d.GetShardId(), After: time.Since(since), OK: true}
					return
				}
			}
			out[i] = probeResult{Shard: d.GetShardId(), After: limit}
		}()
	}
	for range shards {
		<-done
	}
	return out
}

type probeResult struct {
	Shard uint64
	After time.Duration
	OK    bool
}

// split divides names into a random minority and majority.
func split(rng *rand.Rand, names []string) (minority, majority []string) {
	names = slices.Clone(names)
	rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	k := len(names) / 2
	return names[:k], names[k:]
}

func namesOf(servers []Server, role Role) []string {
	var out []string
	for _, s := range servers {
		if s.Role == role {
			out = append(out, s.Name)
		}
	}
	return out
}
