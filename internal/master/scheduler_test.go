package master_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/master"
	"github.com/shoaldb/shoal/internal/metrics"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// balance returns max/mean of replicas and of leaders per unit of weight
// over the up nodes, from the leading master's view.
func balance(st *shoalpb.ClusterState) (replicas, leaders float64) {
	weight := map[uint64]float64{}
	for _, n := range st.Nodes {
		if n.State == shoalpb.NodeState_NODE_STATE_UP {
			weight[n.Id] = n.Weight
		}
	}
	rc, lc := map[uint64]float64{}, map[uint64]float64{}
	for _, rt := range st.Routes.Shards {
		for _, r := range rt.Shard.Replicas {
			rc[r.NodeId]++
			if r.ReplicaId == rt.LeaderReplica {
				lc[r.NodeId]++
			}
		}
	}
	ratio := func(c map[uint64]float64) float64 {
		var total, w, worst float64
		for id, wt := range weight {
			total += c[id]
			w += wt
		}
		mean := total / w
		for id, wt := range weight {
			worst = math.Max(worst, c[id]/wt/mean)
		}
		return worst
	}
	return ratio(rc), ratio(lc)
}

// settled fails unless the cluster is balanced within the bounds,
// every shard has rf voters on up nodes, and no operator is in flight.
func settled(c *tc.Cluster, rf int) error {
	st, err := c.ClusterState()
	if err != nil {
		return err
	}
	if len(st.Operators) > 0 {
		return fmt.Errorf("%d operators in flight", len(st.Operators))
	}
	up := map[uint64]bool{}
	for _, n := range st.Nodes {
		up[n.Id] = n.State == shoalpb.NodeState_NODE_STATE_UP
	}
	for _, rt := range st.Routes.Shards {
		voters := 0
		for _, r := range rt.Shard.Replicas {
			if r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER && up[r.NodeId] {
				voters++
			}
		}
		if voters != rf || len(rt.Shard.Replicas) != rf {
			return fmt.Errorf("shard %d: %d voters on up nodes, %d replicas", rt.Shard.ShardId, voters, len(rt.Shard.Replicas))
		}
	}
	if r, l := balance(st); r > 1.10 || l > 1.20 {
		return fmt.Errorf("replicas max/mean %.3f, leaders %.3f", r, l)
	}
	return nil
}

// load writes keys through the Go client until stop is closed and counts
// acknowledged writes and failures.
type load struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startLoad(t *testing.T, c *tc.Cluster, writers int) *load {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	cl, err := client.Open(ctx, c.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	l := &load{stop: make(chan struct{})}
	for w := range writers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, err := cl.Put(ctx, fmt.Appendf(nil, "load-%d-%d", w, i), []byte("value"))
				cancel()
				if err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err)
				} else {
					l.ok.Add(1)
				}
			}
		}()
	}
	return l
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	t.Logf("client writes: %d acknowledged, %d failed", l.ok.Load(), l.failed.Load())
	if l.failed.Load() > 0 {
		t.Errorf("%d client writes failed; first: %v", l.failed.Load(), l.firstErr.Load())
	}
	if l.ok.Load() == 0 {
		t.Error("no client write was acknowledged: the load did not run")
	}
}

// dumpOperators logs the operators the leading master knows, for a test
// that failed.
func dumpOperators(t *testing.T, c *tc.Cluster) {
	t.Helper()
	st, err := c.ClusterState()
	if err != nil {
		t.Logf("no cluster state: %v", err)
		return
	}
	for _, op := range st.Operators {
		t.Logf("in flight: %d shard %d %v step %d/%d %q last error %q", op.Id, op.ShardId, op.Kind, op.Current, len(op.Steps), op.Reason, op.LastError)
	}
	for _, op := range st.Finished {
		if op.Outcome != "done" {
			t.Logf("finished: %d shard %d %v %q: %s", op.Id, op.ShardId, op.Kind, op.Reason, op.Outcome)
		}
	}
	for _, n := range st.Nodes {
		t.Logf("node %d %v weight %v zone %q", n.Id, n.State, n.Weight, n.Zone)
	}
	for _, rt := range st.Routes.Shards {
		t.Logf("shard %d epoch %d leader r%d replicas %v", rt.Shard.ShardId, rt.Shard.Epoch, rt.LeaderReplica, rt.Shard.Replicas)
	}
}

