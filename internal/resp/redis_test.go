package resp_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/resp"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startCluster(t testing.TB, opts resp.Options) *tc.Cluster {
	t.Helper()
	return startClusterShards(t, 16, opts)
}

// startClusterShards starts a master and 3 nodes serving RESP, with shards
// shards of 3 replicas, and returns once the cluster is steady: every shard
// has a leader that the route table knows (so CLUSTER SLOTS is complete),
// the leaders are even over the nodes, and the master's scheduler is paused
// with no operator in flight. These tests are about the Redis front end,
// not about leaders moving under them: the scheduler evens out leaders
// after the placement, and moves the leaders of shards a test makes hot,
// which would make the tests depend on go-redis's retry budget.
// (TestTryAgainWithoutLeader takes leaders away on purpose.)
func startClusterShards(t testing.TB, shards int, opts resp.Options) *tc.Cluster {
	t.Helper()
	return startClusterWith(t, tc.Options{Shards: shards, RESPOpts: opts})
}

// startClusterWith is startClusterShards with more of the cluster's options
// (o.Shards and o.RESPOpts among them).
func startClusterWith(t testing.TB, o tc.Options) *tc.Cluster {
	t.Helper()
	shards := o.Shards
	o.Masters, o.Nodes, o.Replicas, o.RESP = 1, 3, 3, true
	c := tc.Start(t, o)
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	steady := func(wantPaused bool) error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		led := map[uint64]int{}
		for _, rt := range st.Routes.Shards {
			if rt.LeaderReplica == 0 {
				return fmt.Errorf("shard %d has no leader hint", rt.Shard.ShardId)
			}
			for _, r := range rt.Shard.Replicas {
				if r.ReplicaId == rt.LeaderReplica {
					led[r.NodeId]++
				}
			}
		}
		for _, n := range c.Nodes {
			if led[n.ID] < shards/len(c.Nodes) {
				return fmt.Errorf("leaders per node %v", led)
			}
		}
		if wantPaused && (!st.SchedulingPaused || len(st.Operators) > 0) {
			return fmt.Errorf("scheduling paused %v, %d operators in flight", st.SchedulingPaused, len(st.Operators))
		}
		return nil
	}
	if err := tc.WaitFor(ctx, func() error { return steady(false) }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Masters[0].Server().SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: true}); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return steady(true) }); err != nil {
		t.Fatal(err)
	}
	return c
}

func respAddrs(c *tc.Cluster) []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.RESPAddr)
	}
	return out
}

func clusterClient(t testing.TB, c *tc.Cluster, o *redis.ClusterOptions) *redis.ClusterClient {
	if o == nil {
		o = &redis.ClusterOptions{}
	}
	o.Addrs = respAddrs(c)
	rc := redis.NewClusterClient(o)
	t.Cleanup(func() { rc.Close() })
	return rc
}

