package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestRemovalFailsQueuedWaiters: a replica told it was removed while a read
// waits in its queue fails the read at once (it used to drop it, and only
// the read's deadline ended it).
func TestRemovalFailsQueuedWaiters(t *testing.T) {
	var armed atomic.Bool
	blocked := make(chan struct{})
	release := make(chan struct{})
	var victim atomic.Uint64
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(id uint64, o *raftstore.Options) {
			o.Knobs = &raftstore.Knobs{BeforeLogCommit: func() {
				if id == victim.Load() && armed.CompareAndSwap(true, false) {
					close(blocked)
					<-release
				}
			}}
		}})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	ld, _ := c.Leader(1)
	v := c.Nodes[0]
	if v == ld {
		v = c.Nodes[1]
	}
	victim.Store(v.ID)
	st, err := v.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	go c.Propose(ctx, 1, tc.PutCmd([]byte("x"), []byte("y"))) // gives the victim a log write
	<-blocked
	// The victim's loop is parked before its group commit: queue a read,
	// then the removal, both to be taken by the same phase.
	readErr := make(chan error, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		readErr <- v.Store().ReadIndex(rctx, 1)
	}()
	if err := tc.WaitFor(ctx, func() error {
		if raftstore.QueuedRequests(v.Store(), 1) == 0 {
			return errors.New("read not queued yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	v.Store().HandleRaftBatch([]*shoalpb.RaftMessage{{
		ShardId: 1, FromNode: ld.ID, ToNode: v.ID, Epoch: st.Descriptor.Epoch + 1, Removed: true,
		Message: &raftpb.Message{To: new(st.ReplicaID), From: new(uint64(1))},
	}})
	close(release)
	select {
	case err := <-readErr:
		if !errors.Is(err, raftstore.ErrShardRemoved) {
			t.Fatalf("read queued with the removal: %v, want ErrShardRemoved", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read queued with the removal was never completed")
	}
}

// TestRestartAfterReplicaMovedAway: a node started with the static
// placement after one of its replicas moved away starts, and does not bring
// the replica back.
func TestRestartAfterReplicaMovedAway(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	ld, _ := c.Leader(1)
	from := uint64(3)
	if ld.ID == 3 {
		from = 2
	}
	if _, err := c.MoveReplica(ctx, 1, from, 4); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if _, err := c.Node(from).Store().Status(1); err == nil {
			return fmt.Errorf("node %d still has its replica", from)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Node(from).Stop()
	if err := c.Node(from).Restart(); err != nil {
		t.Fatalf("node %d cannot restart after its replica was moved away: %v", from, err)
	}
	if _, err := c.Node(from).Store().Status(1); err == nil {
		t.Fatal("the moved replica came back")
	}
}
