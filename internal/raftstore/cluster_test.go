package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// keyInShard returns a key that lives in shard (of c's static layout).
func keyInShard(c *tc.Cluster, shard uint64, prefix string) []byte {
	for i := 0; ; i++ {
		k := []byte(fmt.Sprintf("%s-%d", prefix, i))
		if c.ShardOf(k) == shard {
			return k
		}
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// readAt reads key on node n with a linearizable ReadIndex barrier.
func readAt(ctx context.Context, n *tc.Node, shard uint64, key []byte) (string, bool, error) {
	if err := n.Store().ReadIndex(ctx, shard); err != nil {
		return "", false, err
	}
	return tc.ReadKey(n.Engine().Reader(), key)
}

// waitNewLeader waits until shard's leader is on another node than old.
func waitNewLeader(ctx context.Context, t *testing.T, c *tc.Cluster, shard, old uint64) {
	t.Helper()
	if err := tc.WaitFor(ctx, func() error {
		n, err := c.Leader(shard)
		if err != nil {
			return err
		}
		if n.ID == old {
			return fmt.Errorf("node %d still leads shard %d", old, shard)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// leaderAndOther returns the node leading shard and another node (a
// follower when every node has a replica).
func leaderAndOther(t *testing.T, c *tc.Cluster, shard uint64) (leader, other *tc.Node) {
	t.Helper()
	leader, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if n.ID != leader.ID {
			return leader, n
		}
	}
	t.Fatalf("shard %d: no node besides its leader %d", shard, leader.ID)
	return nil, nil
}

// waitApplied waits until every node in nodes has applied what leader of
// shard had applied when the wait began.
func waitApplied(ctx context.Context, t *testing.T, leader *tc.Node, shard uint64, nodes ...*tc.Node) {
	t.Helper()
	ls, err := leader.Store().Status(shard)
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		for _, n := range nodes {
			st, err := n.Store().Status(shard)
			if err != nil {
				return err
			}
			if st.Applied < ls.Applied {
				return fmt.Errorf("node %d applied %d of %d", n.ID, st.Applied, ls.Applied)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// busiestLeader returns the node leading the most shards and those shards.
func busiestLeader(t *testing.T, c *tc.Cluster) (uint64, []uint64) {
	t.Helper()
	led := map[uint64][]uint64{}
	for _, d := range c.Shards {
		n, err := c.Leader(d.ShardId)
		if err != nil {
			t.Fatal(err)
		}
		led[n.ID] = append(led[n.ID], d.ShardId)
	}
	busiest := uint64(1)
	for id, shards := range led {
		if len(shards) > len(led[busiest]) {
			busiest = id
		}
	}
	return busiest, led[busiest]
}

// waitRead waits until a linearizable read of key at n returns want.
func waitRead(ctx context.Context, t *testing.T, n *tc.Node, shard uint64, key []byte, want string) {
	t.Helper()
	if err := tc.WaitFor(ctx, func() error {
		v, _, err := readAt(ctx, n, shard, key)
		if err != nil {
			return err
		}
		if v != want {
			return fmt.Errorf("node %d read %q, want %q", n.ID, v, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestClusterWritesAndReadsEveryShard(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 64, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range c.Shards {
		k := keyInShard(c, d.ShardId, "k")
		if _, err := c.Propose(ctx, d.ShardId, tc.PutCmd(k, []byte("v1"))); err != nil {
			t.Fatalf("shard %d: %v", d.ShardId, err)
		}
		old, err := c.Propose(ctx, d.ShardId, tc.PutCmd(k, []byte("v2")))
		if err != nil {
			t.Fatalf("shard %d: %v", d.ShardId, err)
		}
		if old != "v1" {
			t.Fatalf("shard %d: previous value %q, want v1", d.ShardId, old)
		}
		// Every replica, leader or follower, reads the write after ReadIndex.
		for _, r := range d.Replicas {
			v, ok, err := readAt(ctx, c.Node(r.NodeId), d.ShardId, k)
			if err != nil || !ok || v != "v2" {
				t.Fatalf("shard %d on node %d: read %q, %v, %v; want v2", d.ShardId, r.NodeId, v, ok, err)
			}
		}
	}
	// Leaders are spread: the bootstrap campaign puts one third on each node.
	counts := map[uint64]int{}
	for _, d := range c.Shards {
		n, err := c.Leader(d.ShardId)
		if err != nil {
			t.Fatal(err)
		}
		counts[n.ID]++
	}
	t.Logf("leaders per node: %v", counts)
	if len(counts) != 3 {
		t.Errorf("leaders on %d nodes, want all 3: %v", len(counts), counts)
	}
}

func TestProposeOnFollowerFailsWithHint(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 4, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	leader, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if n == leader {
			continue
		}
		// The follower may not have heard from the leader yet; wait until it
		// names it, then check the error says so.
		err := tc.WaitFor(ctx, func() error {
			_, err := n.Store().Propose(ctx, shard, tc.PutCmd([]byte("x"), []byte("y")))
			var nl *raftstore.NotLeaderError
			if !errors.As(err, &nl) {
				return fmt.Errorf("got %v, want NotLeaderError", err)
			}
			if nl.LeaderNode != leader.ID {
				return fmt.Errorf("hint names node %d, leader is %d", nl.LeaderNode, leader.ID)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("node %d: %v", n.ID, err)
		}
	}
	if _, err := leader.Store().Propose(ctx, 999, nil); !errors.Is(err, raftstore.ErrShardNotFound) {
		t.Fatalf("unknown shard: got %v, want ErrShardNotFound", err)
	}
}

// TestLeaderFailover stops the node that leads the most shards and measures
// how long each of its shards takes to accept a write again.
func TestLeaderFailover(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 64, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	stopBusiestLeader(ctx, t, c, "", 3*time.Second)
}

// stopBusiestLeader stops the node that leads the most shards, writes to
// each of them until the write succeeds, and fails the test unless every
// one did within limit. what describes the shards in the log line.
//
// limit is for a plain build. Under the race detector, with other packages'
// tests on the same two cores, it is half as long again: a clean-clone CI
// run at c139345 saw 3.17 s against the busy shards' 3 s there, while the
// plain build's slowest shard stays under 2 s.
func stopBusiestLeader(ctx context.Context, t *testing.T, c *tc.Cluster, what string, limit time.Duration) {
	t.Helper()
	if raceEnabled {
		limit = limit * 3 / 2
	}
	victim, shards := busiestLeader(t, c)
	stopped := time.Now()
	c.Node(victim).Stop()

	var mu sync.Mutex
	took := map[uint64]time.Duration{}
	var wg sync.WaitGroup
	for _, shard := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := keyInShard(c, shard, "failover")
			if _, err := c.Propose(ctx, shard, tc.PutCmd(k, []byte("after"))); err != nil {
				t.Errorf("shard %d: %v", shard, err)
				return
			}
			mu.Lock()
			took[shard] = time.Since(stopped)
			mu.Unlock()
		}()
	}
	wg.Wait()
	var slowest time.Duration
	var slowShard uint64
	for s, d := range took {
		if d > slowest {
			slowest, slowShard = d, s
		}
	}
	t.Logf("stopped node %d leading %d %sshards; slowest shard %d accepted a write after %v", victim, len(shards), what, slowShard, slowest)
	if slowest > limit {
		t.Errorf("slowest failover %v, want <= %v", slowest, limit)
	}
	for _, shard := range shards {
		n, err := c.Leader(shard)
		if err != nil || n.ID == victim {
			t.Errorf("shard %d: leader %v, %v", shard, n, err)
		}
	}
}

// TestPartitionedLeaderStepsDown cuts a leader off from the majority: once
// CheckQuorum steps it down it serves neither reads nor writes, while the
// majority elects a new leader and goes on; after healing it catches up.
func TestPartitionedLeaderStepsDown(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 8, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	k := keyInShard(c, shard, "part")
	if _, err := c.Propose(ctx, shard, tc.PutCmd(k, []byte("before"))); err != nil {
		t.Fatal(err)
	}
	old, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(old.ID, c.NodeIDs())

	// The old leader steps down by itself (CheckQuorum), without hearing
	// from anyone.
	if err := tc.WaitFor(ctx, func() error {
		st, _ := old.Store().Status(shard)
		if st.Role == raftstore.RoleLeader {
			return errors.New("still leader")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The majority elects a new leader and takes a write.
	if _, err := c.Propose(ctx, shard, tc.PutCmd(k, []byte("after"))); err != nil {
		t.Fatal(err)
	}
	newLeader, err := c.Leader(shard)
	if err != nil || newLeader.ID == old.ID {
		t.Fatalf("new leader %v, %v", newLeader, err)
	}
	// The isolated node serves neither writes nor linearizable reads.
	if _, err := old.Store().Propose(ctx, shard, tc.PutCmd(k, []byte("minority"))); !errors.Is(err, raftstore.ErrNotLeader) && !errors.Is(err, raftstore.ErrNoLeader) {
		t.Fatalf("write on isolated node: got %v, want not leader / no leader", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = old.Store().ReadIndex(rctx, shard)
	cancel()
	if err == nil {
		v, _, _ := tc.ReadKey(old.Engine().Reader(), k)
		t.Fatalf("read on isolated node succeeded (value %q); want an error", v)
	}
	t.Logf("isolated node refuses reads: %v", err)

	c.Net.Heal()
	waitRead(ctx, t, old, shard, k, "after")
}

// TestRestartCatchesUpFromLog stops a node, writes on the majority, restarts
// it from its directory and checks it applies everything it missed.
func TestRestartCatchesUpFromLog(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 16, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	down := c.Node(3)
	down.Stop()
	want := map[string]string{}
	for i := range 200 {
		k := []byte(fmt.Sprintf("restart-%d", i))
		v := fmt.Sprintf("v%d", i)
		if _, err := c.Propose(ctx, c.ShardOf(k), tc.PutCmd(k, []byte(v))); err != nil {
			t.Fatal(err)
		}
		want[string(k)] = v
	}
	if err := down.Restart(); err != nil {
		t.Fatal(err)
	}
	for k, v := range want {
		shard := c.ShardOf([]byte(k))
		if err := tc.WaitFor(ctx, func() error {
			got, ok, err := readAt(ctx, down, shard, []byte(k))
			if err != nil {
				return err
			}
			if !ok || got != v {
				return fmt.Errorf("%s = %q, want %q", k, got, v)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// From the log, not by snapshot: 200 writes are far below the
	// truncation bounds.
	if st := down.Store().Stats(); st.SnapshotsReceived != 0 || st.SnapshotsApplied != 0 {
		t.Fatalf("the restarted node caught up by snapshot (%d received, %d applied), not from the log", st.SnapshotsReceived, st.SnapshotsApplied)
	}
}

// writer appends unique tokens to its own key and remembers which were
// acknowledged and which have an unknown outcome.
type writer struct {
	key      []byte
	acked    []string
	unknown  map[string]bool
	failures int
}

func runWriters(ctx context.Context, c *tc.Cluster, ws []*writer, perWriter int, stop <-chan struct{}) {
	var wg sync.WaitGroup
	for wi, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			shard := c.ShardOf(w.key)
			for i := 0; perWriter <= 0 || i < perWriter; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tok := fmt.Sprintf("%d.%d;", wi, i)
				opCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := c.Propose(opCtx, shard, tc.AppendCmd(w.key, []byte(tok)))
				cancel()
				switch {
				case err == nil:
					w.acked = append(w.acked, tok)
				case tc.Retryable(err):
					w.failures++
				default:
					w.unknown[tok] = true
				}
				if ctx.Err() != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// checkWriters reads every writer's key through the shard leader and checks
// that every acknowledged token is present exactly once, in order, and that
// nothing else is there but tokens with an unknown outcome.
func checkWriters(ctx context.Context, t *testing.T, c *tc.Cluster, ws []*writer) (acked int) {
	t.Helper()
	for _, w := range ws {
		shard := c.ShardOf(w.key)
		var got string
		if err := tc.WaitFor(ctx, func() error {
			n, err := c.Leader(shard)
			if err != nil {
				return err
			}
			got, _, err = readAt(ctx, n, shard, w.key)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		toks := strings.SplitAfter(got, ";")
		toks = toks[:len(toks)-1]
		seen := map[string]bool{}
		var order []string
		for _, tok := range toks {
			if seen[tok] {
				t.Fatalf("key %s: token %s applied twice", w.key, tok)
			}
			seen[tok] = true
			if !w.unknown[tok] {
				order = append(order, tok)
			}
		}
		for _, tok := range w.acked {
			if !seen[tok] {
				t.Fatalf("key %s: acknowledged token %s lost", w.key, tok)
			}
		}
		if !slices.Equal(order, w.acked) {
			t.Fatalf("key %s: applied %v, acknowledged %v", w.key, order, w.acked)
		}
		acked += len(w.acked)
	}
	return acked
}

// checkReplicasAgree compares the applied state of every replica of every
// shard, once each has caught up with its leader.
func checkReplicasAgree(ctx context.Context, t *testing.T, c *tc.Cluster, ws []*writer) {
	t.Helper()
	for _, w := range ws {
		shard := c.ShardOf(w.key)
		var vals []string
		for _, n := range c.Nodes {
			if _, err := n.Store().Status(shard); err != nil {
				continue
			}
			var v string
			if err := tc.WaitFor(ctx, func() error {
				var err error
				v, _, err = readAt(ctx, n, shard, w.key)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			vals = append(vals, v)
		}
		for _, v := range vals[1:] {
			if v != vals[0] {
				t.Fatalf("key %s: replicas disagree: %q", w.key, vals)
			}
		}
	}
}

func newWriters(n int) []*writer {
	ws := make([]*writer, n)
	for i := range ws {
		ws[i] = &writer{key: []byte(fmt.Sprintf("writer-%d", i)), unknown: map[string]bool{}}
	}
	return ws
}

// TestConcurrentWriters runs 1000 writers over 64 shards: no acknowledged
// write is lost, none is applied twice, and replicas agree.
func TestConcurrentWriters(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 64, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	ws := newWriters(1000)
	start := time.Now()
	runWriters(ctx, c, ws, 10, nil)
	elapsed := time.Since(start)
	acked := checkWriters(ctx, t, c, ws)
	if acked != 1000*10 {
		t.Errorf("acknowledged %d writes, want %d (no faults were injected)", acked, 1000*10)
	}
	checkReplicasAgree(ctx, t, c, ws)
	var syncs, replicas uint64
	for _, n := range c.Nodes {
		st := n.Store().Stats()
		syncs += st.LogSyncs
		replicas += st.LogSyncReplicas
	}
	t.Logf("%d writes in %v (%.0f/s); %d log syncs on 3 nodes (%.1f per 1000 writes), %.1f replicas per sync",
		acked, elapsed, float64(acked)/elapsed.Seconds(), syncs, float64(syncs)*1000/float64(acked), float64(replicas)/float64(syncs))
}

// TestCrashAllNodesKeepsAcknowledgedWrites runs writers on a cluster whose
// engines live on crashable filesystems, cuts the power of every node at
// once (unsynced writes are lost), restarts them, and checks that every
// acknowledged write survived exactly once.
func TestCrashAllNodesKeepsAcknowledgedWrites(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 16, Replicas: 3, CrashableFS: true, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	ws := newWriters(64)
	stop := make(chan struct{})
	var acked atomic.Int64
	done := make(chan struct{})
	go func() {
		runWriters(ctx, c, ws, 0, stop)
		close(done)
	}()
	// Crash while writes are in flight: wait until some are acknowledged.
	if err := tc.WaitFor(ctx, func() error {
		n := int64(0)
		for _, n2 := range c.Nodes {
			n += int64(n2.Store().Stats().Applied)
		}
		acked.Store(n)
		if n < 3000 {
			return fmt.Errorf("only %d applied", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		n.Crash()
	}
	close(stop)
	<-done
	for _, n := range c.Nodes {
		if err := n.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	total := checkWriters(ctx, t, c, ws)
	if total == 0 {
		t.Fatal("no write was acknowledged before the crash")
	}
	checkReplicasAgree(ctx, t, c, ws)
	t.Logf("%d acknowledged writes survived a crash of every node", total)
}

// TestCrashOneNodeUnderLoad crashes one node while writers run, restarts it
// and checks it catches up to the same state as the others.
func TestCrashOneNodeUnderLoad(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 16, Replicas: 3, CrashableFS: true, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	ws := newWriters(64)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		runWriters(ctx, c, ws, 0, stop)
		close(done)
	}()
	waitApplied := func(min uint64) {
		t.Helper()
		if err := tc.WaitFor(ctx, func() error {
			if a := c.Node(1).Store().Stats().Applied; a < min {
				return fmt.Errorf("applied %d", a)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitApplied(1000)
	c.Node(2).Crash()
	base := c.Node(1).Store().Stats().Applied
	waitApplied(base + 1000)
	if err := c.Node(2).Restart(); err != nil {
		t.Fatal(err)
	}
	waitApplied(c.Node(1).Store().Stats().Applied + 1000)
	close(stop)
	<-done
	checkWriters(ctx, t, c, ws)
	checkReplicasAgree(ctx, t, c, ws)
}

// TestCrashBeforeLogCommitOnCatchUp targets the window between applying and
// syncing in one iteration. A follower that was cut off catches up with
// entries and a commit index covering them in the same message, so Raft
// hands it entries to apply that the same iteration is appending. The test
// crashes that follower just before the group commit, after forcing
// everything already written (its applies included) to disk: the applied
// index must still not be ahead of its durable log, so it restarts and
// catches up.
func TestCrashBeforeLogCommitOnCatchUp(t *testing.T) {
	var c *tc.Cluster
	var armed atomic.Bool
	images := make(chan *vfs.MemFS, 1)
	c = tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, CrashableFS: true, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(id uint64, o *raftstore.Options) {
			if id != 3 {
				return
			}
			o.Knobs = &raftstore.Knobs{BeforeLogCommit: func() {
				if !armed.CompareAndSwap(true, false) {
					return
				}
				// The crash point: nothing sent after it may reach peers.
				// A synced write makes every earlier write durable, as
				// another shard's sync or a large batch would.
				c.Net.Freeze(3)
				if err := c.Node(3).Engine().Write(keys.IdentityKey("crash-test"), nil); err != nil {
					t.Error(err)
				}
				images <- c.Node(3).CrashImage()
			}}
		}})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(3, c.NodeIDs())
	// Node 3 may have led the shard: a proposal it took now would wait for
	// the whole deadline. Propose once the majority side has the leader.
	waitNewLeader(ctx, t, c, 1, 3)
	for i := range 200 {
		k := fmt.Appendf(nil, "catchup-%d", i)
		if _, err := c.Propose(ctx, 1, tc.PutCmd(k, []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	armed.Store(true)
	c.Net.Heal()
	var img *vfs.MemFS
	select {
	case img = <-images:
	case <-ctx.Done():
		t.Fatal("node 3 never committed a log batch after healing")
	}
	c.Node(3).CrashTo(img)
	if err := c.Node(3).Restart(); err != nil {
		t.Fatalf("restart after a crash before the log commit: %v", err)
	}
	n3 := c.Node(3)
	if err := tc.WaitFor(ctx, func() error {
		v, ok, err := readAt(ctx, n3, 1, []byte("catchup-199"))
		if err != nil {
			return err
		}
		if !ok || v != "v" {
			return fmt.Errorf("catchup-199 = %q", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestCommitNotices checks that a leader does not send a follower an empty
// append to announce each commit once it has acknowledged everything, and
// that the followers still learn every commit (from heartbeats).
// It also checks the per-type counts of sent messages.
func TestCommitNotices(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	leader, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	was := leader.Store().Stats()
	const writes = 20
	for i := range writes {
		if _, err := c.Propose(ctx, shard, tc.PutCmd([]byte("k"), fmt.Appendf(nil, "v%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	// The followers learn the last commit without a notice and apply it.
	waitApplied(ctx, t, leader, shard, c.Nodes...)
	st := leader.Store().Stats()
	apps := st.MessagesSentByType["MsgApp"] - was.MessagesSentByType["MsgApp"]
	empty := st.EmptyAppendsSent - was.EmptyAppendsSent
	dropped := st.CommitNoticesDropped - was.CommitNoticesDropped
	t.Logf("leader sent %d appends, %d of them empty, and dropped %d notices for %d writes", apps, empty, dropped, writes)
	// Each write commits when a follower's acknowledgement arrives, and
	// etcd raft then tells both followers: that follower, having
	// acknowledged everything, is not told. (Half, for margin.)
	if dropped < writes/2 {
		t.Errorf("leader dropped %d commit notices for %d writes, want at least %d", dropped, writes, writes/2)
	}
	// Once the stores are stopped the counts are final and add up.
	for _, n := range c.Nodes {
		n.Stop()
		st := n.Store().Stats()
		var sum uint64
		for _, v := range st.MessagesSentByType {
			sum += v
		}
		if sum != st.MessagesSent {
			t.Errorf("node %d: by type %v sum to %d, MessagesSent %d", n.ID, st.MessagesSentByType, sum, st.MessagesSent)
		}
	}
}

// TestSentMessagesCounted checks the counts by type and of empty appends.
func TestSentMessagesCounted(t *testing.T) {
	s := openSingle(t, 1, nil)
	before := s.Stats()
	msg := func(typ raftpb.MessageType, ents int) *shoalpb.RaftMessage {
		m := &raftpb.Message{Type: typ.Enum()}
		for range ents {
			m.Entries = append(m.Entries, &raftpb.Entry{})
		}
		return &shoalpb.RaftMessage{ShardId: 1, Message: m}
	}
	raftstore.CountSent(s, []*shoalpb.RaftMessage{
		msg(raftpb.MsgApp, 0), msg(raftpb.MsgApp, 2), msg(raftpb.MsgApp, 0), msg(raftpb.MsgAppResp, 0), msg(raftpb.MsgHeartbeat, 0),
		// A removal notice carries a Raft message with no type.
		{ShardId: 1, Removed: true, Message: &raftpb.Message{To: new(uint64(2))}},
	})
	st := s.Stats()
	got := map[string]uint64{}
	for k, v := range st.MessagesSentByType {
		if d := v - before.MessagesSentByType[k]; d > 0 {
			got[k] = d
		}
	}
	want := map[string]uint64{"MsgApp": 3, "MsgAppResp": 1, "MsgHeartbeat": 1, "Removed": 1}
	if !maps.Equal(got, want) {
		t.Errorf("by type %v, want %v", got, want)
	}
	if d := st.EmptyAppendsSent - before.EmptyAppendsSent; d != 2 {
		t.Errorf("%d empty appends counted, want 2", d)
	}
	if d := st.MessagesSent - before.MessagesSent; d != 6 {
		t.Errorf("%d messages counted, want 6", d)
	}
}

// TestRemovedFollowerToldAtOnce checks that a leader sends the notice of a
// configuration change's commit even to a follower that acknowledged it
// (dropCommitNotices drops such notices otherwise): a removed follower
// learns its removal from it. Without it, the leader stops talking to the
// follower once it applies the change, and the follower finds out only
// when its election timeout (5 s here) makes it campaign.
func TestRemovedFollowerToldAtOnce(t *testing.T) {
	c, ctx, shard := startRemovalPair(t, 60*time.Second)
	_, follower := leaderAndOther(t, c, shard)
	start := time.Now()
	if _, err := c.ChangeReplicas(ctx, shard, func(d *shoalpb.ShardDescriptor) []raftstore.ReplicaChange {
		for _, r := range d.Replicas {
			if r.NodeId == follower.ID {
				return []raftstore.ReplicaChange{{Type: raftstore.RemoveReplica, NodeID: r.NodeId, ReplicaID: r.ReplicaId}}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitRemovedWithin(ctx, t, follower, shard, start, "the change was proposed")
}

// waitRemovedWithin waits until node no longer holds its replica of shard
// and fails the test if that took more than half an election timeout
// since start: it was not told of the commit of its removal.
func waitRemovedWithin(ctx context.Context, t *testing.T, node *tc.Node, shard uint64, start time.Time, since string) {
	t.Helper()
	if err := tc.WaitFor(ctx, func() error {
		st, err := node.Store().Status(shard)
		if err == nil && !st.Removed {
			return fmt.Errorf("node %d still holds its replica of shard %d", node.ID, shard)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("the removed follower went %v after %s", took, since)
	if limit := node.Store().ElectionTimeout() / 2; took > limit {
		t.Errorf("the removed follower went after %v, more than %v: it was not told of the commit", took, limit)
	}
}

// startRemovalPair starts two nodes with one shard whose election timeout
// is long (50 ticks), so that a removed follower that is not told of the
// commit stays well past the limit of waitRemovedWithin.
func startRemovalPair(t *testing.T, timeout time.Duration) (*tc.Cluster, context.Context, uint64) {
	t.Helper()
	c := tc.Start(t, tc.Options{Nodes: 2, Shards: 1, Replicas: 2, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.ElectionTicks = 50 }})
	ctx := ctxFor(t, timeout)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	if _, err := c.Propose(ctx, shard, tc.PutCmd([]byte("k"), []byte("v"))); err != nil {
		t.Fatal(err)
	}
	return c, ctx, shard
}

// TestRemovedFollowerToldAfterLeaderRestart is TestRemovedFollowerToldAtOnce
// for a leader that restarts with the removal in its log, appended and not
// yet committed: the replica no longer knows that the entry is a
// configuration change (it learns that as it appends one), so until it has
// applied the log it had at restart it must tell every commit at once
// (dropCommitNotices). Otherwise the removed follower, having acknowledged
// everything, would not be told of the commit, and the leader, once it
// applied the removal, would never contact it again.
func TestRemovedFollowerToldAfterLeaderRestart(t *testing.T) {
	c, ctx, shard := startRemovalPair(t, 90*time.Second)
	leader, follower := leaderAndOther(t, c, shard)
	before, err := leader.Store().Status(shard)
	if err != nil {
		t.Fatal(err)
	}
	// The removal is appended on the leader but cannot commit: its append
	// to the follower is lost.
	c.Net.Block(leader.ID, follower.ID)
	changeCtx, cancelChange := context.WithCancel(ctx)
	changed := make(chan error, 1)
	go func() {
		_, err := leader.Store().ChangeReplicas(changeCtx, shard, before.Descriptor.Epoch, []raftstore.ReplicaChange{{
			Type: raftstore.RemoveReplica, NodeID: follower.ID, ReplicaID: replicaOn(t, before.Descriptor, follower.ID)}})
		changed <- err
	}()
	if err := tc.WaitFor(ctx, func() error {
		st, err := leader.Store().Status(shard)
		if err != nil {
			return err
		}
		if st.LogEntries <= before.LogEntries {
			return fmt.Errorf("the leader's log holds %d entries, as before the change", st.LogEntries)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	leader.Stop()
	cancelChange()
	<-changed
	c.Net.Unblock(leader.ID, follower.ID)
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	// The restarted node, whose log is longer, is elected again (after an
	// election timeout) and commits the removal with its first entry.
	var elected time.Time
	if err := tc.WaitFor(ctx, func() error {
		st, err := leader.Store().Status(shard)
		if err != nil {
			return err
		}
		if st.Role != raftstore.RoleLeader {
			return fmt.Errorf("node %d is %v", leader.ID, st.Role)
		}
		elected = time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitRemovedWithin(ctx, t, follower, shard, elected, "the restarted leader was elected")
}

func replicaOn(t *testing.T, d *shoalpb.ShardDescriptor, node uint64) uint64 {
	t.Helper()
	for _, r := range d.Replicas {
		if r.NodeId == node {
			return r.ReplicaId
		}
	}
	t.Fatalf("shard %d has no replica on node %d", d.ShardId, node)
	return 0
}

// TestLostAppendRecovered checks that a follower whose append was lost on
// the way (silently: the leader is not told) catches up with no further
// writes. The leader learns of the gap from the follower's heartbeat
// answer and sends an empty append, which the follower rejects; that empty
// append must not be taken for a commit notice and dropped
// (dropCommitNotices), or the follower would stay behind.
func TestLostAppendRecovered(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	if _, err := c.Propose(ctx, shard, tc.PutCmd([]byte("k"), []byte("v1"))); err != nil {
		t.Fatal(err)
	}
	leader, follower := leaderAndOther(t, c, shard)
	// The write's append to follower is lost; the other follower makes
	// the quorum.
	c.Net.Block(leader.ID, follower.ID)
	if _, err := c.Propose(ctx, shard, tc.PutCmd([]byte("k"), []byte("v2"))); err != nil {
		t.Fatal(err)
	}
	c.Net.Unblock(leader.ID, follower.ID)
	waitApplied(ctx, t, leader, shard, follower)
	v, ok, err := readAt(ctx, follower, shard, []byte("k"))
	if err != nil || !ok || v != "v2" {
		t.Fatalf("follower reads %q, %v, %v; want v2", v, ok, err)
	}
}
