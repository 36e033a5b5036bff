package master_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/master"
	"github.com/shoaldb/shoal/internal/node"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// waitBootstrapped waits until some master leads a bootstrapped cluster.
func waitBootstrapped(t *testing.T, ctx context.Context, c *tc.Cluster) *shoalpb.ClusterInfo {
	t.Helper()
	var cl *shoalpb.ClusterInfo
	if err := tc.WaitFor(ctx, func() error {
		m, err := c.MasterLeader()
		if err != nil {
			return err
		}
		if cl = m.Server().Cluster(); cl == nil {
			return errors.New("not bootstrapped")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return cl
}

// dialMasters connects to the cluster's masters over gRPC; its calls
// follow the leader.
func dialMasters(t *testing.T, c *tc.Cluster) *client.MasterConn {
	t.Helper()
	conn, err := client.DialMasters(c.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// dialMaster connects to one master over gRPC.
func dialMaster(t *testing.T, addr string) shoalpb.MasterClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return shoalpb.NewMasterClient(conn)
}

// registerFake registers a node that is not running (a fake one) through
// the leader.
func registerFake(ctx context.Context, conn *client.MasterConn, req *shoalpb.RegisterNodeRequest) (*shoalpb.NodeInfo, error) {
	var resp *shoalpb.RegisterNodeResponse
	err := conn.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		var err error
		resp, err = mc.RegisterNode(cctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.Node, nil
}

// leaderState reads the cluster state over gRPC from the master that
// leads (followers serve GetCluster too, without the leader's memory).
func leaderState(t *testing.T, ctx context.Context, c *tc.Cluster) *shoalpb.ClusterState {
	t.Helper()
	var st *shoalpb.ClusterState
	if err := tc.WaitFor(ctx, func() error {
		m, err := c.MasterLeader()
		if err != nil {
			return err
		}
		conn, err := grpc.NewClient(m.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		if st, err = shoalpb.NewMasterClient(conn).GetCluster(ctx, &shoalpb.GetClusterRequest{}); err != nil {
			return err
		}
		if st.LeaderMaster != m.ID {
			return fmt.Errorf("master %d answered, master %d leads", m.ID, st.LeaderMaster)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return st
}

func nodeIn(st *shoalpb.ClusterState, id uint64) *shoalpb.NodeInfo {
	for _, n := range st.Nodes {
		if n.Id == id {
			return n
		}
	}
	return nil
}

// metric reads a counter from a master's /metrics.
func metric(t *testing.T, m *tc.Master, name string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Server().HTTPHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("master %d's /metrics has no %s", m.ID, name)
	return 0
}

// makeLeader stops and restarts the leading master until m leads.
func makeLeader(t *testing.T, ctx context.Context, c *tc.Cluster, m *tc.Master) {
	t.Helper()
	for {
		var l *tc.Master
		if err := tc.WaitFor(ctx, func() error {
			var err error
			l, err = c.MasterLeader()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if l == m {
			return
		}
		l.Stop()
		if err := tc.WaitFor(ctx, func() error {
			_, err := c.MasterLeader()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := l.Restart(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRegisterNodeIsIdempotent: a new node's registration retried with the
// same token (its answer was lost) gets the same node over gRPC, after a
// restart of every master, and on a master that learnt the registration
// from a snapshot; a token whose node was removed is refused.
func TestRegisterNodeIsIdempotent(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: 0, Shards: 8, Replicas: 3, Master: func(cfg *master.Config) {
		// A short meta log: a master that was down catches up by snapshot.
		cfg.Store = func(o *raftstore.Options) { o.MaxLogEntries = 4 }
	}})
	ctx := ctxFor(t, 120*time.Second)
	cl := waitBootstrapped(t, ctx, c)
	conn := dialMasters(t, c)
	reg := func(token, addr string) (*shoalpb.NodeInfo, error) {
		return registerFake(ctx, conn, &shoalpb.RegisterNodeRequest{Addr: addr, Weight: 1, RegistrationToken: token})
	}
	mustReg := func(token, addr string) *shoalpb.NodeInfo {
		t.Helper()
		n, err := reg(token, addr)
		if err != nil {
			t.Fatalf("register with token %q: %v", token, err)
		}
		return n
	}
	a := mustReg("token-a", "127.0.0.1:1")
	if again := mustReg("token-a", "127.0.0.1:1"); again.Id != a.Id || again.RegisteredMs != a.RegisteredMs {
		t.Fatalf("the same token registered node %d, then node %d", a.Id, again.Id)
	}
	b := mustReg("token-b", "127.0.0.1:2")
	if b.Id == a.Id {
		t.Fatalf("two tokens got the same node %d", a.Id)
	}
	st := leaderState(t, ctx, c)
	if len(st.Nodes) != 2 {
		t.Fatalf("%d nodes after three registrations with two tokens, want 2: %v", len(st.Nodes), st.Nodes)
	}

	// A removed node's token does not bring it back.
	if err := conn.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
		_, err := mc.SetNodeState(ctx, &shoalpb.SetNodeStateRequest{NodeId: b.Id, State: shoalpb.NodeState_NODE_STATE_REMOVED})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	_, err := reg("token-b", "127.0.0.1:2")
	if !errors.Is(err, client.ErrUnknownNode) || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("registration with the token of a removed node: %v, want an unknown-node error saying it was removed", err)
	}
	t.Logf("refused: %v", err)

	// Every master restarts from its disk.
	for _, m := range c.Masters {
		m.Stop()
	}
	for _, m := range c.Masters {
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	if n := mustReg("token-a", "127.0.0.1:1"); n.Id != a.Id {
		t.Fatalf("after a restart of the masters token-a registered node %d, not %d", n.Id, a.Id)
	}

	// A master that was down while a token was registered learns it from a
	// snapshot (the others truncated their logs).
	f := c.MasterFollower()
	if f == nil {
		t.Fatal("no follower")
	}
	f.Stop()
	leader, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	cNode := mustReg("token-c", "127.0.0.1:3")
	// Its heartbeats' data sequence, recorded in the meta group, goes in
	// the snapshot too.
	if err := conn.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
		_, err := mc.Heartbeat(ctx, &shoalpb.HeartbeatRequest{ClusterId: cl.ClusterId, NodeId: cNode.Id, DataSeq: 500})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if got := leaderState(t, ctx, c).RecordedDataSeqs[cNode.Id]; got != 500 {
			return fmt.Errorf("node %d's recorded data sequence is %d, want 500", cNode.Id, got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := conn.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
			_, err := mc.SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: i%2 == 0})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	// A truncation after the writes leaves nothing of what f lacks.
	truncated := metric(t, leader, "shoal_raft_log_truncations_total")
	if err := tc.WaitFor(ctx, func() error {
		if got := metric(t, leader, "shoal_raft_log_truncations_total"); got <= truncated {
			return fmt.Errorf("leader's log not truncated since the writes (%v truncations)", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if got := metric(t, f, "shoal_raft_snapshots_applied_total"); got < 1 {
			return fmt.Errorf("master %d applied %v snapshots", f.ID, got)
		}
		got, _ := f.Server().GetCluster(ctx, &shoalpb.GetClusterRequest{})
		if nodeIn(got, cNode.Id) == nil {
			return fmt.Errorf("master %d does not know node %d yet", f.ID, cNode.Id)
		}
		if seq := got.RecordedDataSeqs[cNode.Id]; seq != 500 {
			return fmt.Errorf("master %d has node %d's data sequence at %d, want 500", f.ID, cNode.Id, seq)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	makeLeader(t, ctx, c, f)
	if n := mustReg("token-c", "127.0.0.1:3"); n.Id != cNode.Id {
		t.Fatalf("master %d, which got token-c in a snapshot, registered node %d for it, not %d", f.ID, n.Id, cNode.Id)
	}
	if n := mustReg("token-a", "127.0.0.1:1"); n.Id != a.Id {
		t.Fatalf("master %d registered node %d for token-a, not %d", f.ID, n.Id, a.Id)
	}
	if _, err := reg("token-b", "127.0.0.1:2"); !errors.Is(err, client.ErrUnknownNode) {
		t.Fatalf("master %d: token of a removed node: %v", f.ID, err)
	}
	st = leaderState(t, ctx, c)
	if len(st.Nodes) != 3 {
		t.Fatalf("%d nodes, want 3 (a, b removed, c): %v", len(st.Nodes), st.Nodes)
	}
}

// lossyMaster stands between a node and the real master: it forwards what
// a node calls, but drops the answers of the first `lose` registrations
// after the master committed them.
type lossyMaster struct {
	shoalpb.UnimplementedMasterServer
	mc     shoalpb.MasterClient
	lose   atomic.Int64
	mu     sync.Mutex
	tokens []string
}

func (p *lossyMaster) RegisterNode(ctx context.Context, req *shoalpb.RegisterNodeRequest) (*shoalpb.RegisterNodeResponse, error) {
	p.mu.Lock()
	p.tokens = append(p.tokens, req.RegistrationToken)
	p.mu.Unlock()
	resp, err := p.mc.RegisterNode(ctx, req)
	if err == nil && p.lose.Add(-1) >= 0 {
		return nil, status.Error(codes.Unavailable, "the answer was lost")
	}
	return resp, err
}

func (p *lossyMaster) Heartbeat(ctx context.Context, req *shoalpb.HeartbeatRequest) (*shoalpb.HeartbeatResponse, error) {
	return p.mc.Heartbeat(ctx, req)
}

func (p *lossyMaster) GetRoutes(ctx context.Context, req *shoalpb.GetRoutesRequest) (*shoalpb.RouteTable, error) {
	return p.mc.GetRoutes(ctx, req)
}

func (p *lossyMaster) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.tokens...)
}

// startLossyMaster serves a lossyMaster in front of addr.
func startLossyMaster(t *testing.T, addr string) (*lossyMaster, string) {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(tc.Loopback, "0"))
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyMaster{mc: dialMaster(t, addr)}
	srv := grpc.NewServer()
	shoalpb.RegisterMasterServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return p, lis.Addr().String()
}

// TestNodeRetriesRegistrationWithItsToken: a real node whose registration
// committed but whose answer was lost, retried and then restarted before
// it learnt its ID, becomes one node: its token was on disk before its
// first attempt.
func TestNodeRetriesRegistrationWithItsToken(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 0, Shards: 4, Replicas: 1})
	ctx := ctxFor(t, 60*time.Second)
	waitBootstrapped(t, ctx, c)
	p, paddr := startLossyMaster(t, c.Masters[0].Addr)
	dir := t.TempDir()
	cfg := func() node.Config {
		return node.Config{Masters: []string{paddr}, DataDir: dir, ListenAddr: net.JoinHostPort(tc.Loopback, "0"),
			HeartbeatInterval: 100 * time.Millisecond}
	}

	// Every answer is lost: the node gives up (its start times out).
	p.lose.Store(1 << 30)
	sctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	_, err := node.Start(sctx, cfg())
	cancel()
	if err == nil {
		t.Fatal("the node started though every registration answer was lost")
	}
	t.Logf("first start: %v", err)
	first := p.seen()
	if len(first) < 2 || first[0] == "" {
		t.Fatalf("registrations sent %q: want at least two, with a token", first)
	}
	for _, tok := range first {
		if tok != first[0] {
			t.Fatalf("the retries changed the token: %q", first)
		}
	}

	// The next start loses one answer more, then gets through.
	p.lose.Store(1)
	n, err := node.Start(ctx, cfg())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop() })
	all := p.seen()
	for _, tok := range all {
		if tok != first[0] {
			t.Fatalf("the restarted node registered with another token: %q", all)
		}
	}
	st, err := c.Masters[0].Server().GetCluster(ctx, &shoalpb.GetClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].Id != n.ID() {
		t.Fatalf("%d registrations made nodes %v; want node %d alone", len(all), st.Nodes, n.ID())
	}
	// It heartbeats as that node.
	if err := tc.WaitFor(ctx, func() error {
		if _, ok := c.Masters[0].Server().Heartbeats()[n.ID()]; !ok {
			return fmt.Errorf("no heartbeat from node %d", n.ID())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestHeartbeatStatsInClusterState: the leading master keeps what a
// node's heartbeat says (stats, replicas, leaders, when) and GetCluster
// shows it; a follower has none.
func TestHeartbeatStatsInClusterState(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: 0, Shards: 8, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	cl := waitBootstrapped(t, ctx, c)
	conn := dialMasters(t, c)
	n, err := registerFake(ctx, conn, &shoalpb.RegisterNodeRequest{Addr: "127.0.0.1:1", Weight: 1, RegistrationToken: "stats"})
	if err != nil {
		t.Fatal(err)
	}
	stats := &shoalpb.NodeStats{CapacityBytes: 10 << 30, UsedBytes: 123456789, OpsPerSec: 42.5}
	sent := time.Now()
	if err := conn.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
		_, err := mc.Heartbeat(ctx, &shoalpb.HeartbeatRequest{ClusterId: cl.ClusterId, NodeId: n.Id, Stats: stats,
			Replicas: []*shoalpb.ReplicaReport{
				{ShardId: 1, ReplicaId: 11, Role: string(raftstore.RoleLeader)},
				{ShardId: 2, ReplicaId: 12, Role: string(raftstore.RoleFollower)},
				{ShardId: 3, ReplicaId: 13, Role: string(raftstore.RoleFollower)},
			}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	st := leaderState(t, ctx, c)
	hb := st.NodeHeartbeats[n.Id]
	switch {
	case hb == nil:
		t.Fatalf("no heartbeat of node %d in the cluster state: %v", n.Id, st.NodeHeartbeats)
	case hb.Stats.GetCapacityBytes() != stats.CapacityBytes || hb.Stats.GetUsedBytes() != stats.UsedBytes || hb.Stats.GetOpsPerSec() != stats.OpsPerSec:
		t.Fatalf("stats %v, heartbeat said %v", hb.Stats, stats)
	case hb.Replicas != 3 || hb.Leaders != 1:
		t.Fatalf("%d replicas and %d leaders, heartbeat said 3 and 1", hb.Replicas, hb.Leaders)
	case hb.LastHeartbeatMs < sent.UnixMilli() || hb.LastHeartbeatMs > time.Now().UnixMilli():
		t.Fatalf("last heartbeat at %d, sent between %d and now", hb.LastHeartbeatMs, sent.UnixMilli())
	case hb.AgeMs < 0 || hb.AgeMs > time.Since(sent).Milliseconds():
		t.Fatalf("heartbeat %d ms old, sent %v ago", hb.AgeMs, time.Since(sent))
	}
	f := c.MasterFollower()
	if f == nil {
		t.Fatal("no follower")
	}
	fst, err := dialMaster(t, f.Addr).GetCluster(ctx, &shoalpb.GetClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fst.NodeHeartbeats) != 0 {
		t.Fatalf("follower %d reports heartbeats %v", f.ID, fst.NodeHeartbeats)
	}
}

// TestHeartbeatStatsOfRealNodes: running nodes' heartbeats carry their
// disk usage and the replicas they host, up to the cluster state.
func TestHeartbeatStatsOfRealNodes(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: 8, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	mc := dialMaster(t, c.Masters[0].Addr)
	if err := tc.WaitFor(ctx, func() error {
		st, err := mc.GetCluster(ctx, &shoalpb.GetClusterRequest{})
		if err != nil {
			return err
		}
		leaders := 0
		for _, n := range c.Nodes {
			hb := st.NodeHeartbeats[n.ID]
			switch {
			case hb == nil:
				return fmt.Errorf("no heartbeat from node %d", n.ID)
			case hb.Stats.GetUsedBytes() == 0 || hb.Stats.GetCapacityBytes() < hb.Stats.GetUsedBytes():
				return fmt.Errorf("node %d: stats %v", n.ID, hb.Stats)
			case hb.Replicas != 8:
				return fmt.Errorf("node %d hosts %d replicas, want 8", n.ID, hb.Replicas)
			}
			leaders += int(hb.Leaders)
		}
		if leaders != 8 {
			return fmt.Errorf("nodes report %d leaders of 8 shards", leaders)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestFailureDetectorHeartbeatsResumed: a node that stops heartbeating
// goes down after NodeDownAfter, and up again, with its reason and a new
// state_since, when its heartbeats resume; registering again brings a
// down node up too, and the master logs that transition.
func TestFailureDetectorHeartbeatsResumed(t *testing.T) {
	const downAfter = time.Second
	logs := &tc.SyncBuffer{}
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 0, Shards: 8, Replicas: 3,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Master: func(cfg *master.Config) { cfg.NodeDownAfter = downAfter }})
	ctx := ctxFor(t, 60*time.Second)
	cl := waitBootstrapped(t, ctx, c)
	mc := dialMaster(t, c.Masters[0].Addr)
	reg := &shoalpb.RegisterNodeRequest{Addr: "127.0.0.1:1", Weight: 1, RegistrationToken: "fd"}
	resp, err := mc.RegisterNode(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Node.Id
	beat := func() {
		t.Helper()
		if _, err := mc.Heartbeat(ctx, &shoalpb.HeartbeatRequest{ClusterId: cl.ClusterId, NodeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	get := func() *shoalpb.NodeInfo {
		t.Helper()
		st, err := mc.GetCluster(ctx, &shoalpb.GetClusterRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return nodeIn(st, id)
	}
	waitDown := func() (*shoalpb.NodeInfo, time.Time) {
		t.Helper()
		// Taken before the heartbeat: the master saw it at this time or
		// later.
		last := time.Now()
		beat()
		var n *shoalpb.NodeInfo
		if err := tc.WaitFor(ctx, func() error {
			if n = get(); n.State != shoalpb.NodeState_NODE_STATE_DOWN {
				return fmt.Errorf("node %d is %v", id, n.State)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if silent := time.Since(last); silent < downAfter {
			t.Fatalf("node down %v after its last heartbeat, before NodeDownAfter (%v)", silent, downAfter)
		}
		if !strings.HasPrefix(n.StateReason, "no heartbeat for") {
			t.Fatalf("down for %q", n.StateReason)
		}
		return n, last
	}

	down, last := waitDown()
	t.Logf("down %v after the last heartbeat: %q", time.Since(last).Round(10*time.Millisecond), down.StateReason)
	beat()
	up := get()
	if up.State != shoalpb.NodeState_NODE_STATE_UP || up.StateReason != "heartbeats resumed" {
		t.Fatalf("after a heartbeat the down node is %v (%q), want up (heartbeats resumed)", up.State, up.StateReason)
	}
	if up.StateSinceMs <= down.StateSinceMs {
		t.Fatalf("state since %d, not after the down state's %d", up.StateSinceMs, down.StateSinceMs)
	}

	// Down again; this time it comes back by registering again.
	down, _ = waitDown()
	reg.NodeId, reg.ClusterId, reg.RegistrationToken = id, cl.ClusterId, ""
	if _, err := mc.RegisterNode(ctx, reg); err != nil {
		t.Fatal(err)
	}
	up = get()
	if up.State != shoalpb.NodeState_NODE_STATE_UP || up.StateReason != "registered again" || up.StateSinceMs <= down.StateSinceMs {
		t.Fatalf("after registering again the down node is %v (%q since %d, down since %d)", up.State, up.StateReason, up.StateSinceMs, down.StateSinceMs)
	}
	found := false
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `msg="node registered"`) && strings.Contains(line, fmt.Sprintf(" node=%d ", id)) && strings.Contains(line, "again=true") &&
			strings.Contains(line, "state=up") && strings.Contains(line, `reason="registered again"`) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no log of the registration with its state and reason:\n%s", logs)
	}
}

// TestNodeZonesAndWeights: nodes started with zones and weights show them
// in the cluster state and the route table.
func TestNodeZonesAndWeights(t *testing.T) {
	zones := []string{"az-1", "az-2", "az-3", "az-1"}
	weights := []float64{1, 2, 0.5, 3}
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 4, Shards: 8, Replicas: 3, Zones: zones, Weights: weights})
	ctx := ctxFor(t, 60*time.Second)
	mc := dialMaster(t, c.Masters[0].Addr)
	st, err := mc.GetCluster(ctx, &shoalpb.GetClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != len(c.Nodes) {
		t.Fatalf("%d nodes registered, want %d", len(st.Nodes), len(c.Nodes))
	}
	routes := map[uint64]*shoalpb.NodeInfo{}
	for _, n := range st.Routes.Nodes {
		routes[n.Id] = n
	}
	for i, tn := range c.Nodes {
		for _, n := range []*shoalpb.NodeInfo{nodeIn(st, tn.ID), routes[tn.ID]} {
			if n == nil {
				t.Fatalf("node %d missing: %v", tn.ID, st)
			}
			if n.Zone != zones[i] || n.Weight != weights[i] || n.Addr != tn.Addr {
				t.Errorf("node %d (%s): zone %q weight %v, started with zone %q weight %v at %s", n.Id, n.Addr, n.Zone, n.Weight, zones[i], weights[i], tn.Addr)
			}
		}
	}
}
