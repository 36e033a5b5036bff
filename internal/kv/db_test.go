package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/testcluster"
)

// nopTransport drops every message: a single-node store never needs one.
type nopTransport struct{}

func (nopTransport) Send(uint64, []*shoalpb.RaftMessage) error { return nil }

func (nopTransport) SendSnapshot(context.Context, uint64, *shoalpb.SnapshotChunk, func() (*shoalpb.SnapshotChunk, error)) error {
	return errors.New("single-node store: no snapshots")
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const numShards = 4

type env struct {
	db    *kv.DB
	store *raftstore.Store
	eng   *storage.Engine
	clock *fakeClock
	rows  *kv.RowCache
}

// startDB runs a DB over a single-node store with numShards shards covering
// every slot, each with one replica that leads. Unless a test sets them,
// the clock is fake and the sweeper is off.
func startDB(t *testing.T, opts kv.Options) *env {
	t.Helper()
	return startDBLeaderless(t, opts, 0)
}

// startDBLeaderless is startDB with one shard, unless 0, that never has a
// leader: its other voter, on node 2, does not exist.
func startDBLeaderless(t *testing.T, opts kv.Options, leaderless uint64) *env {
	t.Helper()
	eng, err := storage.Open(storage.Options{
		Dir: "db", FS: vfs.NewMem(), CacheBytes: 1 << 20, MemTableBytes: 1 << 20,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	warnings := &testcluster.SyncBuffer{} // tests fail if the DB warned
	logger := slog.New(slog.NewTextHandler(warnings, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Every DB test reads through a row cache, as a node does.
	if opts.RowCache == nil {
		opts.RowCache = kv.NewRowCache(1 << 20)
	}
	rows := opts.RowCache
	store, err := raftstore.NewStore(raftstore.Options{
		NodeID:    1,
		Engine:    eng,
		Transport: nopTransport{},
		NewStateMachine: func(d *shoalpb.ShardDescriptor) raftstore.StateMachine {
			return kv.NewStateMachine(d, kv.StateMachineOptions{Logger: logger, RowCache: rows})
		},
		BeforeDataReset: rows.BlockSlots,
		TickInterval:    10 * time.Millisecond,
		Logger:          slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	store.Start()
	for i := range numShards {
		start, end := keys.ShardSlots(i, numShards)
		d := &shoalpb.ShardDescriptor{
			ShardId: uint64(i + 1), StartSlot: uint32(start), EndSlot: uint32(end), Epoch: 1,
			Replicas: []*shoalpb.ReplicaDescriptor{{NodeId: 1, ReplicaId: uint64(i + 1)}},
		}
		if d.ShardId == leaderless {
			d.Replicas = []*shoalpb.ReplicaDescriptor{{NodeId: 2, ReplicaId: 100}, {NodeId: 1, ReplicaId: 101}}
		}
		if err := store.BootstrapReplica(d); err != nil {
			t.Fatal(err)
		}
	}
	clock := &fakeClock{now: time.UnixMilli(1_700_000_000_000)}
	if opts.Clock == nil {
		opts.Clock = clock.Now
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = -1
	}
	opts.Logger = logger
	db := kv.New(store, opts)
	t.Cleanup(func() {
		db.Close()
		store.Stop()
		if err := store.Err(); err != nil {
			t.Errorf("store failed: %v", err)
		}
		eng.Close()
		if w := warnings.String(); w != "" {
			t.Errorf("unexpected warnings:\n%s", w)
		}
	})
	waitFor(t, 10*time.Second, func() error {
		for i := range numShards {
			st, err := store.Status(uint64(i + 1))
			if err != nil {
				return err
			}
			if st.Role != raftstore.RoleLeader && st.ShardID != leaderless {
				return fmt.Errorf("shard %d is %s", i+1, st.Role)
			}
		}
		return nil
	})
	return &env{db: db, store: store, eng: eng, clock: clock, rows: rows}
}

// waitFor polls cond until it returns nil, failing the test at the
// deadline with cond's last error.
func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		<-tick.C
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func shardOf(key string) uint64 {
	slot := int(keys.Slot([]byte(key)))
	return uint64(slot*numShards/keys.SlotCount) + 1
}

// keyInShard returns a key with prefix that lives in shard.
func keyInShard(shard uint64, prefix string) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s%d", prefix, i)
		if shardOf(k) == shard {
			return k
		}
	}
}

func (e *env) mustGet(t *testing.T, key string) (string, bool) {
	t.Helper()
	v, found, err := e.db.Get(testCtx(t), []byte(key), kv.ReadOptions{})
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return string(v.Data), found
}

func (e *env) mustPut(t *testing.T, key, value string, o kv.PutOptions) kv.PutResult {
	t.Helper()
	r, err := e.db.Put(testCtx(t), []byte(key), []byte(value), o)
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return r
}

// stored reads key's raw data record, expired or not.
func (e *env) stored(t *testing.T, key string) bool {
	t.Helper()
	_, ok, err := e.eng.Get(keys.DataKey(keys.Slot([]byte(key)), []byte(key)))
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestDBPutGetDelete(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := testCtx(t)
	// One key per shard, so every shard serves.
	for shard := uint64(1); shard <= numShards; shard++ {
		k := keyInShard(shard, "key")
		if r := e.mustPut(t, k, "v1", kv.PutOptions{}); !r.Applied || r.Found {
			t.Fatalf("first put: %+v", r)
		}
		if r := e.mustPut(t, k, "v2", kv.PutOptions{ReturnOld: true}); !r.Applied || !r.Found || string(r.Old) != "v1" {
			t.Fatalf("second put: %+v", r)
		}
		if v, found := e.mustGet(t, k); !found || v != "v2" {
			t.Fatalf("get %q = %q, %v", k, v, found)
		}
		v, found, err := e.db.Get(ctx, []byte(k), kv.ReadOptions{Stale: true})
		if err != nil || !found || string(v.Data) != "v2" || !v.ExpireAt.IsZero() {
			t.Fatalf("stale get %q = %+v, %v, %v", k, v, found, err)
		}
		r, err := e.db.Delete(ctx, []byte(k), kv.DeleteOptions{ReturnOld: true})
		if err != nil || !r.Found || string(r.Old) != "v2" {
			t.Fatalf("delete: %+v, %v", r, err)
		}
		if _, found := e.mustGet(t, k); found {
			t.Fatalf("%q found after delete", k)
		}
		if r, err := e.db.Delete(ctx, []byte(k), kv.DeleteOptions{}); err != nil || r.Found {
			t.Fatalf("second delete: %+v, %v", r, err)
		}
	}
	// The empty key is a key, as in Redis.
	e.mustPut(t, "", "empty", kv.PutOptions{})
	if v, found := e.mustGet(t, ""); !found || v != "empty" {
		t.Fatalf("empty key: %q, %v", v, found)
	}
}

func TestDBConditions(t *testing.T) {
	e := startDB(t, kv.Options{})
	if r := e.mustPut(t, "k", "a", kv.PutOptions{Condition: kv.IfExists}); r.Applied {
		t.Fatalf("XX on absent key applied: %+v", r)
	}
	if _, found := e.mustGet(t, "k"); found {
		t.Fatal("XX on absent key wrote")
	}
	if r := e.mustPut(t, "k", "b", kv.PutOptions{Condition: kv.IfNotExists}); !r.Applied {
		t.Fatalf("NX on absent key: %+v", r)
	}
	if r := e.mustPut(t, "k", "c", kv.PutOptions{Condition: kv.IfNotExists, ReturnOld: true}); r.Applied || !r.Found || string(r.Old) != "b" {
		t.Fatalf("NX on existing key: %+v", r)
	}
	if r := e.mustPut(t, "k", "d", kv.PutOptions{Condition: kv.IfExists}); !r.Applied {
		t.Fatalf("XX on existing key: %+v", r)
	}
	if v, _ := e.mustGet(t, "k"); v != "d" {
		t.Fatalf("k = %q, want d", v)
	}
	if _, err := e.db.Put(testCtx(t), []byte("k"), nil, kv.PutOptions{Condition: 9}); !errors.Is(err, kv.ErrInvalid) {
		t.Fatalf("unknown condition: %v", err)
	}
}

func TestDBCompareAndSet(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := testCtx(t)
	r, err := e.db.CompareAndSet(ctx, []byte("k"), nil, []byte("1"), kv.CASOptions{})
	if err != nil || !r.Swapped {
		t.Fatalf("create: %+v, %v", r, err)
	}
	r, err = e.db.CompareAndSet(ctx, []byte("k"), nil, []byte("2"), kv.CASOptions{})
	if err != nil || r.Swapped || !r.Found || string(r.Current) != "1" {
		t.Fatalf("create over existing: %+v, %v", r, err)
	}
	r, err = e.db.CompareAndSet(ctx, []byte("k"), []byte("0"), []byte("2"), kv.CASOptions{})
	if err != nil || r.Swapped || string(r.Current) != "1" {
		t.Fatalf("mismatch: %+v, %v", r, err)
	}
	r, err = e.db.CompareAndSet(ctx, []byte("k"), []byte("1"), []byte("2"), kv.CASOptions{TTL: time.Second})
	if err != nil || !r.Swapped {
		t.Fatalf("match: %+v, %v", r, err)
	}
	v, _, err := e.db.Get(ctx, []byte("k"), kv.ReadOptions{})
	if err != nil || string(v.Data) != "2" || !v.ExpireAt.Equal(e.clock.Now().Add(time.Second)) {
		t.Fatalf("after swap: %+v, %v", v, err)
	}
}

func TestDBTTLExpiresByClock(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := testCtx(t)
	start := e.clock.Now()
	e.mustPut(t, "ttl", "v", kv.PutOptions{TTL: 10 * time.Second})
	e.mustPut(t, "sub-ms", "v", kv.PutOptions{TTL: time.Microsecond}) // rounds up to 1ms
	e.mustPut(t, "at", "v", kv.PutOptions{ExpireAt: start.Add(time.Minute)})
	e.mustPut(t, "keep", "v", kv.PutOptions{TTL: time.Hour})
	e.mustPut(t, "keep", "w", kv.PutOptions{KeepTTL: true})

	v, found, err := e.db.Get(ctx, []byte("ttl"), kv.ReadOptions{})
	if err != nil || !found || !v.ExpireAt.Equal(start.Add(10*time.Second)) {
		t.Fatalf("ttl: %+v, %v, %v", v, found, err)
	}
	if v, _, _ := e.db.Get(ctx, []byte("keep"), kv.ReadOptions{}); string(v.Data) != "w" || !v.ExpireAt.Equal(start.Add(time.Hour)) {
		t.Fatalf("KeepTTL: %+v", v)
	}
	if _, found := e.mustGet(t, "sub-ms"); !found {
		t.Fatal("sub-ms TTL expired before the clock moved")
	}

	e.clock.Advance(10*time.Second - time.Millisecond)
	if _, found := e.mustGet(t, "ttl"); !found {
		t.Fatal("expired 1ms early")
	}
	e.clock.Advance(time.Millisecond)
	if _, found := e.mustGet(t, "ttl"); found {
		t.Fatal("still visible at its expiry")
	}
	if !e.stored(t, "ttl") {
		t.Fatal("record gone without a sweeper: expiry should only hide it")
	}
	// Writes see the key as absent too.
	if r := e.mustPut(t, "ttl", "new", kv.PutOptions{Condition: kv.IfNotExists}); !r.Applied || r.Found {
		t.Fatalf("NX over expired key: %+v", r)
	}
	if v, _ := e.mustGet(t, "ttl"); v != "new" {
		t.Fatalf("ttl = %q", v)
	}

	// Expire and persist.
	if ok, err := e.db.Expire(ctx, []byte("at"), time.Time{}, kv.WriteOptions{}); err != nil || !ok {
		t.Fatalf("persist: %v, %v", ok, err)
	}
	e.clock.Advance(2 * time.Minute)
	if _, found := e.mustGet(t, "at"); !found {
		t.Fatal("persisted key expired")
	}
	if ok, err := e.db.Expire(ctx, []byte("at"), e.clock.Now().Add(-time.Second), kv.WriteOptions{}); err != nil || !ok {
		t.Fatalf("expire in the past: %v, %v", ok, err)
	}
	if _, found := e.mustGet(t, "at"); found || e.stored(t, "at") {
		t.Fatal("expire in the past must delete the key")
	}
	if ok, err := e.db.Expire(ctx, []byte("at"), e.clock.Now().Add(time.Second), kv.WriteOptions{}); err != nil || ok {
		t.Fatalf("expire of an absent key: %v, %v", ok, err)
	}

	for name, o := range map[string]kv.PutOptions{
		"negative TTL":          {TTL: -time.Second},
		"TTL and ExpireAt":      {TTL: time.Second, ExpireAt: start},
		"KeepTTL and TTL":       {TTL: time.Second, KeepTTL: true},
		"ExpireAt at the epoch": {ExpireAt: time.UnixMilli(0)},
	} {
		if _, err := e.db.Put(ctx, []byte("x"), nil, o); !errors.Is(err, kv.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestDBSweeperDeletesExpiredKeys(t *testing.T) {
	e := startDB(t, kv.Options{SweepInterval: 5 * time.Millisecond, SweepBatch: 16})
	const n = 200
	for i := range n {
		e.mustPut(t, fmt.Sprintf("short%d", i), "v", kv.PutOptions{TTL: time.Second})
	}
	e.mustPut(t, "long", "v", kv.PutOptions{TTL: time.Hour})
	e.mustPut(t, "forever", "v", kv.PutOptions{})
	if got := countIndex(t, e.eng); got != n+1 {
		t.Fatalf("%d index entries, want %d", got, n+1)
	}
	e.clock.Advance(2 * time.Second)
	waitFor(t, 20*time.Second, func() error {
		if got := countIndex(t, e.eng); got != 1 {
			return fmt.Errorf("%d index entries left, want 1", got)
		}
		for i := range n {
			if k := fmt.Sprintf("short%d", i); e.stored(t, k) {
				return fmt.Errorf("%s still stored", k)
			}
		}
		return nil
	})
	for _, k := range []string{"long", "forever"} {
		if v, found := e.mustGet(t, k); !found || v != "v" {
			t.Fatalf("sweeper removed live key %q", k)
		}
	}
}

func countIndex(t *testing.T, eng *storage.Engine) int {
	t.Helper()
	it, err := eng.NewIter(keys.ExpirySpan(0, keys.SlotCount))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n
}

func TestDBSweeperRemovesIdleSessions(t *testing.T) {
	e := startDB(t, kv.Options{SweepInterval: 5 * time.Millisecond, SessionTTL: time.Minute})
	ctx := testCtx(t)
	k := keyInShard(1, "s")
	if _, err := e.db.IncrBy(ctx, []byte(k), 1, kv.WriteOptions{Session: &kv.Session{ID: 9}}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Minute)
	if _, err := e.db.IncrBy(ctx, []byte(k), 1, kv.WriteOptions{Session: &kv.Session{ID: 10}}); err != nil {
		t.Fatal(err)
	}
	sessionStored := func(id uint64) bool {
		_, ok, err := e.eng.Get(keys.SessionKey(1, id))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	waitFor(t, 20*time.Second, func() error {
		if sessionStored(9) {
			return errors.New("idle session 9 still stored")
		}
		return nil
	})
	if !sessionStored(10) {
		t.Fatal("active session 10 was removed")
	}
}

// More sessions gone idle than one look removes (SweepBatch per round,
// maxSweepRounds rounds) are removed by the next sweeps, not one batch per
// SessionTTL/16: the fake clock does not move, so no new look is due.
func TestDBSweeperRemovesIdleSessionBacklog(t *testing.T) {
	e := startDB(t, kv.Options{SweepInterval: 5 * time.Millisecond, SessionTTL: time.Minute, SweepBatch: 4})
	ctx := testCtx(t)
	k := []byte(keyInShard(1, "s"))
	const idle = 100 // over the 8 rounds × 4 of one sweep
	for id := uint64(1); id <= idle; id++ {
		if _, err := e.db.IncrBy(ctx, k, 1, kv.WriteOptions{Session: &kv.Session{ID: id, Seq: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Advance(2 * time.Minute)
	if _, err := e.db.IncrBy(ctx, k, 1, kv.WriteOptions{Session: &kv.Session{ID: idle + 1, Seq: 1}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		it, err := e.eng.NewIter(keys.SessionSpan(1))
		if err != nil {
			return err
		}
		defer it.Close()
		var left []uint64
		for ok := it.First(); ok; ok = it.Next() {
			_, id, _ := keys.DecodeSessionKey(it.Key())
			left = append(left, id)
		}
		if !slices.Equal(left, []uint64{idle + 1}) {
			return fmt.Errorf("%d sessions stored, want only the active one", len(left))
		}
		return nil
	})
}

func TestDBTooLarge(t *testing.T) {
	e := startDB(t, kv.Options{Limits: kv.Limits{MaxKeyBytes: 8, MaxValueBytes: 16}})
	ctx := testCtx(t)
	before := e.store.Stats().Proposals
	long := []byte("123456789")
	checks := map[string]error{}
	_, checks["put key"] = e.db.Put(ctx, long, nil, kv.PutOptions{})
	_, checks["put value"] = e.db.Put(ctx, []byte("k"), bytes.Repeat([]byte("v"), 17), kv.PutOptions{})
	_, checks["delete key"] = e.db.Delete(ctx, long, kv.DeleteOptions{})
	_, checks["cas value"] = e.db.CompareAndSet(ctx, []byte("k"), nil, bytes.Repeat([]byte("v"), 17), kv.CASOptions{})
	_, checks["incr key"] = e.db.IncrBy(ctx, long, 1, kv.WriteOptions{})
	_, checks["append value"] = e.db.Append(ctx, []byte("k"), bytes.Repeat([]byte("v"), 17), kv.WriteOptions{})
	_, checks["expire key"] = e.db.Expire(ctx, long, time.Time{}, kv.WriteOptions{})
	_, checks["exec key"] = e.db.Exec(ctx, []*shoalpb.KVOp{{Op: &shoalpb.KVOp_Put{Put: &shoalpb.PutOp{Key: long}}}}, kv.WriteOptions{})
	for name, err := range checks {
		if !errors.Is(err, kv.ErrTooLarge) || !strings.Contains(err.Error(), "limit") {
			t.Errorf("%s: %v, want ErrTooLarge with sizes", name, err)
		}
	}
	if after := e.store.Stats().Proposals; after != before {
		t.Fatalf("%d proposals made for rejected writes", after-before)
	}
	if _, found := e.mustGet(t, "k"); found || e.stored(t, string(long)) {
		t.Fatal("a rejected write stored something")
	}
	// At the limits is fine; APPEND beyond them is refused by the state
	// machine, which sees the whole value.
	e.mustPut(t, "12345678", strings.Repeat("v", 16), kv.PutOptions{})
	e.mustPut(t, "k", strings.Repeat("a", 10), kv.PutOptions{})
	_, err := e.db.Append(ctx, []byte("k"), []byte("1234567"), kv.WriteOptions{})
	var ce *kv.CommandError
	if !errors.Is(err, kv.ErrTooLarge) || !errors.As(err, &ce) || ce.Message != "ERR string exceeds maximum allowed size" {
		t.Fatalf("append beyond the limit: %v", err)
	}
	if v, _ := e.mustGet(t, "k"); v != strings.Repeat("a", 10) {
		t.Fatalf("k = %q after a refused append", v)
	}
	if n, err := e.db.Append(ctx, []byte("k"), []byte("123456"), kv.WriteOptions{}); err != nil || n != 16 {
		t.Fatalf("append to the limit: %d, %v", n, err)
	}
}

func TestDBIncrByAndAppend(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := testCtx(t)
	if n, err := e.db.IncrBy(ctx, []byte("n"), 5, kv.WriteOptions{}); err != nil || n != 5 {
		t.Fatalf("incr: %d, %v", n, err)
	}
	if n, err := e.db.IncrBy(ctx, []byte("n"), -7, kv.WriteOptions{}); err != nil || n != -2 {
		t.Fatalf("decr: %d, %v", n, err)
	}
	e.mustPut(t, "max", "9223372036854775807", kv.PutOptions{})
	_, err := e.db.IncrBy(ctx, []byte("max"), 1, kv.WriteOptions{})
	var ce *kv.CommandError
	if !errors.Is(err, kv.ErrOverflow) || !errors.As(err, &ce) || ce.Message != "ERR increment or decrement would overflow" {
		t.Fatalf("overflow: %v", err)
	}
	e.mustPut(t, "s", " 1", kv.PutOptions{})
	if _, err := e.db.IncrBy(ctx, []byte("s"), 1, kv.WriteOptions{}); !errors.Is(err, kv.ErrNotInteger) {
		t.Fatalf("not an integer: %v", err)
	}
	if n, err := e.db.Append(ctx, []byte("s"), []byte("23"), kv.WriteOptions{}); err != nil || n != 4 {
		t.Fatalf("append: %d, %v", n, err)
	}
	if v, _ := e.mustGet(t, "s"); v != " 123" {
		t.Fatalf("s = %q", v)
	}
}

func TestDBExec(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := testCtx(t)
	a, b := keyInShard(2, "a"), keyInShard(2, "b")
	put := func(k, v string) *shoalpb.KVOp {
		return &shoalpb.KVOp{Op: &shoalpb.KVOp_Put{Put: &shoalpb.PutOp{Key: []byte(k), Value: []byte(v)}}}
	}
	incr := func(k string) *shoalpb.KVOp {
		return &shoalpb.KVOp{Op: &shoalpb.KVOp_IncrBy{IncrBy: &shoalpb.IncrByOp{Key: []byte(k), Delta: 1}}}
	}
	res, err := e.db.Exec(ctx, []*shoalpb.KVOp{put(a, "1"), put(b, "x")}, kv.WriteOptions{})
	if err != nil || len(res.Results) != 2 || !res.Results[1].Applied {
		t.Fatalf("exec: %v, %v", res, err)
	}
	// The second op fails: the first must not be applied.
	res, err = e.db.Exec(ctx, []*shoalpb.KVOp{incr(a), incr(b)}, kv.WriteOptions{})
	var ce *kv.CommandError
	if !errors.Is(err, kv.ErrNotInteger) || !errors.As(err, &ce) || ce.Op != 1 || res.GetFailedOp() != 1 {
		t.Fatalf("failing exec: %v, %v", res, err)
	}
	if v, _ := e.mustGet(t, a); v != "1" {
		t.Fatalf("%s = %q: the failed batch was partly applied", a, v)
	}

	before := e.store.Stats().Proposals
	c := keyInShard(3, "c")
	if _, err := e.db.Exec(ctx, []*shoalpb.KVOp{put(a, "2"), put(c, "2")}, kv.WriteOptions{}); !errors.Is(err, kv.ErrCrossShard) {
		t.Fatalf("cross-shard exec: %v", err)
	}
	for name, ops := range map[string][]*shoalpb.KVOp{
		"no ops":   nil,
		"empty op": {{}},
		"sweeper op": {{Op: &shoalpb.KVOp_DeleteExpired{DeleteExpired: &shoalpb.DeleteExpiredOp{
			SessionsIdleBeforeMs: 1 << 62, IdleSessions: []uint64{1}}}}},
	} {
		if _, err := e.db.Exec(ctx, ops, kv.WriteOptions{}); !errors.Is(err, kv.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if after := e.store.Stats().Proposals; after != before {
		t.Fatalf("%d proposals made for refused batches", after-before)
	}
	if v, _ := e.mustGet(t, a); v != "1" {
		t.Fatalf("%s = %q after refused batches", a, v)
	}
	if _, found := e.mustGet(t, c); found {
		t.Fatalf("%s written by a refused batch", c)
	}
}

// TestDBDefaultLimits: with no limits configured a key may be 64 KiB and a
// value 8 MiB; one byte more is refused with ErrTooLarge and stores
// nothing.
func TestDBDefaultLimits(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := testCtx(t)
	key := bytes.Repeat([]byte("k"), 64<<10)
	if _, err := e.db.Put(ctx, key, []byte("v"), kv.PutOptions{}); err != nil {
		t.Fatalf("64 KiB key: %v", err)
	}
	if _, err := e.db.Put(ctx, append(key, 'k'), []byte("v"), kv.PutOptions{}); !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("64 KiB + 1 key: %v, want ErrTooLarge", err)
	}
	val := bytes.Repeat([]byte("v"), 8<<20)
	if _, err := e.db.Put(ctx, []byte("big"), val, kv.PutOptions{}); err != nil {
		t.Fatalf("8 MiB value: %v", err)
	}
	if _, err := e.db.Put(ctx, []byte("bigger"), append(val, 'v'), kv.PutOptions{}); !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("8 MiB + 1 value: %v, want ErrTooLarge", err)
	}
	if e.stored(t, string(append(key, 'k'))) || e.stored(t, "bigger") {
		t.Fatal("a refused write stored something")
	}
	if !e.stored(t, string(key)) || !e.stored(t, "big") {
		t.Fatal("a write at the limit was not stored")
	}
}

func TestDBSessionRetryAppliesOnce(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := testCtx(t)
	incr := func(seq, acked uint64) (int64, error) {
		return e.db.IncrBy(ctx, []byte("n"), 1, kv.WriteOptions{Session: &kv.Session{ID: 7, Seq: seq, AckedBelow: acked}})
	}
	for range 3 {
		if n, err := incr(0, 0); err != nil || n != 1 {
			t.Fatalf("seq 0: %d, %v", n, err)
		}
	}
	if n, err := incr(1, 1); err != nil || n != 2 {
		t.Fatalf("seq 1: %d, %v", n, err)
	}
	if _, err := incr(0, 0); !errors.Is(err, kv.ErrStaleSequence) {
		t.Fatalf("acknowledged seq 0: %v, want ErrStaleSequence", err)
	}
	if v, _ := e.mustGet(t, "n"); v != "2" {
		t.Fatalf("n = %q, want 2", v)
	}
	// Put and Delete take sessions too.
	s := &kv.Session{ID: 8}
	for range 2 {
		if r, err := e.db.Put(ctx, []byte("p"), []byte("v"), kv.PutOptions{Condition: kv.IfNotExists, Session: s}); err != nil || !r.Applied {
			t.Fatalf("retried NX put: %+v, %v (the retry must see the first outcome)", r, err)
		}
	}
	if _, err := e.db.Put(ctx, []byte("p"), nil, kv.PutOptions{Session: &kv.Session{}}); !errors.Is(err, kv.ErrInvalid) {
		t.Fatalf("session ID 0: %v", err)
	}
}

func TestDBErrorsPassThrough(t *testing.T) {
	// Shard 2 has no leader; the sweeper runs to show it skips the shard
	// quietly (startDB fails the test on warnings).
	e := startDBLeaderless(t, kv.Options{SweepInterval: 5 * time.Millisecond}, 2)
	ctx := testCtx(t)
	k := []byte(keyInShard(2, "k"))
	if _, err := e.db.Put(ctx, k, nil, kv.PutOptions{}); !errors.Is(err, raftstore.ErrNoLeader) {
		t.Fatalf("put to a leaderless shard: %v, want raftstore.ErrNoLeader", err)
	}
	if _, err := e.db.IncrBy(ctx, k, 1, kv.WriteOptions{}); !errors.Is(err, raftstore.ErrNoLeader) {
		t.Fatalf("incr on a leaderless shard: %v, want raftstore.ErrNoLeader", err)
	}
	if _, _, err := e.db.Get(ctx, k, kv.ReadOptions{}); !errors.Is(err, raftstore.ErrNoLeader) {
		t.Fatalf("linearizable get on a leaderless shard: %v, want raftstore.ErrNoLeader", err)
	}
	if _, found, err := e.db.Get(ctx, k, kv.ReadOptions{Stale: true}); err != nil || found {
		t.Fatalf("stale get on a leaderless shard: %v, %v", found, err)
	}
	// The other shards serve, and the sweeper keeps sweeping them.
	live := keyInShard(1, "live")
	e.mustPut(t, live, "v", kv.PutOptions{TTL: time.Second})
	e.clock.Advance(time.Minute)
	waitFor(t, 20*time.Second, func() error {
		if e.stored(t, live) {
			return fmt.Errorf("%s not swept", live)
		}
		return nil
	})

	e2 := startDBWithoutShards(t)
	if _, err := e2.db.Put(ctx, []byte("k"), nil, kv.PutOptions{}); !errors.Is(err, raftstore.ErrShardNotFound) {
		t.Fatalf("put without a local shard: %v", err)
	}
	if _, _, err := e2.db.Get(ctx, []byte("k"), kv.ReadOptions{Stale: true}); !errors.Is(err, raftstore.ErrShardNotFound) {
		t.Fatalf("get without a local shard: %v", err)
	}
}

// startDBWithoutShards runs a DB, with its sweeper, over a store with no
// replicas.
func startDBWithoutShards(t *testing.T) *env {
	t.Helper()
	discard := slog.New(slog.DiscardHandler)
	eng, err := storage.Open(storage.Options{Dir: "db", FS: vfs.NewMem(), CacheBytes: 1 << 20, MemTableBytes: 1 << 20, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	store, err := raftstore.NewStore(raftstore.Options{
		NodeID: 1, Engine: eng, Transport: nopTransport{},
		NewStateMachine: func(d *shoalpb.ShardDescriptor) raftstore.StateMachine {
			return kv.NewStateMachine(d, kv.StateMachineOptions{})
		},
		Logger: discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	store.Start()
	db := kv.New(store, kv.Options{Logger: discard, SweepInterval: time.Millisecond})
	t.Cleanup(func() {
		db.Close()
		db.Close() // idempotent
		store.Stop()
		eng.Close()
	})
	return &env{db: db, store: store, eng: eng}
}

// MultiGet reads a key named several times once, its positions sharing
// the value; with ExistsOnly it copies no value out; an answer past
// MaxMultiGetBytes, positions counted, fails with ErrTooLarge.
func TestMultiGetRepeatedKeys(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := context.Background()
	big := bytes.Repeat([]byte("v"), 6<<20)
	if _, err := e.db.Put(ctx, []byte("{t}big"), big, kv.PutOptions{TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Put(ctx, []byte("{t}small"), []byte("s"), kv.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ks := [][]byte{[]byte("{t}big"), []byte("{t}small"), []byte("{t}big"), []byte("{t}gone")}
	vals, found, err := e.db.MultiGet(ctx, ks, kv.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(found, []bool{true, true, true, false}) || !bytes.Equal(vals[0].Data, big) || string(vals[1].Data) != "s" {
		t.Fatalf("found %v, values of %d and %q bytes", found, len(vals[0].Data), vals[1].Data)
	}
	if &vals[2].Data[0] != &vals[0].Data[0] {
		t.Fatal("a key named twice was read (and copied) twice")
	}
	wantAt := e.clock.Now().Add(time.Hour).UnixMilli()
	if vals[2].ExpireAt.UnixMilli() != wantAt {
		t.Fatalf("second position's expiry %v, want %d", vals[2].ExpireAt, wantAt)
	}
	vals, found, err = e.db.MultiGet(ctx, ks, kv.ReadOptions{ExistsOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(found, []bool{true, true, true, false}) || vals[0].Data != nil || vals[1].Data != nil ||
		vals[0].ExpireAt.UnixMilli() != wantAt {
		t.Fatalf("exists only: found %v, values %d and %d bytes, expiry %v", found, len(vals[0].Data), len(vals[1].Data), vals[0].ExpireAt)
	}
	// A long list (positions found through a map rather than by
	// comparison): the key named again at the end shares its value too.
	long := [][]byte{[]byte("{t}big")}
	for i := range 20 {
		long = append(long, fmt.Appendf(nil, "{t}none%d", i))
	}
	long = append(long, []byte("{t}small"), []byte("{t}big"))
	vals, found, err = e.db.MultiGet(ctx, long, kv.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if last := len(long) - 1; !found[0] || !found[last-1] || found[1] || &vals[last].Data[0] != &vals[0].Data[0] {
		t.Fatalf("long list: found %v; want the key named twice read once", found)
	}
	many := slices.Repeat([][]byte{[]byte("{t}big")}, kv.MaxMultiGetBytes/len(big)+1)
	if _, _, err := e.db.MultiGet(ctx, many, kv.ReadOptions{}); !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("MultiGet of %d × 6 MiB: %v, want ErrTooLarge", len(many), err)
	}
	if _, found, err := e.db.MultiGet(ctx, many, kv.ReadOptions{ExistsOnly: true}); err != nil || !found[len(many)-1] {
		t.Fatalf("exists only of %d × 6 MiB: %v, %v", len(many), found, err)
	}
}

// A scan page ends after 10,000 expired records not yet swept, with a
// cursor and maybe no key, rather than walk them all: the next page goes
// on after them.
func TestScanBoundsSkippedExpiredRecords(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := context.Background()
	expireAt := e.clock.Now().Add(time.Second).UnixMilli()
	const expiring = 10500
	for i := 0; i < expiring; i += 500 {
		var ops []*shoalpb.KVOp
		for j := i; j < i+500; j++ {
			ops = append(ops, &shoalpb.KVOp{Op: &shoalpb.KVOp_Put{Put: &shoalpb.PutOp{
				Key: fmt.Appendf(nil, "{s}a%05d", j), Value: []byte("v"), ExpireAtMs: expireAt}}})
		}
		if _, err := e.db.Exec(ctx, ops, kv.WriteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.db.Put(ctx, []byte("{s}b"), []byte("live"), kv.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Second)
	slot := keys.Slot([]byte("{s}"))
	shard, err := e.store.ShardBySlot(slot)
	if err != nil {
		t.Fatal(err)
	}
	var pages [][]string
	var cursor []byte
	for {
		page, err := e.db.Scan(ctx, shard, uint32(slot), uint32(slot)+1, cursor, 1000, false, kv.ReadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var ks []string
		for _, k := range page.Keys {
			ks = append(ks, string(k))
		}
		pages = append(pages, ks)
		if cursor = page.Cursor; cursor == nil {
			break
		}
	}
	if len(pages) != 2 || len(pages[0]) != 0 || !slices.Equal(pages[1], []string{"{s}b"}) {
		t.Fatalf("pages %v; want an empty one after 10,000 expired records, then the live key", pages)
	}
}
