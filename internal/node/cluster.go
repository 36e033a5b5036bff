package node

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
)

// Identity records in the node's database.
var (
	clusterIDKey = keys.IdentityKey("cluster")
	nodeIDKey    = keys.IdentityKey("node")
	// regTokenKey holds the token a new node registers with, kept before
	// its first attempt (see RegisterNodeRequest.registration_token).
	regTokenKey = keys.IdentityKey("registration-token")
	// dataSeqKey holds the node's data sequence (advanceDataSeq).
	dataSeqKey = keys.IdentityKey("data-seq")
	// refusedKey, once set, says the masters refused this directory as
	// stale (ErrStaleData), with when and why; every later start fails
	// on it before advancing the data sequence.
	refusedKey = keys.IdentityKey("refused-stale")
)

// ErrStaleData is returned by Start when the masters refuse the node's data
// directory as older than the one it last ran with: restored from an old
// copy, its Raft state could forget writes it acknowledged or vote twice in
// a term. The directory keeps a record of the refusal, and every later
// start fails with ErrStaleData before registering: otherwise each refused
// start, which advances the data sequence, would bring the copy closer to
// being accepted. Nothing else in the directory changes.
var ErrStaleData = errors.New("node: the data directory is older than the one this node last ran with")

// advanceDataSeq adds one to the node's data sequence and syncs it to disk
// before returning it. The node sends it with its registration and every
// heartbeat; as each value is on disk before the masters see it, a data
// directory that comes back with a lower one than they saw is an older
// copy (RegisterNodeRequest.data_seq).
func (n *Node) advanceDataSeq() (uint64, error) {
	n.dataSeqMu.Lock()
	defer n.dataSeqMu.Unlock()
	var seq uint64
	if b, ok, err := n.engine.Get(dataSeqKey); err != nil {
		return 0, fmt.Errorf("node: data sequence: %w", err)
	} else if ok {
		if len(b) != 8 {
			return 0, fmt.Errorf("node: data sequence record of %d bytes, want 8", len(b))
		}
		seq = binary.BigEndian.Uint64(b)
	}
	seq++
	if err := n.engine.Write(dataSeqKey, binary.BigEndian.AppendUint64(nil, seq)); err != nil {
		return 0, fmt.Errorf("node: keep the data sequence: %w", err)
	}
	return seq, nil
}

// ErrWrongCluster is returned by Start when the node's data belongs to
// another cluster than the masters'. The data is left as it is.
var ErrWrongCluster = errors.New("node: the data directory belongs to another cluster")

// join gives the node its identity: the one in its database, confirmed by
// registering again, or a new one from the masters, kept before the node
// does anything else. It waits for the masters as long as ctx allows.
func (n *Node) join(ctx context.Context) error {
	clusterID, _, err := n.engine.Get(clusterIDKey)
	if err != nil {
		return err
	}
	var nodeID uint64
	if b, ok, err := n.engine.Get(nodeIDKey); err != nil {
		return err
	} else if ok {
		var id shoalpb.RegisterNodeResponse
		if err := proto.Unmarshal(b, &id); err != nil {
			return fmt.Errorf("node: identity record: %w", err)
		}
		nodeID = id.GetNode().GetId()
	}
	if why, ok, err := n.engine.Get(refusedKey); err != nil {
		return fmt.Errorf("node: refusal record: %w", err)
	} else if ok {
		return fmt.Errorf("%w: %s was refused as stale before (%s); it stays refused: move it aside, remove the node it held (shoal node remove) and start on an empty directory as a new node",
			ErrStaleData, n.cfg.DataDir, why)
	}
	seq, err := n.advanceDataSeq()
	if err != nil {
		return err
	}
	var startID [8]byte
	if _, err := rand.Read(startID[:]); err != nil {
		return fmt.Errorf("node: start id: %w", err)
	}
	req := &shoalpb.RegisterNodeRequest{
		ClusterId: string(clusterID), NodeId: nodeID, Addr: n.cfg.AdvertiseAddr,
		RespAddr: n.cfg.RESPAdvertiseAddr, HttpAddr: n.httpAdvertise, Zone: n.cfg.Zone, Weight: n.cfg.Weight,
		DataSeq: seq, StartId: binary.BigEndian.Uint64(startID[:]),
	}
	if nodeID == 0 {
		// A registration can commit and its answer be lost (the master
		// leader fails); the retry, or the next start, sends the same
		// token and gets the same node instead of a second one.
		if req.RegistrationToken, err = n.registrationToken(); err != nil {
			return err
		}
	}
	if nodeID != 0 {
		n.log.Info("registering again", "node", nodeID, "cluster", string(clusterID))
	} else {
		n.log.Info("registering as a new node", "masters", n.cfg.Masters)
	}
	var resp *shoalpb.RegisterNodeResponse
	for {
		err = n.masters.Call(ctx, func(ctx context.Context, c shoalpb.MasterClient) error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			var err error
			resp, err = c.RegisterNode(cctx, req)
			return err
		})
		if !errors.Is(err, client.ErrNotBootstrapped) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node: the cluster was not bootstrapped in time: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	switch {
	case errors.Is(err, client.ErrWrongCluster):
		return fmt.Errorf("%w: %s holds node %d of cluster %s, and the masters refuse it: %w",
			ErrWrongCluster, n.cfg.DataDir, nodeID, clusterID, err)
	case errors.Is(err, client.ErrStaleData):
		why := fmt.Sprintf("at %s with data sequence %d: %v", time.Now().UTC().Format(time.RFC3339), seq, err)
		if werr := n.engine.Write(refusedKey, []byte(why)); werr != nil {
			return fmt.Errorf("%w: %s: %w (and keeping the refusal failed: %w)", ErrStaleData, n.cfg.DataDir, err, werr)
		}
		return fmt.Errorf("%w: %s: %w", ErrStaleData, n.cfg.DataDir, err)
	case err != nil:
		return fmt.Errorf("node: register with the masters: %w", err)
	}
	if nodeID == 0 {
		// Keep the identity before anything else: a node that forgot it
		// would come back as a stranger.
		b, err := proto.Marshal(resp)
		if err != nil {
			return err
		}
		batch := n.engine.NewBatch()
		defer batch.Close()
		if err := batch.Set(clusterIDKey, []byte(resp.ClusterId), nil); err != nil {
			return err
		}
		if err := batch.Set(nodeIDKey, b, nil); err != nil {
			return err
		}
		if err := batch.Commit(true); err != nil {
			return err
		}
	}
	n.cfg.NodeID, n.cfg.ClusterID = resp.Node.Id, resp.ClusterId
	t, err := n.masters.GetRoutes(ctx)
	if err != nil {
		return fmt.Errorf("node: route table: %w", err)
	}
	n.routes.update(t)
	n.log.Info("joined the cluster", "node", n.cfg.NodeID, "cluster", n.cfg.ClusterID)
	return nil
}