func opsByKind(ops []*shoalpb.Operator) map[string]int {
	out := map[string]int{}
	for _, op := range ops {
		out[op.Kind.String()]++
	}
	return out
}

// TestScaleOutUnderLoad starts 3 nodes, writes continuously, and adds 2:
// replicas and leaders reach balance with no failed client write, and the
// number of replica moves is close to the minimum.
func TestScaleOutUnderLoad(t *testing.T) {
	const shards, rf = 32, 3
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: shards, Replicas: rf,
		Master: func(cfg *master.Config) { cfg.Scheduler.MaxOperatorsPerNode = 4 }})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, rf) }); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, c, 8)
	start := time.Now()
	for range 2 {
		if _, err := c.AddNode(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, rf) }); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	l.finish(t)
	st, err := c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	moves := 0
	for _, op := range st.Finished {
		if op.Outcome != "done" {
			t.Errorf("operator %d (%v, %s) ended %q", op.Id, op.Kind, op.Reason, op.Outcome)
		}
		for _, s := range op.Steps {
			if s.GetAddLearner() != nil {
				moves++
			}
		}
	}
	// The fewest moves that give 5 nodes their share of 96 replicas.
	minimum := shards * rf * 2 / 5
	r, ld := balance(st)
	t.Logf("3 -> 5 nodes in %v: %d replica moves (minimum %d), operators %v; replicas max/mean %.3f, leaders %.3f",
		took.Round(time.Millisecond), moves, minimum, opsByKind(st.Finished), r, ld)
	if moves > minimum+minimum/4+2 {
		t.Errorf("%d replica moves; the minimum is %d", moves, minimum)
	}
}

// TestRepairAfterNodeLoss kills one of 5 nodes: once it has been down for
// RepairAfter, every shard gets back to full replication on the survivors,
// and the snapshots that rebuild the replicas come from several nodes.
func TestRepairAfterNodeLoss(t *testing.T) {
	const shards, rf = 32, 3
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 5, Shards: shards, Replicas: rf,
		Master: func(cfg *master.Config) {
			cfg.RepairAfter = time.Second
			cfg.Scheduler.MaxOperatorsPerNode = 4
		}})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, rf) }); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, c, 4)
	sentBefore := map[uint64]uint64{}
	for _, n := range c.Nodes {
		sentBefore[n.ID] = n.Store().Stats().SnapshotsSent
	}
	victim := c.Nodes[4]
	lost := 0
	st, _ := c.ClusterState()
	for _, rt := range st.Routes.Shards {
		for _, r := range rt.Shard.Replicas {
			if r.NodeId == victim.ID {
				lost++
			}
		}
	}
	victim.Stop()
	killed := time.Now()
	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		for _, rt := range st.Routes.Shards {
			for _, r := range rt.Shard.Replicas {
				if r.NodeId == victim.ID {
					return fmt.Errorf("shard %d still has a replica on node %d", rt.Shard.ShardId, victim.ID)
				}
			}
		}
		return settled(c, rf)
	}); err != nil {
		dumpOperators(t, c)
		t.Fatal(err)
	}
	took := time.Since(killed)
	l.finish(t)
	sources := map[uint64]uint64{}
	for _, n := range c.Nodes[:4] {
		if d := n.Store().Stats().SnapshotsSent - sentBefore[n.ID]; d > 0 {
			sources[n.ID] = d
		}
	}
	t.Logf("node %d lost with %d replicas: full replication again %v after the kill (repair-after 1s); snapshots sent per surviving node %v",
		victim.ID, lost, took.Round(time.Millisecond), sources)
	if len(sources) < 3 {
		t.Errorf("repair snapshots came from %d nodes (%v); want them spread over the survivors", len(sources), sources)
	}
}

