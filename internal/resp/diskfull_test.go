package resp_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestDiskFullRefusesWritesKeepsData runs a cluster whose nodes report the
// free space the test sets (their engines are on in-memory filesystems),
// with a 64 MiB reserve. Below it every write is refused with a clear
// error, through the Redis port and the Go client alike, while reads and
// deletes still work and nothing written before is lost; once space is
// back, writes are accepted again.
func TestDiskFullRefusesWritesKeepsData(t *testing.T) {
	c := startClusterWith(t, tc.Options{Shards: 16, CrashableFS: true, DiskReserveBytes: 64 << 20})
	ctx := ctxFor(t, 90*time.Second)
	setFree := func(free uint64) {
		for _, n := range c.Nodes {
			n.FS().(*vfs.MemFS).TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: free, TotalBytes: 1 << 40})
		}
	}
	setFree(1 << 30)
	rc := clusterClient(t, c, &redis.ClusterOptions{MaxRedirects: 8})
	cl, err := client.Open(ctx, c.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })

	const n = 64 // over all 16 shards, so every node leads some
	for i := range n {
		if err := rc.Set(ctx, fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i), 0).Err(); err != nil {
			t.Fatalf("set k%d: %v", i, err)
		}
	}

	// Below the reserve but above half of it: no write is accepted, but
	// the nodes still replicate, so deletes commit.
	setFree(40 << 20)
	// Each node measures again within 100ms; poll until every shard
	// refuses (a key per shard: writes to all n keys fail).
	const wantMsg = "ERR disk full: 40 MiB free, below the reserve of 64 MiB; only deletes are accepted until space is freed"
	if err := tc.WaitFor(ctx, func() error {
		for i := range n {
			err := rc.Set(ctx, fmt.Sprintf("new%d", i), "x", 0).Err()
			if err == nil {
				return fmt.Errorf("set new%d accepted", i)
			}
			if err.Error() != wantMsg {
				t.Fatalf("set new%d: %q, want %q", i, err, wantMsg)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Every kind of write is refused; nothing of it is done.
	for name, cmd := range map[string]redis.Cmder{
		"SET":    rc.Set(ctx, "k1", "changed", 0),
		"SETNX":  rc.SetNX(ctx, "k1", "changed", 0),
		"INCR":   rc.Incr(ctx, "counter"),
		"APPEND": rc.Append(ctx, "k2", "more"),
		"EXPIRE": rc.Expire(ctx, "k3", time.Hour),
		"MSET":   rc.MSet(ctx, "{t}a", "1", "{t}b", "2"),
	} {
		if err := cmd.Err(); err == nil || !strings.HasPrefix(err.Error(), "ERR disk full") {
			t.Errorf("%s: %v, want ERR disk full", name, err)
		}
	}
	_, err = cl.Put(ctx, []byte("k1"), []byte("changed"))
	if !errors.Is(err, client.ErrDiskFull) || errors.Is(err, client.ErrTimeout) {
		t.Fatalf("Go client put: %v, want ErrDiskFull at once (not retried to the deadline)", err)
	}

	// Reads work and find everything written before; deletes are accepted.
	for i := range n {
		if v, err := rc.Get(ctx, fmt.Sprintf("k%d", i)).Result(); err != nil || v != fmt.Sprintf("v%d", i) {
			t.Fatalf("get k%d while full: %q %v", i, v, err)
		}
	}
	if ttl, err := rc.TTL(ctx, "k3").Result(); err != nil || ttl != -1 {
		t.Fatalf("k3's TTL after a refused EXPIRE: %v %v, want none", ttl, err)
	}
	if got, err := rc.Del(ctx, "k0").Result(); err != nil || got != 1 {
		t.Fatalf("del k0 while full: %d %v", got, err)
	}
	if ok, err := cl.Delete(ctx, []byte("k5")); err != nil || !ok {
		t.Fatalf("Go client delete k5 while full: %v %v", ok, err)
	}
	if v, err := rc.GetDel(ctx, "k7").Result(); err != nil || v != "v7" {
		t.Fatalf("getdel k7 while full: %q %v", v, err)
	}
	// An expiry already past deletes, so it is accepted too.
	if ok, err := rc.PExpireAt(ctx, "k9", time.UnixMilli(1)).Result(); err != nil || !ok {
		t.Fatalf("pexpireat k9 in the past while full: %v %v", ok, err)
	}
	for _, k := range []string{"k0", "k5", "k7", "k9"} {
		if err := rc.Get(ctx, k).Err(); !errors.Is(err, redis.Nil) {
			t.Fatalf("get %s after its delete: %v", k, err)
		}
	}

	setFree(71 << 20) // 10% above the reserve: a full node needs that much

	if err := tc.WaitFor(ctx, func() error {
		for i := range n {
			if err := rc.Set(ctx, fmt.Sprintf("new%d", i), "x", 0).Err(); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("writes with space freed: %v", err)
	}
	if v, err := rc.Incr(ctx, "counter").Result(); err != nil || v != 1 {
		t.Fatalf("INCR after space came back: %d %v (the refused one must not have counted)", v, err)
	}
	if v, err := rc.Get(ctx, "k1").Result(); err != nil || v != "v1" {
		t.Fatalf("k1: %q %v, want the value from before", v, err)
	}
}

// TestDiskFullFollowerFallsBehindThenCatchesUp fills one node's disk below
// half its reserve. The shards it leads refuse writes; the others go on
// committing with their other two replicas, while this node drops the
// entries it is sent instead of writing them. Once space is back it catches up with every shard.
func TestDiskFullFollowerFallsBehindThenCatchesUp(t *testing.T) {
	c := startClusterWith(t, tc.Options{Shards: 16, CrashableFS: true, DiskReserveBytes: 64 << 20})
	ctx := ctxFor(t, 90*time.Second)
	full := c.Nodes[2]
	setFree := func(free uint64) {
		full.FS().(*vfs.MemFS).TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: free, TotalBytes: 1 << 40})
	}
	setFree(10 << 20)
	rc := clusterClient(t, c, &redis.ClusterOptions{MaxRedirects: 8})

	// Writes to the full node's shards are refused (once it has measured);
	// every other write succeeds.
	accepted := map[string]bool{}
	if err := tc.WaitFor(ctx, func() error {
		refused := 0
		for i := range 64 {
			k := fmt.Sprintf("k%d", i)
			switch err := rc.Set(ctx, k, k, 0).Err(); {
			case err == nil:
				accepted[k] = true
			case strings.HasPrefix(err.Error(), "ERR disk full"):
				refused++
			default:
				t.Fatalf("set %s: %v", k, err)
			}
		}
		if refused == 0 {
			return errors.New("no write refused yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(accepted) == 0 {
		t.Fatal("every write refused: the nodes with room should have taken theirs")
	}
	// The refusal above shows the node measured; an append to drop comes
	// with the next write to a shard it follows.
	if err := tc.WaitFor(ctx, func() error {
		if full.Store().Stats().AppendsRefusedDiskFull > 0 {
			return nil
		}
		for i := range 64 {
			if k := fmt.Sprintf("k%d", i); accepted[k] {
				if err := rc.Set(ctx, k, k, 0).Err(); err != nil {
					return err
				}
			}
		}
		return errors.New("the full node took every append it was sent")
	}); err != nil {
		t.Fatal(err)
	}

	// The full node's replicas of the other nodes' shards lag behind.
	behind := func() (int, error) { return replicasBehind(c, full) }
	if n, err := behind(); err != nil || n == 0 {
		t.Fatalf("replicas of the full node behind their leaders: %d (%v), want some", n, err)
	}

	setFree(1 << 30)
	if err := tc.WaitFor(ctx, func() error {
		if n, err := behind(); err != nil || n > 0 {
			return fmt.Errorf("%d replicas behind (%v)", n, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("catching up once space is back: %v", err)
	}
	for k := range accepted {
		if v, err := rc.Get(ctx, k).Result(); err != nil || v != k {
			t.Fatalf("get %s: %q %v", k, v, err)
		}
	}
	if err := rc.Set(ctx, "after", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
}

// TestDiskFullOnRealFilesystem puts one node's data on a real 160 MiB
// tmpfs with a 64 MiB reserve and writes 64 KiB values until that node
// refuses: it must refuse with DISK_FULL rather than run out of space
// (Pebble stops the process when it cannot write its log). The other
// nodes' shards go on taking writes until the small node, below half its
// reserve, drops their entries. Every acknowledged write is kept, and
// writes are taken again once the filesystem grows.
// Mounting needs root; elsewhere the test is skipped.
func TestDiskFullOnRealFilesystem(t *testing.T) {
	var mnt string
	c := startClusterWith(t, tc.Options{
		Shards: 16, DiskReserveBytes: 64 << 20,
		PrepareDir: func(i int, dir string) error {
			if i != 0 {
				return nil
			}
			if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=160m"); err != nil {
				t.Skipf("cannot mount a tmpfs (needs root): %v", err)
			}
			mnt = dir
			t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
			return nil
		},
	})
	ctx := ctxFor(t, 120*time.Second)
	rc := clusterClient(t, c, &redis.ClusterOptions{MaxRedirects: 8, ReadTimeout: 20 * time.Second, WriteTimeout: 20 * time.Second})
	small := c.Nodes[0]

	// Random values, which compression cannot shrink.
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 64<<10)
	values := map[string]string{}
	var acked []string
	// write sets k to a new random value and reports whether it was
	// refused for want of disk space; every other error fails the test.
	write := func(k string) (refused bool) {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		value := string(buf)
		switch err := rc.Set(ctx, k, value, 0).Err(); {
		case err == nil:
			acked = append(acked, k)
			values[k] = value
			return false
		case strings.HasPrefix(err.Error(), "ERR disk full"):
			return true
		default:
			t.Fatalf("set %s after %d writes: %v (free: %+v)", k, len(acked), err, small.Node().DiskSpace())
			return false
		}
	}
	refused := false
	// 160 MiB cannot hold 4,000 values of 64 KiB (250 MiB) with their
	// Raft log copies: the node must refuse well before.
	for i := 0; i < 4000 && !refused; i++ {
		refused = write(fmt.Sprintf("big%d", i))
	}
	if !refused {
		t.Fatalf("%d writes of 64 KiB accepted on a 160 MiB filesystem; free: %+v", len(acked), small.Node().DiskSpace())
	}
	if err := small.Store().Err(); err != nil {
		t.Fatalf("the small node's store failed: %v", err)
	}
	// The refusal shows the node counted its disk full; compactions may
	// have freed some since, so only the room left is checked.
	sp := small.Node().DiskSpace()
	if sp.Available == 0 {
		t.Fatalf("after the refusal the small node's disk is %+v, want room left", sp)
	}
	t.Logf("%d writes acknowledged, then refused with %d MiB free", len(acked), sp.Available>>20)

	// The shards other nodes lead go on taking writes. The small node
	// stores their entries until it is below half its reserve, then drops
	// them; it never runs out of space.
	for i := 0; i < 4000 && small.Store().Stats().AppendsRefusedDiskFull == 0; i++ {
		write(fmt.Sprintf("more%d", i))
	}
	if small.Store().Stats().AppendsRefusedDiskFull == 0 {
		t.Fatalf("the small node never refused an append; free: %+v", small.Node().DiskSpace())
	}
	if err := small.Store().Err(); err != nil {
		t.Fatalf("the small node's store failed: %v", err)
	}
	// The dropped appends show the node went below half its reserve; it
	// may be back above it by now (a flush or compaction frees space).
	if sp := small.Node().DiskSpace(); sp.Available == 0 {
		t.Fatalf("the small node's disk is %+v, want room left", sp)
	}
	t.Logf("%d writes acknowledged in all; the small node stopped taking entries with %d MiB free",
		len(acked), small.Node().DiskSpace().Available>>20)
	for _, k := range acked {
		if v, err := rc.Get(ctx, k).Result(); err != nil || v != values[k] {
			t.Fatalf("get %s: %d bytes, %v (want the %d acknowledged)", k, len(v), err, len(values[k]))
		}
	}

	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_REMOUNT, "size=1g"); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		for i := range 16 {
			if err := rc.Set(ctx, fmt.Sprintf("after%d", i), "x", 0).Err(); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("writes after the filesystem grew: %v", err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if n, err := replicasBehind(c, small); err != nil || n > 0 {
			return fmt.Errorf("%d replicas of the small node behind (%v)", n, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("catching up once the filesystem grew: %v", err)
	}
}

// replicasBehind counts the replicas on node n that have applied less than
// their shard's leader (on another node).
func replicasBehind(c *tc.Cluster, n *tc.Node) (int, error) {
	behind := 0
	for _, st := range n.Store().Replicas() {
		leader, err := c.Leader(st.ShardID)
		if err != nil {
			return 0, err
		}
		if leader == n {
			continue
		}
		ls, err := leader.Store().Status(st.ShardID)
		if err != nil {
			return 0, err
		}
		if st.Applied < ls.Applied {
			behind++
		}
	}
	return behind, nil
}

// TestDiskFullLeadersMoveAway fills one node's disk (below the reserve,
// above half of it) with the scheduler running: the masters learn it from
// the heartbeats and hand the node's leaderships to nodes with room, after
// which every key takes writes again.
func TestDiskFullLeadersMoveAway(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: 16, Replicas: 3, RESP: true,
		CrashableFS: true, DiskReserveBytes: 64 << 20})
	ctx := ctxFor(t, 90*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		n.FS().(*vfs.MemFS).TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 1 << 40})
	}
	full := c.Nodes[0]
	full.FS().(*vfs.MemFS).TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 40 << 20, TotalBytes: 1 << 40})

	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		if hb := st.NodeHeartbeats[full.ID]; !hb.GetStats().GetDiskFull() || hb.GetStats().GetFreeBytes() != 40<<20 {
			return fmt.Errorf("node %d's heartbeat: %v", full.ID, hb.GetStats())
		}
		for _, rt := range st.Routes.Shards {
			for _, r := range rt.Shard.Replicas {
				if r.ReplicaId == rt.LeaderReplica && r.NodeId == full.ID {
					return fmt.Errorf("node %d still leads shard %d", full.ID, rt.Shard.ShardId)
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rc := clusterClient(t, c, &redis.ClusterOptions{MaxRedirects: 8})
	if err := tc.WaitFor(ctx, func() error {
		for i := range 64 {
			if err := rc.Set(ctx, fmt.Sprintf("k%d", i), "v", 0).Err(); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("writes with the full node's leaderships moved: %v", err)
	}
}

// TestDiskFullMajorityRefusedAtOnce puts two of three nodes below half
// their reserve, where they take no entries: the third node, which has
// room, must refuse writes (deletes too) to its shards at once with DISK_FULL,
// naming the nodes, rather than accept writes that cannot commit and time
// out with an unknown outcome. Once one node has room again, every shard
// takes writes.
func TestDiskFullMajorityRefusedAtOnce(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: 16, Replicas: 3, RESP: true,
		CrashableFS: true, DiskReserveBytes: 64 << 20})
	ctx := ctxFor(t, 90*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	setFree := func(n *tc.Node, free uint64) {
		n.FS().(*vfs.MemFS).TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: free, TotalBytes: 1 << 40})
	}
	for _, n := range c.Nodes {
		setFree(n, 1<<30)
	}
	rc := clusterClient(t, c, &redis.ClusterOptions{MaxRedirects: 8})
	if err := tc.WaitFor(ctx, func() error {
		for i := range 64 {
			if err := rc.Set(ctx, fmt.Sprintf("k%d", i), "before", 0).Err(); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Leaders stay where they are: this is about the nodes' refusals, not
	// the scheduler's moves (testdata/diskfull.txt).
	m, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Server().SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: true}); err != nil {
		t.Fatal(err)
	}
	setFree(c.Nodes[0], 10<<20)
	setFree(c.Nodes[1], 10<<20)
	want := fmt.Sprintf("cannot commit: 2 of its 3 voters are on nodes [%d %d], below half their disk reserve",
		min(c.Nodes[0].ID, c.Nodes[1].ID), max(c.Nodes[0].ID, c.Nodes[1].ID))
	// Once the masters have the two heartbeats and the third node their
	// answer (writes sent before that may wait for a commit that cannot
	// come, and time out), the third node refuses writes for its shards'
	// quorum.
	probe := "probe"
	if err := tc.WaitFor(ctx, func() error {
		for i := range 64 {
			k := fmt.Sprintf("k%d", i)
			sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			err := rc.Set(sctx, k, "during", 0).Err()
			cancel()
			if err != nil && strings.Contains(err.Error(), want) {
				probe = k
				return nil
			}
		}
		return errors.New("no write refused for its quorum yet")
	}); err != nil {
		t.Fatal(err)
	}
	// From then on every write is refused at once: by the exhausted nodes
	// for their own disks, by the third node for its shards' quorum.
	quorum := 0
	for i := range 64 {
		k := fmt.Sprintf("k%d", i)
		start := time.Now()
		err := rc.Set(ctx, k, "refused", 0).Err()
		switch {
		case err == nil:
			t.Fatalf("%s written with two nodes exhausted", k)
		case !strings.HasPrefix(err.Error(), "ERR disk full"):
			t.Fatalf("%s: %v, want ERR disk full", k, err)
		case time.Since(start) > 3*time.Second:
			// One that waited for a commit first takes seconds (5 s
			// when one was seen, before the node knew).
			t.Fatalf("%s refused after %v: a refusal must not wait for a commit", k, time.Since(start))
		}
		if strings.Contains(err.Error(), want) {
			quorum++
		}
	}
	t.Logf("after %s: %d of 64 writes refused for their quorum, the others by the exhausted nodes", probe, quorum)
	if quorum == 0 || quorum == 64 {
		t.Fatalf("%d of 64 writes refused for their quorum, want some (the third node's shards) and not all", quorum)
	}
	// Deletes cannot commit either, and are refused the same way on the
	// node with room (the exhausted nodes accept deletes for their own
	// disks, but those too would need a voter that takes entries).
	refusedDel := map[string]bool{}
	for i := range 64 {
		k := fmt.Sprintf("k%d", i)
		switch err := rc.Del(ctx, k).Err(); {
		case err == nil: // an exhausted node's shard: it commits with the third node
		case strings.Contains(err.Error(), want):
			refusedDel[k] = true
		default:
			t.Fatalf("del %s: %v", k, err)
		}
	}
	// As many as the writes, unless a leadership moved in between.
	if len(refusedDel) == 0 {
		t.Fatalf("no delete refused for its quorum (%d writes were)", quorum)
	}
	// Nothing refused was done: no key holds the refused value, and the
	// keys whose delete was refused are still there. (A write of the probe
	// loop, sent before the nodes measured their disks, may have been
	// taken.)
	for i := range 64 {
		k := fmt.Sprintf("k%d", i)
		v, err := rc.Get(ctx, k).Result()
		if err != nil && !(errors.Is(err, redis.Nil) && !refusedDel[k]) || v == "refused" {
			t.Fatalf("%s = %q, %v after refused writes and deletes", k, v, err)
		}
	}

	// One node has room again, and the scheduler runs: the third node's
	// shards commit with it, and the leaders of the node still exhausted
	// move to nodes with room, so every key takes writes.
	setFree(c.Nodes[0], 1<<30)
	if _, err := m.Server().SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: false}); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		for i := range 64 {
			if err := rc.Set(ctx, fmt.Sprintf("k%d", i), "after", 0).Err(); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("writes once one node has room again: %v", err)
	}
}
