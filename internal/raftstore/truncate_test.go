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

// TestOneSnapshotPerMoveUnderWrites: writes that arrive while a learner
// receives its snapshot outnumber the log's entry bound many times over, yet
// the leader keeps them (they are far within the byte bound), so the
// learner goes on from the log once the snapshot is in: one snapshot per
// move, not one more for every truncation during the last.
func TestOneSnapshotPerMoveUnderWrites(t *testing.T) {
	const maxEntries = 50
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) {
			o.MaxLogEntries = maxEntries
			// 3 MiB at 1 MiB/s: the snapshot takes about three seconds.
			o.SnapshotBytesPerSec = 1 << 20
		}})
	ctx := ctxFor(t, 2*time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "big", 48, 64<<10)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	written := make([]int, 4)
	for w := range written {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := keyInShard(c, 1, fmt.Sprintf("w%d-%d", w, i))
				if _, err := c.Propose(ctx, 1, tc.PutCmd(k, []byte("v"))); err != nil {
					t.Errorf("write during the move: %v", err)
					return
				}
				written[w]++
			}
		}()
	}
	_, err := c.AddLearner(ctx, 1, 4)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range written {
		total += n
	}
	if total < 4*maxEntries {
		t.Fatalf("only %d writes during the snapshot: too few to show anything against an entry bound of %d", total, maxEntries)
	}
	checkSame(ctx, t, c, 1, 4)
	// With the snapshot in, the log is back within its bounds.
	if err := tc.WaitFor(ctx, func() error {
		for _, n := range c.Nodes {
			s, err := n.Store().Status(1)
			if err != nil {
				return err
			}
			if s.LogEntries > 2*maxEntries {
				return fmt.Errorf("node %d's log holds %d entries", n.ID, s.LogEntries)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Counted once the learner is caught up and the logs are short again:
	// a learner that found the log truncated past its snapshot gets more.
	sent := uint64(0)
	for _, n := range c.Nodes {
		sent += n.Store().Stats().SnapshotsSent
	}
	st := c.Node(4).Store().Stats()
	if sent != 1 || st.SnapshotsApplied != 1 {
		t.Fatalf("%d snapshots sent, %d applied by the learner while %d writes went on; want 1 and 1", sent, st.SnapshotsApplied, total)
	}
	t.Logf("%d writes during the snapshot; 1 snapshot sent and applied", total)
}

// TestTruncationKeepsForProbingFollower: a follower whose node went away is
// in probe (its stream failed), and the leader still knows how far its log
// goes. While the entries it lacks are within twice the log's bounds, the
// leader keeps them, so the follower catches up from the log when it comes
// back instead of needing a snapshot.
func TestTruncationKeepsForProbingFollower(t *testing.T) {
	const maxEntries = 50
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.MaxLogEntries = maxEntries }})
	ctx := ctxFor(t, time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	const shard = 1
	load(ctx, t, c, shard, "before", 20, 10)
	leader, victim := leaderAndOther(t, c, shard)
	st, err := leader.Store().Status(shard)
	if err != nil {
		t.Fatal(err)
	}
	victimReplica := replicaOn(t, st.Descriptor, victim.ID)
	// Everything so far is on the victim.
	if err := tc.WaitFor(ctx, func() error {
		st, err := leader.Store().Status(shard)
		if err != nil {
			return err
		}
		if pr := st.Progress[victimReplica]; pr.Match < st.Applied || pr.State != "replicate" {
			return fmt.Errorf("victim's replica in %q at %d, applied %d", pr.State, pr.Match, st.Applied)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	victim.Stop()
	if err := tc.WaitFor(ctx, func() error {
		st, err := leader.Store().Status(shard)
		if err != nil {
			return err
		}
		if pr := st.Progress[victimReplica]; pr.State != "probe" {
			return fmt.Errorf("victim's replica is in %q", pr.State)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	truncations := leader.Store().Stats().Truncations
	load(ctx, t, c, shard, "while-down", 40, 10)
	// The log is now over its entry bound: the leader truncates at its next
	// check, up to what the victim has (with nothing to keep for it, all
	// of its log).
	if err := tc.WaitFor(ctx, func() error {
		if n := leader.Store().Stats().Truncations; n == truncations {
			return errors.New("the leader has not truncated its log")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sent := leader.Store().Stats().SnapshotsSent
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	checkSame(ctx, t, c, shard, 3)
	if n := leader.Store().Stats().SnapshotsSent - sent; n != 0 {
		t.Fatalf("the leader sent %d snapshots to a follower it could have caught up from its log", n)
	}
}