func TestGoRedisClusterClient(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 60*time.Second)
	for _, proto := range []int{2, 3} {
		rc := clusterClient(t, c, &redis.ClusterOptions{Protocol: proto})
		k := func(s string) string { return fmt.Sprintf("p%d:%s", proto, s) }
		for i := range 200 {
			if err := rc.Set(ctx, k(strconv.Itoa(i)), i, 0).Err(); err != nil {
				t.Fatalf("RESP%d set %d: %v", proto, i, err)
			}
		}
		for i := range 200 {
			v, err := rc.Get(ctx, k(strconv.Itoa(i))).Int()
			if err != nil || v != i {
				t.Fatalf("RESP%d get %d: %v %v", proto, i, v, err)
			}
		}
		if _, err := rc.Get(ctx, k("missing")).Result(); !errors.Is(err, redis.Nil) {
			t.Fatalf("missing key: %v", err)
		}
		if n, err := rc.Incr(ctx, k("n")).Result(); err != nil || n != 1 {
			t.Fatalf("incr: %d %v", n, err)
		}
		if n, err := rc.IncrBy(ctx, k("n"), 41).Result(); err != nil || n != 42 {
			t.Fatalf("incrby: %d %v", n, err)
		}
		if n, err := rc.DecrBy(ctx, k("n"), 2).Result(); err != nil || n != 40 {
			t.Fatalf("decrby: %d %v", n, err)
		}
		if f, err := rc.IncrByFloat(ctx, k("f"), 1.5).Result(); err != nil || f != 1.5 {
			t.Fatalf("incrbyfloat: %v %v", f, err)
		}
		if ok, err := rc.SetNX(ctx, k("nx"), "a", 0).Result(); err != nil || !ok {
			t.Fatalf("setnx: %v %v", ok, err)
		}
		if ok, err := rc.SetNX(ctx, k("nx"), "b", 0).Result(); err != nil || ok {
			t.Fatalf("setnx again: %v %v", ok, err)
		}
		if old, err := rc.SetArgs(ctx, k("nx"), "c", redis.SetArgs{Get: true}).Result(); err != nil || old != "a" {
			t.Fatalf("set get: %q %v", old, err)
		}
		if err := rc.Set(ctx, k("ttl"), "v", time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if d, err := rc.TTL(ctx, k("ttl")).Result(); err != nil || d < 59*time.Minute || d > time.Hour {
			t.Fatalf("ttl: %v %v", d, err)
		}
		if ok, err := rc.Persist(ctx, k("ttl")).Result(); err != nil || !ok {
			t.Fatalf("persist: %v %v", ok, err)
		}
		if d, err := rc.TTL(ctx, k("ttl")).Result(); err != nil || d != -1 {
			t.Fatalf("ttl after persist: %v %v", d, err)
		}
		if ok, err := rc.Expire(ctx, k("ttl"), time.Minute).Result(); err != nil || !ok {
			t.Fatalf("expire: %v %v", ok, err)
		}
		if ok, err := rc.ExpireNX(ctx, k("ttl"), time.Hour).Result(); err != nil || ok {
			t.Fatalf("expire nx on a key with a ttl: %v %v", ok, err)
		}
		if n, err := rc.Append(ctx, k("s"), "hello").Result(); err != nil || n != 5 {
			t.Fatalf("append: %d %v", n, err)
		}
		if n, err := rc.StrLen(ctx, k("s")).Result(); err != nil || n != 5 {
			t.Fatalf("strlen: %d %v", n, err)
		}
		if s, err := rc.GetRange(ctx, k("s"), 1, -2).Result(); err != nil || s != "ell" {
			t.Fatalf("getrange: %q %v", s, err)
		}
		if s, err := rc.GetDel(ctx, k("s")).Result(); err != nil || s != "hello" {
			t.Fatalf("getdel: %q %v", s, err)
		}
		if typ, err := rc.Type(ctx, k("nx")).Result(); err != nil || typ != "string" {
			t.Fatalf("type: %q %v", typ, err)
		}
		// Multi-key commands within one slot, by hash tag.
		if err := rc.MSet(ctx, "{u"+k("1")+"}:a", "1", "{u"+k("1")+"}:b", "2").Err(); err != nil {
			t.Fatal(err)
		}
		vals, err := rc.MGet(ctx, "{u"+k("1")+"}:a", "{u"+k("1")+"}:b", "{u"+k("1")+"}:c").Result()
		if err != nil || vals[0] != "1" || vals[1] != "2" || vals[2] != nil {
			t.Fatalf("mget: %v %v", vals, err)
		}
		if n, err := rc.Exists(ctx, "{u"+k("1")+"}:a", "{u"+k("1")+"}:c").Result(); err != nil || n != 1 {
			t.Fatalf("exists: %d %v", n, err)
		}
		if n, err := rc.Del(ctx, "{u"+k("1")+"}:a", "{u"+k("1")+"}:b").Result(); err != nil || n != 2 {
			t.Fatalf("del: %d %v", n, err)
		}
	}
}