// registrationToken returns the token this node registers with as a new
// node: the one on disk, or a new random one, synced to disk before it is
// returned.
func (n *Node) registrationToken() (string, error) {
	b, ok, err := n.engine.Get(regTokenKey)
	if err != nil {
		return "", fmt.Errorf("node: registration token: %w", err)
	}
	if ok && len(b) > 0 {
		return string(b), nil
	}
	r := make([]byte, 16)
	if _, err := rand.Read(r); err != nil {
		return "", fmt.Errorf("node: registration token: %w", err)
	}
	tok := hex.EncodeToString(r)
	if err := n.engine.Write(regTokenKey, []byte(tok)); err != nil {
		return "", fmt.Errorf("node: keep the registration token: %w", err)
	}
	return tok, nil
}

// routeCache is the node's copy of the route table, for resolving peers.
type routeCache struct {
	mu    sync.RWMutex
	table *shoalpb.RouteTable
	addrs map[uint64]string
}

func newRouteCache() *routeCache { return &routeCache{addrs: map[uint64]string{}} }

func (c *routeCache) update(t *shoalpb.RouteTable) {
	if t == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.table != nil && t.Version <= c.table.Version {
		return
	}
	c.table = t
	for _, n := range t.Nodes {
		c.addrs[n.Id] = n.Addr
	}
}

// tableAddrs returns the node addresses the current table names.
func (c *routeCache) tableAddrs() map[string]bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]bool, len(c.table.GetNodes()))
	for _, n := range c.table.GetNodes() {
		out[n.Addr] = true
	}
	return out
}

func (c *routeCache) version() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.table.GetVersion()
}

func (c *routeCache) resolve(node uint64) (string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if a, ok := c.addrs[node]; ok {
		return a, nil
	}
	return "", fmt.Errorf("node: no address for node %d in route table version %d", node, c.table.GetVersion())
}

// leaderOf returns the shard owning slot and its leader node, from the
// route table (0, 0 when unknown).
func (c *routeCache) leaderOf(slot uint16) (shard, node uint64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, rt := range c.table.GetShards() {
		d := rt.Shard
		if uint32(slot) >= d.StartSlot && uint32(slot) < d.EndSlot {
			for _, r := range d.Replicas {
				if r.ReplicaId == rt.LeaderReplica {
					return d.ShardId, r.NodeId
				}
			}
			return d.ShardId, 0
		}
	}
	return 0, 0
}

// Routes returns the node's copy of the route table (master mode).
func (n *Node) Routes() *shoalpb.RouteTable {
	n.routes.mu.RLock()
	defer n.routes.mu.RUnlock()
	return n.routes.table
}