// TestDrainNode drains one of 4 nodes: it ends with no replica and is
// removed, and every shard keeps full replication.
func TestDrainNode(t *testing.T) {
	const shards, rf = 32, 3
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 4, Shards: shards, Replicas: rf,
		Master: func(cfg *master.Config) { cfg.Scheduler.MaxOperatorsPerNode = 4 }})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, c, 4)
	m, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	drained := c.Nodes[1].ID
	if _, err := m.Server().SetNodeState(ctx, &shoalpb.SetNodeStateRequest{NodeId: drained, State: shoalpb.NodeState_NODE_STATE_DRAINING}); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		for _, n := range st.Nodes {
			if n.Id == drained && n.State != shoalpb.NodeState_NODE_STATE_REMOVED {
				return fmt.Errorf("node %d is %v", drained, n.State)
			}
		}
		return settled(c, rf)
	}); err != nil {
		t.Fatal(err)
	}
	l.finish(t)
	if err := tc.WaitFor(ctx, func() error {
		if n := len(c.NodeByID(drained).Store().Replicas()); n != 0 {
			return fmt.Errorf("the drained node still hosts %d replicas", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestMasterFailoverMidRebalance kills the master leader while operators
// are in flight: the next leader resumes them and the rebalance finishes.
func TestMasterFailoverMidRebalance(t *testing.T) {
	const shards, rf = 32, 3
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: 3, Shards: shards, Replicas: rf})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, c, 4)
	for range 2 {
		if _, err := c.AddNode(); err != nil {
			t.Fatal(err)
		}
	}
	var inFlight []*shoalpb.Operator
	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		for _, op := range st.Operators {
			if op.Kind == shoalpb.OperatorKind_OPERATOR_KIND_REPLICA_BALANCE && op.Current > 0 {
				inFlight = st.Operators
				return nil
			}
		}
		return errors.New("no replica move under way yet")
	}); err != nil {
		t.Fatal(err)
	}
	old, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	old.Stop()
	t.Logf("stopped master %d with %d operators in flight", old.ID, len(inFlight))
	if err := tc.WaitFor(ctx, func() error { return settled(c, rf) }); err != nil {
		t.Fatal(err)
	}
	l.finish(t)
	st, err := c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	finished := map[uint64]*shoalpb.Operator{}
	for _, op := range st.Finished {
		finished[op.Id] = op
	}
	// Only the last finished operators are kept; those still listed must
	// have ended well, and none may be left in flight (settled checks).
	for _, op := range inFlight {
		if f := finished[op.Id]; f != nil {
			t.Logf("operator %d (%v) resumed by the new leader: %s", op.Id, op.Kind, f.Outcome)
			if f.Outcome != "done" {
				t.Errorf("operator %d in flight at the failover ended %q", op.Id, f.Outcome)
			}
		}
	}
	if err := old.Restart(); err != nil {
		t.Fatal(err)
	}
}