func TestErrorsAsRedisWordsThem(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 30*time.Second)
	rc := clusterClient(t, c, nil)
	one := redis.NewClient(&redis.Options{Addr: c.Nodes[0].RESPAddr, Protocol: 2})
	t.Cleanup(func() { one.Close() })
	if err := rc.Set(ctx, "str", "abc", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []any
		want string
	}{
		{[]any{"incr", "str"}, "ERR value is not an integer or out of range"},
		{[]any{"get"}, "ERR wrong number of arguments for 'get' command"},
		{[]any{"set", "k", "v", "nx", "xx"}, "ERR syntax error"},
		// Two different expiry options conflict (the same one twice does
		// not: below).
		{[]any{"set", "k", "v", "ex", "1", "px", "5"}, "ERR syntax error"},
		{[]any{"set", "k", "v", "keepttl", "ex", "5"}, "ERR syntax error"},
		{[]any{"getex", "str", "persist", "ex", "5"}, "ERR syntax error"},
		{[]any{"scan", "0", "count", "abc"}, "ERR value is not an integer or out of range"},
		{[]any{"scan", "0", "count", "0"}, "ERR syntax error"},
		{[]any{"set", "k", "v", "ex", "0"}, "ERR invalid expire time in 'set' command"},
		{[]any{"set", "k", "v", "ex", "x"}, "ERR value is not an integer or out of range"},
		// Overflowing once added to the current time, as Redis checks.
		{[]any{"set", "k", "v", "ex", "9223372036854775"}, "ERR invalid expire time in 'set' command"},
		{[]any{"psetex", "k", "9223372036854775807", "v"}, "ERR invalid expire time in 'psetex' command"},
		{[]any{"getex", "str", "px", "9223372036854775807"}, "ERR invalid expire time in 'getex' command"},
		{[]any{"nosuch", "a", "b"}, "ERR unknown command 'nosuch', with args beginning with: 'a' 'b' "},
		{[]any{"mget", "a", "b"}, "CROSSSLOT Keys in request don't hash to the same slot"},
		{[]any{"select", "1"}, "ERR SELECT is not allowed in cluster mode"},
		{[]any{"incrby", "n", "007"}, "ERR value is not an integer or out of range"},
	} {
		err := rc.Do(ctx, tt.args...).Err()
		if err == nil || err.Error() != tt.want {
			t.Errorf("%v: got %v, want %q", tt.args, err, tt.want)
		}
	}
	if v, err := rc.Get(ctx, "str").Result(); err != nil || v != "abc" {
		t.Fatalf("after the refused GETEX: %q, %v; the key must be untouched", v, err)
	}
	// An option given twice is taken, as Redis 7 takes it: the last
	// expiry counts.
	for _, args := range [][]any{
		{"set", "dup", "v", "nx", "nx"},
		{"set", "dup", "v", "ex", "1", "ex", "1000"},
		{"set", "dup", "v", "keepttl", "keepttl", "xx", "xx"},
		{"getex", "dup", "persist", "persist"},
		{"getex", "dup", "px", "5", "px", "2000000"},
	} {
		if err := rc.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	if d, err := rc.PTTL(ctx, "dup").Result(); err != nil || d < 1000*time.Second || d > 2000*time.Second {
		t.Fatalf("PTTL after the repeated options: %v, %v; want the last, 2000 s", d, err)
	}
	// TTLs longer than a Go duration holds (292 years) are kept, as Redis
	// keeps them: a relative TTL of 18446744074 s once wrapped to 291 ms.
	for _, args := range [][]any{
		{"set", "long1", "v", "ex", "18446744074"},
		{"psetex", "long2", "18446744073710", "v"},
		{"set", "long3", "v", "px", "9000000000000"},
	} {
		if err := rc.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		key := args[1].(string)
		if args[0] == "psetex" {
			key = "long2"
		}
		if d, err := rc.Do(ctx, "ttl", key).Int64(); err != nil || d < 100*365*24*3600 {
			t.Fatalf("%v: TTL %d s, %v; want over a century", args, d, err)
		}
	}
	// SETNX, EXPIRE and PERSIST answer integers in RESP3 too (go-redis
	// speaks RESP3 by default), as Redis 7 does: clients read them as such.
	for _, args := range [][]any{{"setnx", "int1", "v"}, {"expire", "int1", "100"}, {"persist", "int1"}} {
		if n, err := rc.Do(ctx, args...).Int64(); err != nil || n != 1 {
			t.Fatalf("%v: %d, %v; want the integer 1", args, n, err)
		}
	}
	// A node that does not lead a key's shard answers MOVED to the leader.
	moved := 0
	for i := range 50 {
		err := one.Set(ctx, "moved-"+strconv.Itoa(i), "v", 0).Err()
		if err != nil {
			if !strings.HasPrefix(err.Error(), "MOVED ") {
				t.Fatalf("unexpected error %v", err)
			}
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no MOVED from a node that leads a third of the shards")
	}
	if err := one.Do(ctx, "select", "0").Err(); err != nil {
		t.Fatalf("select 0: %v", err)
	}
}

func TestClusterCommands(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 30*time.Second)
	rc := clusterClient(t, c, nil)
	one := redis.NewClient(&redis.Options{Addr: c.Nodes[0].RESPAddr})
	t.Cleanup(func() { one.Close() })

	//lint:ignore SA1019 CLUSTER SLOTS is what older clients still send; it is tested on purpose.
	slots, err := one.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	covered := 0
	for _, s := range slots {
		covered += s.End - s.Start + 1
		if len(s.Nodes) != 3 || len(s.Nodes[0].ID) != 40 {
			t.Fatalf("slot range %d-%d: nodes %v", s.Start, s.End, s.Nodes)
		}
	}
	if covered != 16384 {
		t.Fatalf("CLUSTER SLOTS covers %d slots", covered)
	}
	shards, err := one.ClusterShards(ctx).Result()
	if err != nil || len(shards) != 16 {
		t.Fatalf("CLUSTER SHARDS: %d shards, %v", len(shards), err)
	}
	if shards[0].Nodes[0].Role != "master" || shards[0].Nodes[0].Health != "online" {
		t.Fatalf("shard nodes %+v", shards[0].Nodes)
	}
	nodes, err := one.ClusterNodes(ctx).Result()
	if err != nil || strings.Count(nodes, "\n") != 3 || !strings.Contains(nodes, "myself,master") {
		t.Fatalf("CLUSTER NODES:\n%s%v", nodes, err)
	}
	info, err := one.ClusterInfo(ctx).Result()
	if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
		t.Fatalf("CLUSTER INFO:\n%s%v", info, err)
	}
	if slot, err := one.ClusterKeySlot(ctx, "foo").Result(); err != nil || slot != 12182 {
		t.Fatalf("CLUSTER KEYSLOT foo: %d %v", slot, err)
	}
	id, err := one.ClusterMyID(ctx).Result()
	if err != nil || len(id) != 40 || !strings.Contains(nodes, id+" ") {
		t.Fatalf("CLUSTER MYID %q %v", id, err)
	}
	// Keys in a slot, counted and listed on the node that has it.
	for i := range 5 {
		if err := rc.Set(ctx, fmt.Sprintf("{slotkeys}%d", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	slot, _ := one.ClusterKeySlot(ctx, "{slotkeys}").Result()
	var (
		mu  sync.Mutex
		cnt int64
		ks  []string
	)
	// go-redis runs the callbacks concurrently, one per node.
	if err := rc.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
		got, err := n.ClusterCountKeysInSlot(ctx, int(slot)).Result()
		if err != nil || got == 0 {
			return err
		}
		list, err := n.ClusterGetKeysInSlot(ctx, int(slot), 3).Result()
		mu.Lock()
		cnt, ks = got, list
		mu.Unlock()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if cnt != 5 || len(ks) != 3 {
		t.Fatalf("COUNTKEYSINSLOT %d, GETKEYSINSLOT %v", cnt, ks)
	}
	// SCAN over every master finds every key once.
	want := map[string]bool{}
	for i := range 300 {
		k := "scan-" + strconv.Itoa(i)
		want[k] = true
		if err := rc.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int{}
	var total int64
	if err := rc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		var seen []string
		it := n.Scan(ctx, 0, "scan-*", 17).Iterator()
		for it.Next(ctx) {
			seen = append(seen, it.Val())
		}
		if err := it.Err(); err != nil {
			return err
		}
		size, err := n.DBSize(ctx).Result()
		mu.Lock()
		defer mu.Unlock()
		for _, k := range seen {
			got[k]++
		}
		total += size
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for k := range want {
		if got[k] != 1 {
			t.Fatalf("SCAN saw %s %d times", k, got[k])
		}
	}
	if total < 300 {
		t.Fatalf("DBSIZE over masters %d, want >= 300", total)
	}
}

// TestReadOnlyReplicas reads through go-redis's replica routing: reads go to
// followers after READONLY and stay linearizable.
func TestReadOnlyReplicas(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 30*time.Second)
	writer := clusterClient(t, c, nil)
	reader := clusterClient(t, c, &redis.ClusterOptions{ReadOnly: true, RouteRandomly: true})
	for i := range 200 {
		k := "ro-" + strconv.Itoa(i)
		if err := writer.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		// Read right after the write, from any replica: it must see it.
		v, err := reader.Get(ctx, k).Int()
		if err != nil || v != i {
			t.Fatalf("%s: read %d, %v after writing %d", k, v, err, i)
		}
	}

	// One connection to node 1, which holds a replica of every shard but
	// leads a third: until READONLY it answers reads of the other shards
	// -MOVED, as a Redis Cluster replica does; after it, it serves them.
	one := redis.NewClient(&redis.Options{Addr: c.Nodes[0].RESPAddr, Protocol: 2})
	t.Cleanup(func() { one.Close() })
	conn := one.Conn()
	t.Cleanup(func() { conn.Close() })
	var moved []string
	for i := range 200 {
		k := "ro-" + strconv.Itoa(i)
		err := conn.Get(ctx, k).Err()
		switch {
		case err == nil:
		case strings.HasPrefix(err.Error(), "MOVED "):
			moved = append(moved, k)
		default:
			t.Fatalf("get %s before READONLY: %v", k, err)
		}
	}
	if len(moved) == 0 {
		t.Fatal("a node leading a third of the shards served every read before READONLY")
	}
	if err := conn.ReadOnly(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range moved {
		want, _ := strconv.Atoi(strings.TrimPrefix(k, "ro-"))
		if v, err := conn.Get(ctx, k).Int(); err != nil || v != want {
			t.Fatalf("get %s after READONLY: %d, %v", k, v, err)
		}
	}
}

func TestAuth(t *testing.T) {
	c := startCluster(t, resp.Options{Password: "s3cret"})
	ctx := ctxFor(t, 30*time.Second)
	anon := redis.NewClient(&redis.Options{Addr: c.Nodes[0].RESPAddr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { anon.Close() })
	if err := anon.Get(ctx, "k").Err(); err == nil || !strings.HasPrefix(err.Error(), "NOAUTH") {
		t.Fatalf("unauthenticated get: %v", err)
	}
	// A HELLO that fails changes nothing: not the authentication, not
	// the name (Redis checks every option first).
	one := anon.Conn()
	t.Cleanup(func() { one.Close() })
	if err := one.Do(ctx, "hello", "3", "auth", "default", "s3cret", "bogus").Err(); err == nil ||
		err.Error() != "ERR Syntax error in HELLO option 'bogus'" {
		t.Fatalf("HELLO with an unknown option: %v", err)
	}
	if err := one.Do(ctx, "hello", "2", "setname", "sneaky").Err(); err == nil || !strings.HasPrefix(err.Error(), "NOAUTH") {
		t.Fatalf("HELLO SETNAME unauthenticated: %v", err)
	}
	if err := one.Get(ctx, "k").Err(); err == nil || !strings.HasPrefix(err.Error(), "NOAUTH") {
		t.Fatalf("get after a failed HELLO AUTH: %v; want still unauthenticated", err)
	}
	if err := one.Do(ctx, "auth", "s3cret").Err(); err != nil {
		t.Fatal(err)
	}
	if name, err := one.Do(ctx, "client", "getname").Result(); err != redis.Nil {
		t.Fatalf("name after the refused HELLOs: %v, %v; want none", name, err)
	}
	bad := clusterClient(t, c, &redis.ClusterOptions{Password: "wrong"})
	if err := bad.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("wrong password: %v", err)
	}
	good := clusterClient(t, c, &redis.ClusterOptions{Password: "s3cret"})
	if err := good.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := good.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("authenticated get: %q %v", v, err)
	}
}

func TestPipelineAndLargeValues(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 60*time.Second)
	// This test is about sizes, not speed: an 8 MiB write replicated to
	// three nodes under -race on a busy 2-core machine took longer than
	// go-redis's 3 s default read timeout (a clean-clone CI run at
	// 10dbcc2 failed on it), so the test's deadline bounds it instead.
	rc := clusterClient(t, c, &redis.ClusterOptions{ReadTimeout: 50 * time.Second, WriteTimeout: 50 * time.Second})
	pipe := rc.Pipeline()
	for i := range 500 {
		pipe.Set(ctx, "pipe-"+strconv.Itoa(i), i, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	pipe = rc.Pipeline()
	gets := make([]*redis.StringCmd, 500)
	for i := range gets {
		gets[i] = pipe.Get(ctx, "pipe-"+strconv.Itoa(i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	for i, g := range gets {
		if v, _ := g.Int(); v != i {
			t.Fatalf("pipelined get %d: %v", i, g.Val())
		}
	}
	big := strings.Repeat("x", 8<<20) // the default value limit
	if err := rc.Set(ctx, "big", big, 0).Err(); err != nil {
		t.Fatalf("8 MiB value: %v", err)
	}
	if v, err := rc.Get(ctx, "big").Result(); err != nil || len(v) != len(big) {
		t.Fatalf("8 MiB value read back: %d bytes, %v", len(v), err)
	}
	err := rc.Set(ctx, "bigger", big+"x", 0).Err()
	if err == nil || !strings.Contains(err.Error(), "exceeds maximum allowed size") {
		t.Fatalf("value over the limit: %v", err)
	}
	if _, err := rc.Get(ctx, "bigger").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("oversized value was stored: %v", err)
	}
	// A key named many times is read once; EXISTS reads no value; an
	// MGET answer over 48 MiB is refused, not built.
	if n, err := rc.Exists(ctx, slices.Repeat([]string{"big"}, 1000)...).Result(); err != nil || n != 1000 {
		t.Fatalf("EXISTS of an 8 MiB key, 1000 times: %d, %v", n, err)
	}
	if v, err := rc.MGet(ctx, "big", "big").Result(); err != nil || len(v) != 2 || v[1] != big {
		t.Fatalf("MGET big big: %d values, %v", len(v), err)
	}
	_, err = rc.MGet(ctx, slices.Repeat([]string{"big"}, 7)...).Result()
	if err == nil || !strings.HasPrefix(err.Error(), "ERR MGET: the values answered exceed") {
		t.Fatalf("MGET of 56 MiB: %v", err)
	}
}

// TestProxyMode serves every key from any node for a client that does not
// follow MOVED.
func TestProxyMode(t *testing.T) {
	c := startCluster(t, resp.Options{Proxy: true})
	ctx := ctxFor(t, 30*time.Second)
	plain := redis.NewClient(&redis.Options{Addr: c.Nodes[0].RESPAddr})
	t.Cleanup(func() { plain.Close() })
	for i := range 100 {
		k := "proxy-" + strconv.Itoa(i)
		if err := plain.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatalf("set %s through one node: %v", k, err)
		}
		if v, err := plain.Get(ctx, k).Int(); err != nil || v != i {
			t.Fatalf("get %s through one node: %v %v", k, v, err)
		}
	}
}

// TestIncrByFloat runs INCRBYFLOAT through go-redis: Redis's results and
// errors, the key's TTL kept, and no increment lost among concurrent ones
// (each is a compare-and-set, retried on a conflict).
func TestIncrByFloat(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 60*time.Second)
	for _, proto := range []int{2, 3} {
		rc := clusterClient(t, c, &redis.ClusterOptions{Protocol: proto})
		k := func(s string) string { return fmt.Sprintf("float%d:%s", proto, s) }
		incr := func(key, by string) (string, error) { return rc.Do(ctx, "incrbyfloat", key, by).Text() }
		// Redis's documentation example, and a sum a double would get wrong.
		if err := rc.Set(ctx, k("doc"), "10.50", 0).Err(); err != nil {
			t.Fatal(err)
		}
		for _, step := range []struct{ key, by, want string }{
			{k("doc"), "0.1", "10.6"},
			{k("doc"), "-5", "5.6"},
			{k("exp"), "5.0e3", "5000"},
			{k("exp"), "2.0e2", "5200"},
			{k("sum"), "0.1", "0.1"},
			{k("sum"), "0.2", "0.3"},
		} {
			if got, err := incr(step.key, step.by); err != nil || got != step.want {
				t.Fatalf("RESP%d INCRBYFLOAT %s %s: %q %v, want %q", proto, step.key, step.by, got, err, step.want)
			}
		}
		if v, err := rc.Get(ctx, k("doc")).Result(); err != nil || v != "5.6" {
			t.Fatalf("RESP%d stored value %q %v, want 5.6", proto, v, err)
		}
		if f, err := rc.IncrByFloat(ctx, k("doc"), 0.4).Result(); err != nil || f != 6 {
			t.Fatalf("RESP%d go-redis IncrByFloat: %v %v", proto, f, err)
		}
		// Errors, worded as Redis words them; the value is left alone.
		if err := rc.Set(ctx, k("text"), "abc", 0).Err(); err != nil {
			t.Fatal(err)
		}
		for _, e := range []struct{ key, by, want string }{
			{k("doc"), "abc", "ERR value is not a valid float"},
			{k("doc"), "1 ", "ERR value is not a valid float"},
			{k("doc"), "nan", "ERR value is not a valid float"},
			{k("text"), "1", "ERR value is not a valid float"},
			{k("doc"), "+inf", "ERR increment would produce NaN or Infinity"},
		} {
			if _, err := incr(e.key, e.by); err == nil || err.Error() != e.want {
				t.Fatalf("RESP%d INCRBYFLOAT %s %q: %v, want %q", proto, e.key, e.by, err, e.want)
			}
		}
		if v, _ := rc.Get(ctx, k("doc")).Result(); v != "6" {
			t.Fatalf("RESP%d value after failed increments: %q", proto, v)
		}
		// The TTL stays.
		if err := rc.Set(ctx, k("ttl"), "1.5", time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if got, err := incr(k("ttl"), "1"); err != nil || got != "2.5" {
			t.Fatalf("RESP%d INCRBYFLOAT on a key with a TTL: %q %v", proto, got, err)
		}
		if d, err := rc.TTL(ctx, k("ttl")).Result(); err != nil || d < 59*time.Minute || d > time.Hour {
			t.Fatalf("RESP%d TTL after INCRBYFLOAT: %v %v", proto, d, err)
		}
	}

	// Concurrent increments: none lost, none applied twice.
	rc := clusterClient(t, c, &redis.ClusterOptions{PoolSize: 8})
	const writers, each = 8, 25
	errs := make(chan error, writers)
	for range writers {
		go func() {
			for range each {
				if err := rc.IncrByFloat(ctx, "float:shared", 0.5).Err(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if v, err := rc.Get(ctx, "float:shared").Result(); err != nil || v != "100" {
		t.Fatalf("after %d concurrent increments of 0.5: %q %v, want 100", writers*each, v, err)
	}
}

// TestRequestWaitsOutElection sends a write to a node whose shards are
// electing leaders and cannot finish (two of three nodes stopped): it waits
// there (node.Config.LeaderWait) instead of failing -TRYAGAIN at once, and
// once a node is back and the shard elects, it is answered: done, or
// -MOVED to the new leader. Without the wait the write would fail
// -TRYAGAIN before the restart.
func TestRequestWaitsOutElection(t *testing.T) {
	c := startClusterWith(t, tc.Options{Shards: 16, LeaderWait: time.Minute, RESPOpts: resp.Options{CommandTimeout: 3 * time.Minute}})
	ctx := ctxFor(t, 2*time.Minute)
	survivor := c.Nodes[0]
	plain := redis.NewClient(&redis.Options{Addr: survivor.RESPAddr, Protocol: 2, MaxRetries: -1, ReadTimeout: 2 * time.Minute})
	t.Cleanup(func() { plain.Close() })

	c.Nodes[1].Stop()
	c.Nodes[2].Stop()
	if err := survivor.WaitLeaderless(ctx); err != nil {
		t.Fatal(err)
	}
	// A write, which needs the leader, and a read after READONLY, which
	// this follower serves once it can confirm a leader's commit index
	// (the routing and the read path each find no leader).
	wrote := make(chan error, 1)
	go func() { wrote <- plain.Set(ctx, "wait-election", "v", 0).Err() }()
	conn := plain.Conn()
	t.Cleanup(func() { conn.Close() })
	if err := conn.ReadOnly(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() { read <- conn.Get(ctx, "wait-election-read").Err() }()
	// Both are waiting once the store counts two waits.
	if err := tc.WaitFor(ctx, func() error {
		select {
		case err := <-wrote:
			t.Fatalf("the write was answered while no leader could be elected: %v", err)
		case err := <-read:
			t.Fatalf("the read was answered while no leader could be elected: %v", err)
		default:
		}
		if n := survivor.Store().Stats().LeaderWaits; n < 2 {
			return fmt.Errorf("%d requests waiting for a leader, want 2", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Nodes[1].Restart(); err != nil {
		t.Fatal(err)
	}
	for what, ch := range map[string]chan error{"write": wrote, "read": read} {
		select {
		case err := <-ch:
			if err != nil && !errors.Is(err, redis.Nil) && !strings.HasPrefix(err.Error(), "MOVED ") {
				t.Fatalf("the %s that waited for the election: %v, want an answer or MOVED", what, err)
			}
		case <-ctx.Done():
			t.Fatalf("the %s was not answered after the shard could elect a leader", what)
		}
	}
	rc := clusterClient(t, c, nil)
	if err := tc.WaitFor(ctx, func() error { return rc.Set(ctx, "wait-election", "v2", 0).Err() }); err != nil {
		t.Fatal(err)
	}
}

// TestTryAgainWithoutLeader: while a shard has no leader, a command on one
// of its keys answers -TRYAGAIN (Redis clients retry it, and it is never
// applied); once the shard has a leader again, the command succeeds.
func TestTryAgainWithoutLeader(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 120*time.Second)
	survivor := c.Nodes[0]
	// No retries: the test must see the reply itself.
	plain := redis.NewClient(&redis.Options{Addr: survivor.RESPAddr, Protocol: 2, MaxRetries: -1})
	t.Cleanup(func() { plain.Close() })

	// A key whose shard another node leads: the survivor has a follower of
	// it, which will find itself without a leader.
	key := ""
	for i := 0; key == ""; i++ {
		k := "tryagain-" + strconv.Itoa(i)
		err := plain.Set(ctx, k, "v0", 0).Err()
		switch {
		case err == nil:
		case strings.HasPrefix(err.Error(), "MOVED "):
			key = k
		default:
			t.Fatalf("set %s: %v", k, err)
		}
		if i == 1000 {
			t.Fatal("node 1 leads every shard")
		}
	}

	c.Nodes[1].Stop()
	c.Nodes[2].Stop()
	// Until the follower's election timeout it still names the stopped
	// leader (MOVED); then the shard has no leader: TRYAGAIN.
	if err := tc.WaitFor(ctx, func() error {
		err := plain.Set(ctx, key, "v1", 0).Err()
		switch {
		case err == nil:
			t.Fatalf("set %s succeeded on a shard with one of its three replicas up", key)
		case strings.HasPrefix(err.Error(), "TRYAGAIN "):
			return nil
		case !strings.HasPrefix(err.Error(), "MOVED "):
			t.Fatalf("set %s without a leader: %v, want TRYAGAIN or, at first, MOVED", key, err)
		}
		return err
	}); err != nil {
		t.Fatalf("no TRYAGAIN: %v", err)
	}
	// Reads too, after READONLY (the follower would serve them if it
	// could confirm a leader's commit index).
	conn := plain.Conn()
	t.Cleanup(func() { conn.Close() })
	if err := conn.ReadOnly(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := conn.Get(ctx, key).Err(); err == nil || !strings.HasPrefix(err.Error(), "TRYAGAIN ") {
		t.Fatalf("READONLY get without a leader: %v, want TRYAGAIN", err)
	}

	for _, n := range c.Nodes[1:] {
		if err := n.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	rc := clusterClient(t, c, nil)
	if err := tc.WaitFor(ctx, func() error { return rc.Set(ctx, key, "v2", 0).Err() }); err != nil {
		t.Fatalf("set %s after the restart: %v", key, err)
	}
	if v, err := rc.Get(ctx, key).Result(); err != nil || v != "v2" {
		t.Fatalf("get %s after the restart: %q %v", key, v, err)
	}
	// The survivor answers again: the value, or MOVED to the new leader.
	if err := tc.WaitFor(ctx, func() error {
		v, err := plain.Get(ctx, key).Result()
		if err == nil && v != "v2" {
			t.Fatalf("get %s from node 1: %q", key, v)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "MOVED ") {
			return err
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestExpireOptions checks EXPIRE's NX, XX, GT and LT, alone and combined,
// against what Redis 7 answers: a key without an expiry counts as expiring
// never, so it never passes GT and always passes LT (but not XX LT).
func TestExpireOptions(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 30*time.Second)
	rc := clusterClient(t, c, nil)
	for _, tt := range []struct {
		ttl  bool // the key has a 100 s expiry (else none)
		args []any
		want int64
	}{
		{false, []any{"200", "xx", "gt"}, 0},
		{true, []any{"200", "xx", "gt"}, 1},
		{true, []any{"50", "gt", "xx"}, 0},
		{false, []any{"50", "xx", "lt"}, 0},
		{true, []any{"50", "xx", "lt"}, 1},
		{true, []any{"200", "lt", "xx"}, 0},
		{false, []any{"50", "lt"}, 1},
		{false, []any{"50", "gt"}, 0},
		{false, []any{"50", "nx"}, 1},
		{true, []any{"50", "nx"}, 0},
		{true, []any{"50", "xx"}, 1},
	} {
		key := "expiring"
		var err error
		if tt.ttl {
			err = rc.Set(ctx, key, "v", 100*time.Second).Err()
		} else {
			err = rc.Set(ctx, key, "v", 0).Err()
		}
		if err != nil {
			t.Fatal(err)
		}
		got, err := rc.Do(ctx, append([]any{"expire", key}, tt.args...)...).Int64()
		if err != nil || got != tt.want {
			t.Errorf("EXPIRE %v on a key with an expiry %v: %d, %v; want %d", tt.args, tt.ttl, got, err, tt.want)
		}
	}
	for _, tt := range []struct {
		args []any
		want string
	}{
		{[]any{"nx", "xx"}, "ERR NX and XX, GT or LT options at the same time are not compatible"},
		{[]any{"nx", "gt"}, "ERR NX and XX, GT or LT options at the same time are not compatible"},
		{[]any{"gt", "lt"}, "ERR GT and LT options at the same time are not compatible"},
		{[]any{"xx", "gt", "lt"}, "ERR GT and LT options at the same time are not compatible"},
	} {
		err := rc.Do(ctx, append([]any{"expire", "expiring", "10"}, tt.args...)...).Err()
		if err == nil || err.Error() != tt.want {
			t.Errorf("EXPIRE %v: %v; want %q", tt.args, err, tt.want)
		}
	}
}
