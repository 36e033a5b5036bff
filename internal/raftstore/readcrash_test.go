package raftstore_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// A shard of one replica restarted after a power loss knows a commit index
// below the end of its log: the last acknowledged write's commit and apply
// were not synced. Raft answers a sole voter's ReadIndex with that index at
// once, before the leader has committed anything in its term; a read must
// still see every acknowledged write.
func TestSoleVoterReadAfterCrash(t *testing.T) {
	const shards = 32
	c := tc.Start(t, tc.Options{Nodes: 1, Shards: shards, Replicas: 1, CrashableFS: true, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	n := c.Nodes[0]
	for round := range 3 {
		for shard := uint64(1); shard <= shards; shard++ {
			key := keyInShard(c, shard, "k")
			for _, v := range []string{"a", "b"} {
				if _, err := c.Propose(ctx, shard, tc.PutCmd(key, []byte(fmt.Sprint(v, round)))); err != nil {
					t.Fatal(err)
				}
			}
		}
		n.Crash()
		if err := n.Restart(); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for shard := uint64(1); shard <= shards; shard++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := keyInShard(c, shard, "k")
				// Asked again and again while the node elects itself: the
				// first read answered is one that came as it became the
				// leader.
				for {
					err := n.Store().ReadIndex(ctx, shard)
					if err == nil {
						break
					}
					if !errors.Is(err, raftstore.ErrNoLeader) && !errors.Is(err, raftstore.ErrNotLeader) {
						t.Error(err)
						return
					}
				}
				got, _, err := tc.ReadKey(n.Engine().Reader(), key)
				if err != nil {
					t.Error(err)
					return
				}
				if want := fmt.Sprint("b", round); got != want {
					t.Errorf("round %d shard %d: read %q after a crash, want the acknowledged %q", round, shard, got, want)
				}
			}()
		}
		wg.Wait()
	}
}
