package node_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestKVEveryShardLinearizableFollowerReads writes through the key-value
// layer on every shard's leader and reads back on every replica with
// linearizable (ReadIndex) reads, followers included.
func TestKVEveryShardLinearizableFollowerReads(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 64, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	r := newRouter(c)
	for _, d := range c.Shards {
		var key []byte
		for i := 0; key == nil; i++ {
			if k := fmt.Appendf(nil, "k%d", i); c.ShardOf(k) == d.ShardId {
				key = k
			}
		}
		if err := r.put(ctx, key, []byte("value-"+strconv.Itoa(int(d.ShardId)))); err != nil {
			t.Fatal(err)
		}
		for _, rd := range d.Replicas {
			v, ok, err := c.Node(rd.NodeId).KV().Get(ctx, key, kv.ReadOptions{})
			if err != nil || !ok || string(v.Data) != "value-"+strconv.Itoa(int(d.ShardId)) {
				t.Fatalf("shard %d node %d: %q %v %v", d.ShardId, rd.NodeId, v.Data, ok, err)
			}
		}
	}
}

// TestSessionRetriesApplyOnceAcrossFailover increments counters with
// client sessions while the node leading most shards is stopped and
// restarted. Every increment is retried with the same (session, sequence)
// until it succeeds, through ambiguous failures; the final counters show
// each applied exactly once.
func TestSessionRetriesApplyOnceAcrossFailover(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 16, Replicas: 3})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	const sessions, perSession = 24, 40
	var mu sync.Mutex
	ambiguous := 0
	incr := func(key []byte, s *kv.Session) error {
		shard := c.ShardOf(key)
		for {
			n, err := c.Leader(shard)
			if err != nil {
				select {
				case <-ctx.Done():
					return err
				case <-time.After(5 * time.Millisecond):
				}
				continue
			}
			opCtx, cancel := context.WithTimeout(ctx, time.Second)
			_, err = n.KV().IncrBy(opCtx, key, 1, kv.WriteOptions{Session: s})
			cancel()
			switch {
			case err == nil:
				return nil
			case errors.Is(err, kv.ErrStaleSequence):
				return fmt.Errorf("session %d seq %d: %w", s.ID, s.Seq, err)
			case errors.Is(err, raftstore.ErrAmbiguous):
				mu.Lock()
				ambiguous++
				mu.Unlock()
			case ctx.Err() != nil:
				return err
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	progress := make(chan struct{}, sessions*perSession)
	for s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Appendf(nil, "counter-%d", s%6)
			for seq := range perSession {
				sess := &kv.Session{ID: uint64(1000 + s), Seq: uint64(seq + 1), AckedBelow: uint64(seq + 1)}
				if err := incr(key, sess); err != nil {
					errs <- err
					return
				}
				progress <- struct{}{}
			}
		}()
	}
	// Stop the busiest leader once a third of the increments are in, and
	// bring it back once two thirds are.
	led := map[uint64]int{}
	for _, d := range c.Shards {
		if n, err := c.Leader(d.ShardId); err == nil {
			led[n.ID]++
		}
	}
	victim := uint64(1)
	for id, n := range led {
		if n > led[victim] {
			victim = id
		}
	}
	for range sessions * perSession / 3 {
		<-progress
	}
	c.Node(victim).Stop()
	for range sessions * perSession / 3 {
		<-progress
	}
	if err := c.Node(victim).Restart(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := int64(0)
	for i := range 6 {
		key := fmt.Appendf(nil, "counter-%d", i)
		n, err := c.Leader(c.ShardOf(key))
		if err != nil {
			t.Fatal(err)
		}
		v, _, err := n.KV().Get(ctx, key, kv.ReadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		x, err := strconv.ParseInt(string(v.Data), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		total += x
	}
	t.Logf("%d increments, %d ambiguous attempts retried", sessions*perSession, ambiguous)
	if total != sessions*perSession {
		t.Fatalf("counters sum to %d, want %d: retries applied twice or writes were lost", total, sessions*perSession)
	}
}
