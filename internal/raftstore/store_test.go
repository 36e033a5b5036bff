package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// countingTransport counts Send calls per destination and drops everything.
type countingTransport struct {
	mu    sync.Mutex
	calls map[uint64]int
	msgs  map[uint64]int
}

func (c *countingTransport) Send(to uint64, msgs []*shoalpb.RaftMessage) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[to]++
	c.msgs[to] += len(msgs)
	return nil
}

func (c *countingTransport) SendSnapshot(context.Context, uint64, *shoalpb.SnapshotChunk, func() (*shoalpb.SnapshotChunk, error)) error {
	return errors.New("countingTransport sends no snapshots")
}

// openSingle opens a store of one node whose shards have one replica each.
func openSingle(t *testing.T, shards int, mod func(*raftstore.Options)) *raftstore.Store {
	t.Helper()
	eng, err := storage.Open(storage.Options{Dir: "/db", FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	o := raftstore.Options{NodeID: 1, Engine: eng, Transport: &countingTransport{calls: map[uint64]int{}, msgs: map[uint64]int{}},
		NewStateMachine: tc.NewRegisterSM}
	if mod != nil {
		mod(&o)
	}
	s, err := raftstore.NewStore(o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range shards {
		start, end := keys.ShardSlots(i%keys.SlotCount, min(shards, keys.SlotCount))
		d := &shoalpb.ShardDescriptor{ShardId: uint64(i + 1), StartSlot: uint32(start), EndSlot: uint32(end),
			Replicas: []*shoalpb.ReplicaDescriptor{{NodeId: 1, ReplicaId: uint64(i + 1)}}}
		if err := s.BootstrapReplica(d); err != nil {
			t.Fatal(err)
		}
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

func waitLeader(ctx context.Context, t *testing.T, s *raftstore.Store, shards ...uint64) {
	t.Helper()
	if err := tc.WaitFor(ctx, func() error {
		for _, sh := range shards {
			st, err := s.Status(sh)
			if err != nil {
				return err
			}
			if st.Role != raftstore.RoleLeader {
				return fmt.Errorf("shard %d is %s", sh, st.Role)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestThousandsOfReplicasOnFixedWorkers hosts 2000 replicas and checks the
// goroutine count does not grow with them, then writes to all of them.
func TestThousandsOfReplicasOnFixedWorkers(t *testing.T) {
	before := runtime.NumGoroutine()
	s := openSingle(t, 2000, func(o *raftstore.Options) { o.Workers = 4 })
	after := runtime.NumGoroutine()
	if grew := after - before; grew > 20 {
		t.Fatalf("goroutines grew by %d for 2000 replicas: want a fixed pool", grew)
	}
	ctx := ctxFor(t, 60*time.Second)
	shards := make([]uint64, 2000)
	for i := range shards {
		shards[i] = uint64(i + 1)
	}
	waitLeader(ctx, t, s, shards...)
	var wg sync.WaitGroup
	errs := make(chan error, len(shards))
	for _, sh := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Propose(ctx, sh, tc.PutCmd([]byte(fmt.Sprint(sh)), []byte("v"))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := s.Stats()
	t.Logf("2000 replicas, %d goroutines; %d log syncs carried %d replica writes", after, st.LogSyncs, st.LogSyncReplicas)
}

// TestGroupCommit checks that concurrent writes to many shards share syncs:
// one sync carries the log writes of several replicas.
func TestGroupCommit(t *testing.T) {
	var maxPerSync atomic.Int64
	s := openSingle(t, 64, func(o *raftstore.Options) {
		o.Knobs = &raftstore.Knobs{AfterLogSync: func(n int) {
			for {
				m := maxPerSync.Load()
				if int64(n) <= m || maxPerSync.CompareAndSwap(m, int64(n)) {
					return
				}
			}
		}}
	})
	ctx := ctxFor(t, 60*time.Second)
	shards := make([]uint64, 64)
	for i := range shards {
		shards[i] = uint64(i + 1)
	}
	waitLeader(ctx, t, s, shards...)
	base := s.Stats()
	var wg sync.WaitGroup
	const perShard = 50
	for _, sh := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perShard {
				if _, err := s.Propose(ctx, sh, tc.PutCmd([]byte(fmt.Sprint(sh, i)), []byte("v"))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	writes := uint64(64 * perShard)
	syncs := st.LogSyncs - base.LogSyncs
	t.Logf("%d writes, %d syncs, at most %d replicas in one sync", writes, syncs, maxPerSync.Load())
	if maxPerSync.Load() < 2 {
		t.Fatalf("no sync carried more than one replica's writes")
	}
	if syncs >= writes {
		t.Fatalf("%d syncs for %d concurrent writes: no group commit", syncs, writes)
	}
}

// TestMessagesBatchedPerDestination checks that one loop phase hands the
// transport one batch per destination node, whatever the number of shards.
func TestMessagesBatchedPerDestination(t *testing.T) {
	tr := &countingTransport{calls: map[uint64]int{}, msgs: map[uint64]int{}}
	eng, err := storage.Open(storage.Options{Dir: "/db", FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	s, err := raftstore.NewStore(raftstore.Options{NodeID: 1, Engine: eng, Transport: tr, NewStateMachine: tc.NewRegisterSM,
		Knobs: &raftstore.Knobs{DisableCampaignOnBootstrap: true}})
	if err != nil {
		t.Fatal(err)
	}
	// 100 shards with peers on nodes 2 and 3 (which never answer).
	for i := range 100 {
		d := &shoalpb.ShardDescriptor{ShardId: uint64(i + 1), StartSlot: uint32(i), EndSlot: uint32(i + 1), Replicas: []*shoalpb.ReplicaDescriptor{
			{NodeId: 1, ReplicaId: uint64(3*i + 1)}, {NodeId: 2, ReplicaId: uint64(3*i + 2)}, {NodeId: 3, ReplicaId: uint64(3*i + 3)}}}
		if err := s.BootstrapReplica(d); err != nil {
			t.Fatal(err)
		}
	}
	s.Start()
	defer s.Stop()
	// Within an election timeout or two every replica campaigns, sending a
	// pre-vote to both peers: 200 messages per destination in all.
	ctx := ctxFor(t, 30*time.Second)
	if err := tc.WaitFor(ctx, func() error {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if tr.msgs[2] < 100 || tr.msgs[3] < 100 {
			return fmt.Errorf("messages so far: %v", tr.msgs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, to := range []uint64{2, 3} {
		if tr.calls[to] >= tr.msgs[to] {
			t.Errorf("node %d: %d sends for %d messages: not batched", to, tr.calls[to], tr.msgs[to])
		}
	}
	t.Logf("sends per destination %v for messages %v", tr.calls, tr.msgs)
}

func TestProposalErrors(t *testing.T) {
	s := openSingle(t, 1, func(o *raftstore.Options) { o.MaxEntryBytes = 1 << 10 })
	ctx := ctxFor(t, 30*time.Second)
	waitLeader(ctx, t, s, 1)
	if _, err := s.Propose(ctx, 1, make([]byte, 2<<10)); !errors.Is(err, raftstore.ErrEntryTooLarge) {
		t.Fatalf("oversized command: %v", err)
	}
	if _, err := s.Propose(ctx, 42, nil); !errors.Is(err, raftstore.ErrShardNotFound) {
		t.Fatalf("unknown shard: %v", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	_, err := s.Propose(done, 1, tc.PutCmd([]byte("k"), []byte("v")))
	if !errors.Is(err, raftstore.ErrTimeout) && err != nil {
		t.Fatalf("cancelled context: %v", err)
	}
	if _, err := s.ShardBySlot(keys.SlotCount - 1); err != nil {
		t.Fatalf("ShardBySlot: %v", err)
	}
	s.Stop()
	if _, err := s.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v"))); !errors.Is(err, raftstore.ErrStopped) || errors.Is(err, raftstore.ErrAmbiguous) {
		t.Fatalf("propose after stop: %v, want ErrStopped and not ambiguous", err)
	}
	if err := s.ReadIndex(ctx, 1); !errors.Is(err, raftstore.ErrStopped) {
		t.Fatalf("read after stop: %v", err)
	}
}

// TestWaitersOnIsolatedLeader proposes on a leader just cut off from its
// peers: a short deadline returns an ambiguous timeout; a long one ends
// with ErrLeadershipLost once the new leader's entries replace the
// uncommitted one after healing. Backpressure refuses more than the
// uncommitted bound with ErrOverloaded.
func TestWaitersOnIsolatedLeader(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) {
			o.MaxUncommittedBytes = 64 << 10
			// A long election timeout leaves time to propose on the isolated
			// leader before CheckQuorum steps it down.
			o.ElectionTicks = 30
		}})
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v0"))); err != nil {
		t.Fatal(err)
	}
	old, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(old.ID, c.NodeIDs())

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = old.Store().Propose(short, 1, tc.PutCmd([]byte("k"), []byte("short")))
	cancel()
	if !errors.Is(err, raftstore.ErrTimeout) || !errors.Is(err, raftstore.ErrAmbiguous) {
		t.Fatalf("short deadline on isolated leader: %v, want an ambiguous timeout", err)
	}

	lost := make(chan error, 1)
	go func() {
		_, err := old.Store().Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("lost")))
		lost <- err
	}()
	// Fill the uncommitted budget: the leader refuses more.
	// Accepted proposals cannot commit, so each waits out its short
	// deadline while its entry keeps counting against the budget.
	var overloaded error
	for i := 0; i < 100 && overloaded == nil; i++ {
		pctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := old.Store().Propose(pctx, 1, tc.PutCmd([]byte("big"), make([]byte, 16<<10)))
		cancel()
		switch {
		case errors.Is(err, raftstore.ErrOverloaded):
			overloaded = err
		case !errors.Is(err, raftstore.ErrTimeout):
			t.Fatalf("proposal %d on isolated leader: %v", i, err)
		}
	}
	if overloaded == nil {
		t.Fatal("no ErrOverloaded with the uncommitted log over its bound")
	}

	// The majority elects a new leader and writes over the old one's tail.
	var next *tc.Node
	if err := tc.WaitFor(ctx, func() error {
		for _, n := range c.Nodes {
			if st, _ := n.Store().Status(1); n != old && st.Role == raftstore.RoleLeader {
				next = n
				return nil
			}
		}
		return errors.New("no leader on the majority side")
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := next.Store().Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v1"))); err != nil {
		t.Fatal(err)
	}
	c.Net.Heal()
	select {
	case err := <-lost:
		if !errors.Is(err, raftstore.ErrLeadershipLost) {
			t.Fatalf("proposal on deposed leader: %v, want ErrLeadershipLost", err)
		}
	case <-ctx.Done():
		for _, n := range c.Nodes {
			st, _ := n.Store().Status(1)
			t.Logf("node %d: %+v", n.ID, st)
		}
		t.Fatal("waiter never completed")
	}
	v, _, err := readAt(ctx, old, 1, []byte("k"))
	if err != nil || v != "v1" {
		t.Fatalf("k = %q, %v; want v1", v, err)
	}
}

// TestEntryCacheTrimmed checks that the log entry caches hold only what is
// still in flight: once writes are applied (and, on leaders, acknowledged)
// the next tick drops them.
func TestEntryCacheTrimmed(t *testing.T) {
	s := openSingle(t, 64, nil)
	ctx := ctxFor(t, 30*time.Second)
	shards := make([]uint64, 64)
	for i := range shards {
		shards[i] = uint64(i + 1)
	}
	waitLeader(ctx, t, s, shards...)
	value := make([]byte, 1024)
	for i := range 2000 {
		sh := shards[i%64]
		if _, err := s.Propose(ctx, sh, tc.PutCmd([]byte(fmt.Sprint(i)), value)); err != nil {
			t.Fatal(err)
		}
	}
	peak := s.Stats().EntryCacheBytes
	if err := tc.WaitFor(ctx, func() error {
		if b := s.Stats().EntryCacheBytes; b > 0 {
			return fmt.Errorf("%d bytes still cached", b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("entry caches held %d bytes right after 2000 writes of 1 KiB, 0 after a tick", peak)
}

// A replica whose own removal was applied, but which the node stopped
// before destroying (a crash, or a failed phase, between the two), is
// destroyed when the store loads it: data, Raft state, a tombstone. It
// came back in a configuration without it, which nobody would ever tell
// it about again, and served its frozen data to stale reads.
func TestRemovedReplicaDestroyedAtLoad(t *testing.T) {
	eng, err := storage.Open(storage.Options{Dir: "/db", FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	open := func() *raftstore.Store {
		s, err := raftstore.NewStore(raftstore.Options{NodeID: 1, Engine: eng,
			Transport: &countingTransport{calls: map[uint64]int{}, msgs: map[uint64]int{}}, NewStateMachine: tc.NewRegisterSM})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	desc := &shoalpb.ShardDescriptor{ShardId: 1, StartSlot: 0, EndSlot: keys.SlotCount, Epoch: 1,
		Replicas: []*shoalpb.ReplicaDescriptor{{NodeId: 1, ReplicaId: 1}}}
	if err := s.BootstrapReplica(desc); err != nil {
		t.Fatal(err)
	}
	s.Start()
	waitLeader(ctxFor(t, 30*time.Second), t, s, 1)
	s.Stop()
	// What the apply batch of the removal left: the replica's state with a
	// configuration without it, and its data.
	data := keys.DataKey(7, []byte("k"))
	b := eng.NewBatch()
	without := &shoalpb.ShardDescriptor{ShardId: 1, StartSlot: 0, EndSlot: keys.SlotCount, Epoch: 2,
		Replicas: []*shoalpb.ReplicaDescriptor{{NodeId: 2, ReplicaId: 2}}}
	if err := b.SetProto(keys.ReplicaStateKey(1), &shoalpb.LocalReplicaState{ReplicaId: 1, Shard: without}); err != nil {
		t.Fatal(err)
	}
	if err := b.Set(data, []byte("frozen"), nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()

	s = open()
	defer s.Stop()
	if _, err := s.Status(1); !errors.Is(err, raftstore.ErrShardNotFound) {
		t.Fatalf("status of the removed replica after the restart: %v, want ErrShardNotFound", err)
	}
	var st shoalpb.LocalReplicaState
	if ok, err := storage.GetProto(eng.Reader(), keys.ReplicaStateKey(1), &st); err != nil || !ok || !st.Tombstone {
		t.Fatalf("replica state %v (found %v, %v), want a tombstone", &st, ok, err)
	}
	if _, ok, err := eng.Get(data); err != nil || ok {
		t.Fatalf("the removed replica's data: found %v, %v; want it deleted", ok, err)
	}
}
