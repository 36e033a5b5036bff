package raftstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// failingSM fails its Apply call while fails is positive and a command in
// it contains "boom", as a storage error would: after staging the
// commands' writes, which the store must then not commit.
type failingSM struct {
	inner raftstore.StateMachine
	fails *atomic.Int32
}

func (f failingSM) Apply(b *storage.Batch, cmds []raftstore.Command) ([]any, error) {
	res, err := f.inner.Apply(b, cmds)
	for _, c := range cmds {
		if bytes.Contains(c.Data, []byte("boom")) && f.fails.Add(-1) >= 0 {
			return nil, errors.New("injected apply failure")
		}
	}
	return res, err
}

// startFailing starts nodes nodes holding one shard on each, whose state
// machines fail the first apply of a command containing "boom" (one
// failure in all), and writes "a" to the returned key.
func startFailing(t *testing.T, nodes int) (*tc.Cluster, context.Context, uint64, []byte) {
	t.Helper()
	var fails atomic.Int32
	fails.Store(1)
	c := tc.Start(t, tc.Options{Nodes: nodes, Shards: 1, Replicas: nodes, NewStateMachine: func(d *shoalpb.ShardDescriptor) raftstore.StateMachine {
		return failingSM{inner: tc.NewRegisterSM(d), fails: &fails}
	}})
	ctx := ctxFor(t, time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard, key := c.Shards[0].ShardId, []byte("k")
	if _, err := c.Propose(ctx, shard, tc.PutCmd(key, []byte("a"))); err != nil {
		t.Fatal(err)
	}
	return c, ctx, shard, key
}

// A replica whose apply fails stops its store. The proposer of the entry
// being applied is told at once that the outcome is unknown (the entry is
// committed: it applies after a restart), what the failed apply staged is
// not committed, and the node, restarted once the cause is gone, applies
// the entry exactly once and serves again.
func TestRestartAfterApplyFailure(t *testing.T) {
	c, ctx, shard, key := startFailing(t, 1)
	// The deadline is long: the answer must come from the failure, not
	// from the caller giving up.
	proposeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := c.Propose(proposeCtx, shard, tc.AppendCmd(key, []byte("boom")))
	if !errors.Is(err, raftstore.ErrAmbiguous) || proposeCtx.Err() != nil {
		t.Fatalf("proposal whose apply failed: got %v (caller's deadline ended: %v), want an ambiguous outcome before the deadline", err, proposeCtx.Err())
	}
	n := c.Nodes[0]
	if err := n.StopFailed(); err == nil || !strings.Contains(err.Error(), "injected apply failure") {
		t.Fatalf("stopping the failed node: got %v, want the apply failure", err)
	}
	if err := n.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := c.Propose(ctx, shard, tc.AppendCmd(key, []byte("c")))
	if err != nil {
		t.Fatal(err)
	}
	if got != "aboom" {
		t.Fatalf("value before the last append: %q, want %q (the failed entry applied once)", got, "aboom")
	}
}

// When one replica of three fails to apply, the other two go on; the failed
// node, restarted, applies the entry once, catches up and serves
// linearizable reads again.
func TestReplicaRejoinsAfterApplyFailure(t *testing.T) {
	c, ctx, shard, key := startFailing(t, 3)
	// Whichever replica applies it first fails; the proposal's answer
	// depends on which (the leader's failure makes it ambiguous).
	_, _ = c.Propose(ctx, shard, tc.AppendCmd(key, []byte("boom")))
	var failed *tc.Node
	if err := tc.WaitFor(ctx, func() error {
		for _, n := range c.Nodes {
			if n.Store().Err() != nil {
				failed = n
				return nil
			}
		}
		return errors.New("no store has failed")
	}); err != nil {
		t.Fatal(err)
	}
	if err := failed.StopFailed(); err == nil {
		t.Fatalf("node %d stopped without its failure", failed.ID)
	}
	// The others go on without it.
	for i := range 20 {
		if _, err := c.Propose(ctx, shard, tc.AppendCmd(key, []byte{'0' + byte(i%10)})); err != nil {
			t.Fatalf("write %d with node %d down: %v", i, failed.ID, err)
		}
	}
	leader, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	want, _, err := readAt(ctx, leader, shard, key)
	if err != nil {
		t.Fatal(err)
	}
	if want != "aboom01234567890123456789" {
		t.Fatalf("value on the leader: %q", want)
	}
	if err := failed.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		got, _, err := readAt(ctx, failed, shard, key)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("node %d reads %q, want %q", failed.ID, got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