// TestAdminOperations moves a replica, transfers a leader, pauses and
// resumes scheduling, and sets a weight, through the master's gRPC API.
func TestAdminOperations(t *testing.T) {
	const shards, rf = 16, 3
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 4, Shards: shards, Replicas: rf})
	ctx := ctxFor(t, 90*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, rf) }); err != nil {
		t.Fatal(err)
	}
	m, _ := c.MasterLeader()
	srv := m.Server()
	// A live node that holds replicas is drained, not removed.
	if _, err := srv.SetNodeState(ctx, &shoalpb.SetNodeStateRequest{NodeId: c.Nodes[0].ID, State: shoalpb.NodeState_NODE_STATE_REMOVED}); err == nil ||
		!strings.Contains(err.Error(), "drain it") {
		t.Fatalf("removing a live node with replicas: %v", err)
	}
	if _, err := srv.SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: true}); err != nil {
		t.Fatal(err)
	}
	st, _ := c.ClusterState()
	if !st.SchedulingPaused {
		t.Fatal("scheduling not reported paused")
	}
	rt := st.Routes.Shards[0]
	holds := map[uint64]bool{}
	for _, r := range rt.Shard.Replicas {
		holds[r.NodeId] = true
	}
	var from, to uint64
	for _, n := range c.Nodes {
		if holds[n.ID] && from == 0 {
			from = n.ID
		}
		if !holds[n.ID] {
			to = n.ID
		}
	}
	shard := rt.Shard.ShardId
	// Refusals say why.
	if _, err := srv.MoveReplica(ctx, &shoalpb.MoveReplicaRequest{ShardId: shard, FromNode: to, ToNode: from}); err == nil {
		t.Fatal("moving a replica from a node that has none was accepted")
	}
	op, err := srv.MoveReplica(ctx, &shoalpb.MoveReplicaRequest{ShardId: shard, FromNode: from, ToNode: to})
	if err != nil {
		t.Fatal(err)
	}
	if f := finishedOp(t, ctx, c, op.Id); f.Outcome != "done" {
		t.Fatalf("move: %s", f.Outcome)
	}
	d, err := c.Descriptor(shard)
	if err != nil {
		t.Fatal(err)
	}
	onTo, onFrom := false, false
	for _, r := range d.Replicas {
		onTo = onTo || r.NodeId == to
		onFrom = onFrom || r.NodeId == from
	}
	if !onTo || onFrom {
		t.Fatalf("after moving shard %d from %d to %d: %v", shard, from, to, d.Replicas)
	}
	// Transfer the leadership to each voter in turn.
	for _, r := range d.Replicas {
		if err := tc.WaitFor(ctx, func() error {
			lead, err := c.Leader(shard)
			if err != nil {
				return err
			}
			if lead.ID == r.NodeId {
				return nil
			}
			op, err := srv.TransferShardLeader(ctx, &shoalpb.TransferShardLeaderRequest{ShardId: shard, ToNode: r.NodeId})
			if err != nil {
				return err
			}
			if f := finishedOp(t, ctx, c, op.Id); f.Outcome != "done" {
				return fmt.Errorf("transfer: %s", f.Outcome)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// While paused, nothing moves back by itself.
	st, _ = c.ClusterState()
	if len(st.Operators) != 0 {
		t.Fatalf("%d operators in flight while paused", len(st.Operators))
	}
	// A weight set by an administrator is kept and acted on.
	// (16 shards: a node holds at most 16 replicas, so weight 1.4 of 4.4
	// asks for about 15.)
	if _, err := srv.SetNodeLabels(ctx, &shoalpb.SetNodeLabelsRequest{NodeId: c.Nodes[0].ID, Weight: 1.4, Zone: "z1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: false}); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, rf) }); err != nil {
		t.Fatal(err)
	}
	st, _ = c.ClusterState()
	per := map[uint64]int{}
	for _, rt := range st.Routes.Shards {
		for _, r := range rt.Shard.Replicas {
			per[r.NodeId]++
		}
	}
	if per[c.Nodes[0].ID] <= per[c.Nodes[1].ID] {
		t.Errorf("node %d has weight 1.4 but %d replicas, node %d has %d", c.Nodes[0].ID, per[c.Nodes[0].ID], c.Nodes[1].ID, per[c.Nodes[1].ID])
	}
	if _, err := srv.CancelOperator(ctx, &shoalpb.CancelOperatorRequest{Id: op.Id}); err == nil {
		t.Error("cancelling a finished operator was accepted")
	}
}

// TestHTTPAdmin drives the admin API over real HTTP: a bad request says
// why, a follower answers 421 naming the leader, and pause, move and the
// operator listing work.
func TestHTTPAdmin(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: 4, Shards: 8, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, 3) }); err != nil {
		t.Fatal(err)
	}
	leader, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	follower := c.MasterFollower()
	lsrv := httptest.NewServer(leader.Server().HTTPHandler())
	defer lsrv.Close()
	fsrv := httptest.NewServer(follower.Server().HTTPHandler())
	defer fsrv.Close()
	post := func(base, path string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Post(base+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body := map[string]any{}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		return resp.StatusCode, body
	}
	if code, body := post(lsrv.URL, "/shards/x/move?from=1&to=2"); code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["error"]), "positive integer") {
		t.Fatalf("bad shard id: %d %v", code, body)
	}
	if code, body := post(fsrv.URL, "/scheduling/pause"); code != http.StatusMisdirectedRequest || body["leader"] != leader.Addr {
		t.Fatalf("follower: %d %v, want 421 naming %s", code, body, leader.Addr)
	}
	// A page on another site, open in an operator's browser, cannot
	// change the cluster: browsers mark its requests (Sec-Fetch-Site,
	// Origin), and those are refused.
	for name, h := range map[string][2]string{
		"Sec-Fetch-Site cross-site": {"Sec-Fetch-Site", "cross-site"},
		"Origin of another site":    {"Origin", "http://evil.example"},
	} {
		req, err := http.NewRequest(http.MethodPost, lsrv.URL+"/scheduling/pause", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(h[0], h[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("POST /scheduling/pause with %s: %d, want 403", name, resp.StatusCode)
		}
	}
	if st, _ := c.ClusterState(); st.GetSchedulingPaused() {
		t.Fatal("a cross-site request paused scheduling")
	}
	// The process's arguments, which can hold a password, are not served.
	if resp, err := http.Get(lsrv.URL + "/debug/pprof/cmdline"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /debug/pprof/cmdline: %v %v, want 404", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
	if code, body := post(lsrv.URL, "/scheduling/pause"); code != http.StatusOK || body["paused"] != true {
		t.Fatalf("pause: %d %v", code, body)
	}
	// Operators the scheduler started before the pause finish first.
	var st *shoalpb.ClusterState
	if err := tc.WaitFor(ctx, func() error {
		st, _ = c.ClusterState()
		if n := len(st.GetOperators()); n > 0 {
			return fmt.Errorf("%d operators in flight", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	d := st.Routes.Shards[0].Shard
	holds := map[uint64]bool{}
	for _, r := range d.Replicas {
		holds[r.NodeId] = true
	}
	var from, to uint64
	for _, n := range st.Nodes {
		if holds[n.Id] {
			from = n.Id
		} else {
			to = n.Id
		}
	}
	code, body := post(lsrv.URL, fmt.Sprintf("/shards/%d/move?from=%d&to=%d", d.ShardId, from, to))
	if code != http.StatusOK {
		t.Fatalf("move: %d %v", code, body)
	}
	if code, body := post(lsrv.URL, fmt.Sprintf("/shards/%d/move?from=%d&to=%d", d.ShardId, from, to)); code != http.StatusBadRequest ||
		!strings.Contains(fmt.Sprint(body["error"]), "in flight") {
		t.Fatalf("second move of a busy shard: %d %v", code, body)
	}
	if err := tc.WaitFor(ctx, func() error {
		resp, err := http.Get(lsrv.URL + "/operators")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var ops struct {
			Finished []struct {
				ID      string `json:"id"`
				Outcome string `json:"outcome"`
			} `json:"finished"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&ops); err != nil {
			return err
		}
		for _, f := range ops.Finished {
			if f.ID == fmt.Sprint(body["id"]) {
				if f.Outcome != "done" {
					t.Fatalf("move ended %q", f.Outcome)
				}
				return nil
			}
		}
		return fmt.Errorf("operator %v not finished", body["id"])
	}); err != nil {
		t.Fatal(err)
	}
}

// startThrottledMove loads 8 MiB into one shard of a 4-node cluster whose
// snapshots are throttled to 2 MiB/s, pauses scheduling, starts moving one
// of its replicas and waits until the move shows progress.
func startThrottledMove(t *testing.T, ctx context.Context) (*tc.Cluster, *master.Server, *shoalpb.Operator, uint64, uint64) {
	t.Helper()
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 4, Shards: 8, Replicas: 3,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.SnapshotBytesPerSec = 2 << 20 }})
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := client.Open(ctx, c.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	value := make([]byte, 64<<10)
	for i := range 128 { // 8 MiB in the shard of the hash tag {p}
		if _, err := cl.Put(ctx, fmt.Appendf(nil, "{p}%d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	shard := c.ShardOf([]byte("{p}"))
	m, _ := c.MasterLeader()
	srv := m.Server()
	if _, err := srv.SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: true}); err != nil {
		t.Fatal(err)
	}
	d, err := c.Descriptor(shard)
	if err != nil {
		t.Fatal(err)
	}
	holds := map[uint64]bool{}
	for _, r := range d.Replicas {
		holds[r.NodeId] = true
	}
	var from, to uint64
	for _, n := range c.Nodes {
		if holds[n.ID] {
			from = n.ID
		} else {
			to = n.ID
		}
	}
	op, err := srv.MoveReplica(ctx, &shoalpb.MoveReplicaRequest{ShardId: shard, FromNode: from, ToNode: to})
	if err != nil {
		t.Fatal(err)
	}
	var seen *shoalpb.Operator
	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		for _, cur := range st.Operators {
			if cur.Id == op.Id && cur.TotalBytes >= 8<<20 && cur.ProgressBytes > 0 && cur.EtaMs > 0 {
				seen = cur
				return nil
			}
		}
		for _, f := range st.Finished {
			if f.Id == op.Id {
				t.Fatalf("operator finished (%s) before showing progress", f.Outcome)
			}
		}
		return errors.New("no progress shown yet")
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("progress seen: %d of %d bytes, ETA %d ms", seen.ProgressBytes, seen.TotalBytes, seen.EtaMs)
	return c, srv, op, shard, to
}

// finishedOp waits for operator id to finish and returns it.
func finishedOp(t *testing.T, ctx context.Context, c *tc.Cluster, id uint64) *shoalpb.Operator {
	t.Helper()
	var done *shoalpb.Operator
	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		for _, f := range st.Finished {
			if f.Id == id {
				done = f
				return nil
			}
		}
		return fmt.Errorf("operator %d not finished", id)
	}); err != nil {
		t.Fatal(err)
	}
	return done
}

// TestMoveProgress: while a throttled move runs, the operator shows bytes
// sent of the total and an ETA, and the move then completes.
func TestMoveProgress(t *testing.T) {
	ctx := ctxFor(t, 90*time.Second)
	c, _, op, _, _ := startThrottledMove(t, ctx)
	if f := finishedOp(t, ctx, c, op.Id); f.Outcome != "done" {
		t.Fatalf("move ended %q", f.Outcome)
	}
}

// TestCancelRollsBack cancels a move while its snapshot streams: the
// operator ends rolled back, and the shard is as before (no replica on the
// target, full replication).
func TestCancelRollsBack(t *testing.T) {
	ctx := ctxFor(t, 90*time.Second)
	c, srv, op, shard, to := startThrottledMove(t, ctx)
	if _, err := srv.CancelOperator(ctx, &shoalpb.CancelOperatorRequest{Id: op.Id}); err != nil {
		t.Fatal(err)
	}
	f := finishedOp(t, ctx, c, op.Id)
	if f.Outcome != "rolled back" || !strings.Contains(f.Reason, "cancelled by an administrator") {
		t.Fatalf("cancelled move ended %q (%s)", f.Outcome, f.Reason)
	}
	if err := tc.WaitFor(ctx, func() error {
		d, err := c.Descriptor(shard)
		if err != nil {
			return err
		}
		for _, r := range d.Replicas {
			if r.NodeId == to {
				return fmt.Errorf("node %d still has replica %d (%v)", to, r.ReplicaId, r.Role)
			}
		}
		if len(d.Replicas) != 3 {
			return fmt.Errorf("%d replicas", len(d.Replicas))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.CancelOperator(ctx, &shoalpb.CancelOperatorRequest{Id: op.Id}); err == nil {
		t.Error("cancelling a finished operator was accepted")
	}
}

// TestGracefulShutdown stops a node that leads a third of the shards while
// clients write: it hands its leaderships over first, and no client write
// fails.
func TestGracefulShutdown(t *testing.T) {
	const shards = 32
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: shards, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, 3) }); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, c, 8)
	victim := c.Nodes[0]
	led := leadersPerNode(c)[victim.ID]
	// Wait until some writes went through, so the shutdown happens under load.
	if err := tc.WaitFor(ctx, func() error {
		if l.ok.Load() < 100 {
			return fmt.Errorf("%d writes so far", l.ok.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	still := victim.Shutdown(sctx)
	t.Logf("node %d led %d shards; handed them over and stopped in %v, still leading %d", victim.ID, led, time.Since(start).Round(time.Millisecond), still)
	if still != 0 {
		t.Errorf("node %d still led %d shards when it stopped", victim.ID, still)
	}
	// Keep writing a little with the node gone, then check.
	before := l.ok.Load()
	if err := tc.WaitFor(ctx, func() error {
		if l.ok.Load() < before+100 {
			return fmt.Errorf("%d writes since the shutdown", l.ok.Load()-before)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l.finish(t)
}

// TestRollingRestart restarts every node in turn, gracefully, while
// clients write: no client write fails, and the cluster ends balanced.
func TestRollingRestart(t *testing.T) {
	const shards = 32
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: shards, Replicas: 3})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, 3) }); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, c, 8)
	start := time.Now()
	for _, n := range c.Nodes {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if still := n.Shutdown(sctx); still != 0 {
			t.Errorf("node %d stopped while leading %d shards", n.ID, still)
		}
		cancel()
		if err := n.Restart(); err != nil {
			t.Fatal(err)
		}
		// Before the next one goes, this one must be a full member again:
		// the scheduler has given it back its share of leaderships (as
		// the replicas themselves report them), which it can only take
		// once caught up.
		if err := tc.WaitFor(ctx, func() error {
			if err := c.WaitForLeaders(ctx); err != nil {
				return err
			}
			if got := leadersPerNode(c)[n.ID]; float64(got) < float64(shards)/3/1.2 {
				return fmt.Errorf("node %d leads %d shards", n.ID, got)
			}
			return settled(c, 3)
		}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("rolling restart of %d nodes under load in %v", len(c.Nodes), time.Since(start).Round(time.Millisecond))
	l.finish(t)
}

// TestMetrics scrapes a master's and a node's /metrics over HTTP after
// some traffic: the request, Raft, storage and cluster metrics are there
// and count what happened.
func TestMetrics(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: 8, Replicas: 3, RESP: true})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, c, 2)
	if err := tc.WaitFor(ctx, func() error {
		if l.ok.Load() < 50 {
			return errors.New("not enough writes yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l.finish(t)
	scrape := func(h http.Handler) string {
		t.Helper()
		srv := httptest.NewServer(h)
		defer srv.Close()
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		if _, err := io.Copy(&b, resp.Body); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/metrics: %d", resp.StatusCode)
		}
		return b.String()
	}
	m, _ := c.MasterLeader()
	out := scrape(m.Server().HTTPHandler())
	for _, want := range []string{`shoal_master_nodes{state="up"} 3`, `shoal_master_is_leader 1`, `shoal_master_shards 8`,
		`shoal_master_shards_under_replicated 0`, `shoal_grpc_requests_total{code="OK",method="Heartbeat"}`, `shoal_storage_wal_fsync_seconds_count`} {
		if !strings.Contains(out, want) {
			t.Errorf("master /metrics lacks %q", want)
		}
	}
	// One Redis command, and one unknown one.
	conn, err := net.Dial("tcp", c.Nodes[0].RESPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("PING\r\nNOSUCH\r\n")); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(conn)
	for _, want := range []string{"+PONG", "-ERR unknown command"} {
		if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, want) {
			t.Fatalf("reply %q, %v; want %q", line, err, want)
		}
	}
	mux := http.NewServeMux()
	metrics.Mount(mux, c.Nodes[0].Node().Metrics())
	out = scrape(mux)
	for _, want := range []string{`shoal_grpc_requests_total{code="OK",method="Put"}`, `shoal_raft_proposals_total`, `shoal_raft_replicas{role="leader"}`,
		`shoal_raft_elections_total`, `shoal_raft_leader_changes_total`,
		`shoal_storage_disk_bytes`, `shoal_storage_wal_fsync_seconds_bucket`, `go_goroutines`,
		`shoal_resp_commands_total{command="ping",result="ok"} 1`, `shoal_resp_commands_total{command="unknown",result="ERR"} 1`} {
		if !strings.Contains(out, want) {
			t.Errorf("node /metrics lacks %q", want)
		}
	}
	if strings.Contains(out, "shoal_raft_proposals_total 0\n") {
		t.Error("node 1 counts no Raft proposals after the load")
	}
	// Every shard elected a leader: the three nodes together count at
	// least one leadership per shard.
	var leaderships uint64
	for _, n := range c.Nodes {
		leaderships += n.Store().Stats().Leaderships
	}
	if leaderships < 8 {
		t.Errorf("%d leaderships counted for 8 shards", leaderships)
	}
}
