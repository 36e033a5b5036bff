package master_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/master"
	"github.com/shoaldb/shoal/internal/node"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
	"github.com/shoaldb/shoal/internal/transport"
)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// leadersPerNode counts the shards each node leads.
func leadersPerNode(c *tc.Cluster) map[uint64]int {
	out := map[uint64]int{}
	for _, d := range c.Shards {
		if n, err := c.Leader(d.ShardId); err == nil {
			out[n.ID]++
		}
	}
	return out
}

func TestBootstrapPlacesShardsAndSpreadsLeaders(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: 5, Shards: 64, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	if st.Cluster.Shards != 64 || st.Cluster.Replicas != 3 || len(st.Cluster.ClusterId) != 16 {
		t.Fatalf("cluster %v", st.Cluster)
	}
	if len(st.Nodes) != 5 {
		t.Fatalf("%d nodes registered, want 5", len(st.Nodes))
	}
	perNode := map[uint64]int{}
	for _, rt := range st.Routes.Shards {
		seen := map[uint64]bool{}
		for _, r := range rt.Shard.Replicas {
			if seen[r.NodeId] {
				t.Fatalf("shard %d has two replicas on node %d", rt.Shard.ShardId, r.NodeId)
			}
			seen[r.NodeId] = true
			perNode[r.NodeId]++
		}
	}
	for _, n := range c.Nodes {
		if perNode[n.ID] < 38 || perNode[n.ID] > 39 {
			t.Errorf("node %d has %d replicas, want 38-39 of 192", n.ID, perNode[n.ID])
		}
		if got := n.Node().ClusterID(); got != st.Cluster.ClusterId {
			t.Errorf("node %d is in cluster %q, want %q", n.ID, got, st.Cluster.ClusterId)
		}
	}
	// The scheduler's leader balance spreads 64 leaders over 5 nodes within
	// its tolerance (1.10x the mean of 12.8): 12 to 14 each.
	if err := tc.WaitFor(ctx, func() error {
		l := leadersPerNode(c)
		for _, n := range c.Nodes {
			if l[n.ID] < 12 || l[n.ID] > 14 {
				return fmt.Errorf("leaders per node %v", l)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Leader hints reach the route table.
	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		for _, rt := range st.Routes.Shards {
			n, err := c.Leader(rt.Shard.ShardId)
			if err != nil {
				return err
			}
			st, _ := n.Store().Status(rt.Shard.ShardId)
			if rt.LeaderReplica != st.ReplicaID {
				return fmt.Errorf("shard %d: hint %d, leader %d", rt.Shard.ShardId, rt.LeaderReplica, st.ReplicaID)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestMasterLeaderFailover kills the master leader of a group of 3 and of
// 5 while 5 nodes heartbeat and registrations are under way: a new leader
// serves a metadata write over gRPC within 3 s, no metadata is lost, a
// registration in flight makes one node, and every node heartbeats the new
// leader by itself.
func TestMasterLeaderFailover(t *testing.T) {
	for _, masters := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d masters", masters), func(t *testing.T) { testMasterLeaderFailover(t, masters) })
	}
}

func testMasterLeaderFailover(t *testing.T, masters int) {
	c := tc.Start(t, tc.Options{Masters: masters, Nodes: 5, Shards: 16, Replicas: 3})
	ctx := ctxFor(t, 90*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	conn := dialMasters(t, c)
	// The fake nodes registered below must get no replicas.
	if err := conn.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
		_, err := mc.SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	leader, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	heartbeating := func(m *tc.Master, nodes []*tc.Node) error {
		hb := m.Server().Heartbeats()
		for _, n := range nodes {
			if _, ok := hb[n.ID]; !ok {
				return fmt.Errorf("master %d has no heartbeat from node %d (has %v)", m.ID, n.ID, hb)
			}
		}
		return nil
	}
	if err := tc.WaitFor(ctx, func() error { return heartbeating(leader, c.Nodes) }); err != nil {
		t.Fatal(err)
	}
	before := leaderState(t, ctx, c)
	if before.LeaderMaster != leader.ID || len(before.Nodes) != 5 {
		t.Fatalf("before the kill: master %d leads, %d nodes", before.LeaderMaster, len(before.Nodes))
	}
	original := slices.Clone(c.Nodes)

	// Registrations of fake nodes, one every 20ms, each retried with its
	// token until it is answered; and a sixth real node joining.
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	type reg struct {
		addr string
		id   uint64
	}
	var (
		mu    sync.Mutex
		acked []reg
		sent  int
	)
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			addr := fmt.Sprintf("127.0.0.1:%d", 20000+i)
			mu.Lock()
			sent++
			mu.Unlock()
			n, err := registerFake(wctx, conn, &shoalpb.RegisterNodeRequest{Addr: addr, Weight: 1, RegistrationToken: fmt.Sprintf("failover-%d", i)})
			if err != nil {
				if wctx.Err() == nil {
					t.Errorf("registration %d: %v", i, err)
				}
				return
			}
			mu.Lock()
			acked = append(acked, reg{addr, n.Id})
			mu.Unlock()
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	var sixth *tc.Node
	wg.Add(1)
	go func() {
		defer wg.Done()
		var err error
		if sixth, err = c.AddNode(); err != nil {
			t.Error(err)
		}
	}()
	if err := tc.WaitFor(ctx, func() error {
		if ackedCount() < 3 {
			return errors.New("registrations not flowing yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Kill the leader; the clock runs until a new leader serves a write.
	clients := map[uint64]shoalpb.MasterClient{}
	for _, m := range c.Masters {
		if m != leader {
			clients[m.ID] = dialMaster(t, m.Addr)
		}
	}
	killed := time.Now()
	leader.Stop()
	ackedAtKill := ackedCount()
	var next *tc.Master
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for next == nil {
		for _, m := range c.Masters {
			if m == leader {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
			_, err := clients[m.ID].SetScheduling(cctx, &shoalpb.SetSchedulingRequest{Paused: true})
			cancel()
			if err == nil {
				next = m
				break
			}
		}
		if next != nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("no master served a write after the leader was killed")
		case <-poll.C:
		}
	}
	took := time.Since(killed)
	t.Logf("%d masters: master %d served a metadata write %v after master %d was killed",
		masters, next.ID, took.Round(time.Millisecond), leader.ID)
	if took > 3*time.Second {
		t.Errorf("a new master leader served a write after %v, want < 3s", took)
	}

	// Writes go on through the new leader, then stop.
	if err := tc.WaitFor(ctx, func() error {
		if ackedCount() < ackedAtKill+3 {
			return errors.New("registrations not flowing through the new leader")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stopWriters()
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Nothing was lost; a registration in flight made one node.
	after := leaderState(t, ctx, c)
	if after.LeaderMaster != next.ID {
		t.Fatalf("master %d leads now, not %d", after.LeaderMaster, next.ID)
	}
	if !proto.Equal(before.Cluster, after.Cluster) {
		t.Fatalf("cluster %v became %v", before.Cluster, after.Cluster)
	}
	if after.Routes.Version < before.Routes.Version {
		t.Fatalf("route table version %d, was %d before the kill", after.Routes.Version, before.Routes.Version)
	}
	for _, n := range before.Nodes {
		a := nodeIn(after, n.Id)
		if a == nil || a.Addr != n.Addr || a.RegisteredMs != n.RegisteredMs || a.State != shoalpb.NodeState_NODE_STATE_UP {
			t.Fatalf("node %v became %v", n, a)
		}
	}
	byAddr := map[string][]uint64{}
	for _, n := range after.Nodes {
		byAddr[n.Addr] = append(byAddr[n.Addr], n.Id)
	}
	for addr, ids := range byAddr {
		if len(ids) > 1 {
			t.Errorf("nodes %v registered at %s: a retried registration made a second node", ids, addr)
		}
	}
	for _, r := range acked {
		if ids := byAddr[r.addr]; len(ids) != 1 || ids[0] != r.id {
			t.Errorf("registration at %s answered node %d; the new leader has %v", r.addr, r.id, ids)
		}
	}
	if ids := byAddr[sixth.Addr]; len(ids) != 1 || ids[0] != sixth.ID {
		t.Errorf("the sixth node is node %d at %s; the new leader has %v there", sixth.ID, sixth.Addr, ids)
	}
	t.Logf("%d registrations sent, %d answered (%d before the kill); %d nodes", sent, len(acked), ackedAtKill, len(after.Nodes))

	// The nodes heartbeat the new leader without help.
	if err := tc.WaitFor(ctx, func() error { return heartbeating(next, append(original, sixth)) }); err != nil {
		t.Fatal(err)
	}
	// The old leader comes back as a follower with everything.
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		got, _ := leader.Server().GetRoutes(ctx, &shoalpb.GetRoutesRequest{})
		want, _ := next.Server().GetRoutes(ctx, &shoalpb.GetRoutesRequest{})
		if !proto.Equal(got, want) {
			return fmt.Errorf("restarted master has version %d, leader %d", got.Version, want.Version)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestRestartAllMasters stops every master and starts them again from
// disk: the same cluster comes back, and the nodes carry on.
func TestRestartAllMasters(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: 3, Shards: 8, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	before, err := c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Masters {
		m.Stop()
	}
	for _, m := range c.Masters {
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	var after *shoalpb.ClusterState
	if err := tc.WaitFor(ctx, func() error {
		after, err = c.ClusterState()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(before.Cluster, after.Cluster) {
		t.Fatalf("cluster %v came back as %v", before.Cluster, after.Cluster)
	}
	for i, n := range before.Nodes {
		a := after.Nodes[i]
		if n.Id != a.Id || n.Addr != a.Addr || n.RegisteredMs != a.RegisteredMs {
			t.Fatalf("node %v came back as %v", n, a)
		}
	}
	for i, rt := range before.Routes.Shards {
		if !proto.Equal(rt.Shard, after.Routes.Shards[i].Shard) {
			t.Fatalf("shard %v came back as %v", rt.Shard, after.Routes.Shards[i].Shard)
		}
	}
	// Nodes heartbeat the new leader: none is declared down.
	if err := tc.WaitFor(ctx, func() error {
		m, err := c.MasterLeader()
		if err != nil {
			return err
		}
		if len(m.Server().Heartbeats()) < 3 {
			return fmt.Errorf("heartbeats from %v", m.Server().Heartbeats())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestFailureDetector: a silent node goes down with a reason, and up again
// when it heartbeats; an administrator drains and removes nodes; a removed
// node is refused.
func TestFailureDetector(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 4, Shards: 8, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	state := func(id uint64) *shoalpb.NodeInfo {
		st, err := c.ClusterState()
		if err != nil {
			return nil
		}
		for _, n := range st.Nodes {
			if n.Id == id {
				return n
			}
		}
		return nil
	}
	waitState := func(id uint64, want shoalpb.NodeState) *shoalpb.NodeInfo {
		t.Helper()
		var n *shoalpb.NodeInfo
		if err := tc.WaitFor(ctx, func() error {
			if n = state(id); n == nil || n.State != want {
				return fmt.Errorf("node %d is %v", id, n.GetState())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	victim := c.Nodes[1]
	stopped := time.Now()
	victim.Stop()
	n := waitState(victim.ID, shoalpb.NodeState_NODE_STATE_DOWN)
	t.Logf("node down after %v: %q", time.Since(stopped).Round(100*time.Millisecond), n.StateReason)
	// Its last heartbeat was at most one interval (200ms) before it
	// stopped; it must have been silent for NodeDownAfter (3s).
	if time.Since(stopped) < 3*time.Second-200*time.Millisecond {
		t.Fatalf("node down after %v, before NodeDownAfter (3s)", time.Since(stopped))
	}
	if n.StateReason == "" || n.StateSinceMs == 0 {
		t.Fatalf("down without a reason: %v", n)
	}
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	n = waitState(victim.ID, shoalpb.NodeState_NODE_STATE_UP)
	t.Logf("node up again: %q", n.StateReason)

	conn, err := client.DialMasters(c.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	set := func(id uint64, s shoalpb.NodeState) error {
		return conn.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
			_, err := mc.SetNodeState(ctx, &shoalpb.SetNodeStateRequest{NodeId: id, State: s, Reason: "test"})
			return err
		})
	}
	if err := set(c.Nodes[2].ID, shoalpb.NodeState_NODE_STATE_DRAINING); err != nil {
		t.Fatal(err)
	}
	waitState(c.Nodes[2].ID, shoalpb.NodeState_NODE_STATE_DRAINING)
	if err := set(c.Nodes[3].ID, shoalpb.NodeState_NODE_STATE_DOWN); err == nil {
		t.Fatal("an administrator set a node down")
	}
	// A live node with replicas is not removed; once it is down, it is.
	if err := set(c.Nodes[3].ID, shoalpb.NodeState_NODE_STATE_REMOVED); err == nil {
		t.Fatal("a live node holding replicas was removed")
	}
	c.Nodes[3].Stop()
	waitState(c.Nodes[3].ID, shoalpb.NodeState_NODE_STATE_DOWN)
	// Undrain is from draining only: set up by hand, a down node would be
	// marked down again with its repair clock started over.
	if err := set(c.Nodes[3].ID, shoalpb.NodeState_NODE_STATE_UP); err == nil {
		t.Fatal("an administrator set a down node up")
	}
	if err := set(c.Nodes[3].ID, shoalpb.NodeState_NODE_STATE_REMOVED); err != nil {
		t.Fatal(err)
	}
	waitState(c.Nodes[3].ID, shoalpb.NodeState_NODE_STATE_REMOVED)
	err = c.Nodes[3].Restart()
	if !errors.Is(err, client.ErrUnknownNode) {
		t.Fatalf("removed node restarted: %v", err)
	}
}

// TestNodeOfAnotherClusterRefused starts a node on the data of another
// cluster: it is refused with a clear error and its data is left alone.
func TestNodeOfAnotherClusterRefused(t *testing.T) {
	a := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: 4, Replicas: 3})
	b := tc.Start(t, tc.Options{Masters: 1, Nodes: 0, Shards: 4, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := a.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if m, err := b.MasterLeader(); err != nil || m.Server().Cluster() == nil {
			return errors.New("cluster b not bootstrapped")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n := a.Nodes[0]
	replicas := len(n.Store().Replicas())
	n.Stop()
	_, err := node.Start(ctx, node.Config{Masters: b.MasterAddrs(), DataDir: n.Dir(), ListenAddr: "127.0.0.1:0"})
	if !errors.Is(err, node.ErrWrongCluster) {
		t.Fatalf("node of cluster a joined cluster b: %v", err)
	}
	t.Logf("refused: %v", err)
	if err := n.Restart(); err != nil {
		t.Fatal(err)
	}
	if got := len(n.Store().Replicas()); got != replicas {
		t.Fatalf("node came back with %d replicas, had %d", got, replicas)
	}
}

// TestBootstrapIsFixed: the shard count and replication factor cannot
// change once the cluster exists.
func TestBootstrapIsFixed(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 0, Shards: 16, Replicas: 3})
	ctx := ctxFor(t, 30*time.Second)
	m := c.Masters[0]
	if err := tc.WaitFor(ctx, func() error {
		if m.Server().Cluster() == nil {
			return errors.New("not bootstrapped")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(m.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = shoalpb.NewMasterClient(conn).Bootstrap(ctx, &shoalpb.BootstrapRequest{Shards: 32, Replicas: 3})
	if d := client.Detail(err); d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_BOOTSTRAP_MISMATCH {
		t.Fatalf("bootstrap with other numbers: %v", err)
	}
	cl, err := shoalpb.NewMasterClient(conn).Bootstrap(ctx, &shoalpb.BootstrapRequest{Shards: 16, Replicas: 3})
	if err != nil || cl.ClusterId != m.Server().Cluster().ClusterId {
		t.Fatalf("bootstrap again with the same numbers: %v, %v", cl, err)
	}
	m.Stop()
	_, err = master.Start(ctx, master.Config{ID: 1, Peers: map[uint64]string{1: "127.0.0.1:0"}, DataDir: m.Dir(), Bootstrap: true, Shards: 64, Replicas: 3})
	if err == nil {
		t.Fatal("restarted with --shards 64 over a cluster of 16")
	}
	t.Logf("refused: %v", err)
}

// TestFollowersServeRoutesAndRedirectWrites: a follower answers GetRoutes
// and WatchRoutes itself and names the leader for writes.
func TestFollowersServeRoutesAndRedirectWrites(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: 3, Shards: 8, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	leader, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	follower := c.MasterFollower()
	mc := dialMaster(t, follower.Addr)
	if err := tc.WaitFor(ctx, func() error {
		got, err := mc.GetRoutes(ctx, &shoalpb.GetRoutesRequest{})
		if err != nil {
			return err
		}
		want, _ := leader.Server().GetRoutes(ctx, &shoalpb.GetRoutesRequest{})
		if got.Version != want.Version || len(got.Shards) != 8 {
			return fmt.Errorf("follower has version %d, leader %d", got.Version, want.Version)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err = mc.RegisterNode(ctx, &shoalpb.RegisterNodeRequest{Addr: "127.0.0.1:1", Weight: 1})
	d := client.Detail(err)
	if d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER || d.LeaderAddr != leader.Addr {
		t.Fatalf("write on a follower: %v (detail %v), want NOT_LEADER naming %s", err, d, leader.Addr)
	}
	// A watcher on the follower sees the next version.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := mc.WatchRoutes(wctx, &shoalpb.WatchRoutesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddNode(); err != nil {
		t.Fatal(err)
	}
	// Versions that only move leader hints may come first; every one must
	// be newer, and one must carry the new node.
	prev := first.Version
	for {
		next, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if next.Version <= prev {
			t.Fatalf("watch: version %d after %d", next.Version, prev)
		}
		prev = next.Version
		if len(next.Nodes) == len(first.Nodes)+1 {
			break
		}
	}
}

// TestCutOffMasterEndsRouteWatch: a master cut off from the other masters
// knows no leader of the meta group within an election timeout or two, and
// its table no longer changes; it ends the route watches it serves, and
// refuses new ones, with Unavailable, so that clients move to another
// master instead of keeping a frozen table.
func TestCutOffMasterEndsRouteWatch(t *testing.T) {
	mnet := transport.NewNetwork()
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: 3, Shards: 8, Replicas: 3, Master: func(cfg *master.Config) {
		id := cfg.ID
		cfg.Store = func(o *raftstore.Options) { o.Transport = mnet.Wrap(id, o.Transport) }
	}})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	follower := c.MasterFollower()
	mc := dialMaster(t, follower.Addr)
	w, err := mc.WatchRoutes(ctx, &shoalpb.WatchRoutesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, m := range c.Masters {
		ids = append(ids, m.ID)
	}
	mnet.Isolate(follower.ID, ids)
	cut := time.Now()
	for {
		_, err := w.Recv()
		if err == nil {
			continue // tables sent before the cut
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("watch on the cut-off master ended with %v; want Unavailable", err)
		}
		break
	}
	t.Logf("the cut-off master ended its watch after %v", time.Since(cut).Round(time.Millisecond))
	w2, err := mc.WatchRoutes(ctx, &shoalpb.WatchRoutesRequest{})
	if err == nil {
		_, err = w2.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("new watch on the cut-off master: %v; want Unavailable", err)
	}
	// Back in touch, it serves watches again.
	mnet.Heal()
	if err := tc.WaitFor(ctx, func() error {
		w, err := mc.WatchRoutes(ctx, &shoalpb.WatchRoutesRequest{})
		if err != nil {
			return err
		}
		_, err = w.Recv()
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