// heartbeatLoop reports to the master every HeartbeatInterval and does the
// work it answers with. Failures (a master failover, a partition) are
// logged and retried at the next beat. It ends when the node fails (Err).
func (n *Node) heartbeatLoop() {
	defer n.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-n.stopC
		cancel()
	}()
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	stats := newReplicaStats()
	failing := false
	for {
		if n.Failure() != nil {
			// A failed node says nothing more: the masters count it down
			// and move its replicas, rather than trust what it reports.
			return
		}
		hctx, hcancel := context.WithTimeout(ctx, 2*n.cfg.HeartbeatInterval)
		resp, err := n.heartbeat(hctx, stats)
		hcancel()
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				n.log.Warn("heartbeat failed", "err", err)
			}
			failing = true
		case err == nil:
			if failing {
				n.log.Info("heartbeats resumed")
			}
			failing = false
			if resp.Routes != nil {
				n.routes.update(resp.Routes)
				// Forwarding connections to nodes the table no longer
				// names close once no forward uses them.
				named := n.routes.tableAddrs()
				n.kvsvc.peers.Keep(func(addr string) bool { return named[addr] })
			}
			n.setExhausted(resp.DiskExhaustedNodes)
			n.doWork(ctx, resp.Work)
		}
		select {
		case <-ctx.Done():
			return
		case <-n.failedC:
			return
		case <-t.C:
		case <-n.beatNow:
			// Let the other leaderships of an election burst settle, so
			// one beat reports them all.
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

func (n *Node) heartbeat(ctx context.Context, stats *replicaStats) (*shoalpb.HeartbeatResponse, error) {
	seq, err := n.advanceDataSeq()
	if err != nil {
		return nil, err
	}
	req := &shoalpb.HeartbeatRequest{
		ClusterId: n.cfg.ClusterID, NodeId: n.cfg.NodeID, RoutesVersion: n.routes.version(), DataSeq: seq,
	}
	now := time.Now()
	var ops float64
	for _, st := range n.store.Replicas() {
		if !st.Initialized {
			continue
		}
		r := &shoalpb.ReplicaReport{
			ShardId: st.ShardID, ReplicaId: st.ReplicaID, Role: string(st.Role), Term: st.Term,
			Applied: st.Applied, Epoch: st.Descriptor.GetEpoch(),
			OpsPerSec: stats.rate(st.ShardID, st.Applied, now),
			SizeBytes: stats.size(n.engine, st.Descriptor, now),
		}
		if st.Role == raftstore.RoleLeader {
			r.Shard = st.Descriptor
		}
		ops += r.OpsPerSec
		req.Replicas = append(req.Replicas, r)
	}
	req.Stats = &shoalpb.NodeStats{OpsPerSec: ops}
	req.Snapshots = n.snapshotReports()
	if sp := n.space.Cached(); sp.Known {
		req.Stats.CapacityBytes, req.Stats.FreeBytes, req.Stats.DiskFull = sp.Total, sp.Available, sp.Full
		req.Stats.DiskExhausted = sp.Exhausted
	}
	req.Stats.UsedBytes = n.engine.Metrics().DiskSpaceUsage()
	if err := n.Failure(); err != nil {
		return nil, err // failed while this beat was being put together
	}
	var resp *shoalpb.HeartbeatResponse
	err = n.masters.Call(ctx, func(ctx context.Context, c shoalpb.MasterClient) error {
		var err error
		resp, err = c.Heartbeat(ctx, req)
		return err
	})
	return resp, err
}

// doWork carries out what the master asked for.
func (n *Node) doWork(ctx context.Context, work []*shoalpb.Work) {
	for _, w := range work {
		switch w := w.Work.(type) {
		case *shoalpb.Work_CreateReplica:
			d := w.CreateReplica
			if err := n.store.BootstrapReplica(d); err != nil {
				n.log.Warn("cannot create replica", "shard", d.ShardId, "err", err)
			}
		case *shoalpb.Work_TransferLeader:
			tl := w.TransferLeader
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if err := n.store.TransferLeader(tctx, tl.ShardId, tl.ToReplica); err != nil && !errors.Is(err, raftstore.ErrNotLeader) {
					n.log.Debug("leader transfer failed", "shard", tl.ShardId, "to", tl.ToReplica, "err", err)
				}
			}()
		}
	}
}

// replicaStats turns cumulative replica counters into rates and caches
// size estimates, which cost a lookup in Pebble's metadata each.
type replicaStats struct {
	applied map[uint64]sample
	sizes   map[uint64]sizeSample
}

type sample struct {
	applied uint64
	at      time.Time
}

type sizeSample struct {
	bytes uint64
	at    time.Time
}

func newReplicaStats() *replicaStats {
	return &replicaStats{applied: map[uint64]sample{}, sizes: map[uint64]sizeSample{}}
}

func (s *replicaStats) rate(shard, applied uint64, now time.Time) float64 {
	prev, ok := s.applied[shard]
	s.applied[shard] = sample{applied, now}
	if !ok || applied < prev.applied {
		return 0
	}
	d := now.Sub(prev.at).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(applied-prev.applied) / d
}

// sizeEvery is how often a replica's size estimate is refreshed.
const sizeEvery = 10 * time.Second

func (s *replicaStats) size(eng *storage.Engine, d *shoalpb.ShardDescriptor, now time.Time) uint64 {
	if c, ok := s.sizes[d.ShardId]; ok && now.Sub(c.at) < sizeEvery {
		return c.bytes
	}
	b, err := eng.EstimateDiskUsage(keys.DataSpan(d.StartSlot, d.EndSlot))
	if err != nil {
		return s.sizes[d.ShardId].bytes
	}
	s.sizes[d.ShardId] = sizeSample{b, now}
	return b
}
