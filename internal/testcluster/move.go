package testcluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
)

// NextReplicaID returns a replica ID never used in the cluster.
func (c *Cluster) NextReplicaID() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.replicaSeq == 0 {
		for _, d := range c.Shards {
			for _, r := range d.Replicas {
				c.replicaSeq = max(c.replicaSeq, r.ReplicaId)
			}
		}
	}
	c.replicaSeq++
	return c.replicaSeq
}

// Descriptor returns the shard's descriptor as its leader sees it.
func (c *Cluster) Descriptor(shard uint64) (*shoalpb.ShardDescriptor, error) {
	n, err := c.Leader(shard)
	if err != nil {
		return nil, err
	}
	st, err := n.Store().Status(shard)
	if err != nil {
		return nil, err
	}
	return st.Descriptor, nil
}

// ChangeReplicas applies changes to shard at its leader, following the
// leader and retrying while it moves (plan builds the changes from the
// current descriptor, so a retry after an ambiguous failure sees what
// already happened and may return no changes: then it is done).
func (c *Cluster) ChangeReplicas(ctx context.Context, shard uint64, plan func(*shoalpb.ShardDescriptor) []raftstore.ReplicaChange) (*shoalpb.ShardDescriptor, error) {
	for {
		n, err := c.Leader(shard)
		if err == nil {
			st, serr := n.Store().Status(shard)
			if serr != nil {
				err = serr
			} else if raftstore.IsJoint(st.Descriptor) {
				err = raftstore.ErrConfChangeInProgress
			} else {
				changes := plan(st.Descriptor)
				if len(changes) == 0 {
					return st.Descriptor, nil
				}
				var d *shoalpb.ShardDescriptor
				d, err = n.Store().ChangeReplicas(ctx, shard, st.Descriptor.Epoch, changes)
				if err == nil {
					return d, nil
				}
			}
		}
		if !Retryable(err) && !errors.Is(err, raftstore.ErrEpochMismatch) && !errors.Is(err, raftstore.ErrConfChangeInProgress) &&
			!errors.Is(err, raftstore.ErrAmbiguous) && !errors.Is(err, raftstore.ErrTransferFailed) &&
			!errors.Is(err, raftstore.ErrNotCaughtUp) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func replicaOn(d *shoalpb.ShardDescriptor, node uint64) *shoalpb.ReplicaDescriptor {
	for _, r := range d.Replicas {
		if r.NodeId == node {
			return r
		}
	}
	return nil
}

// AddLearner adds a learner of shard on node and waits until it has caught
// up with the leader (received its snapshot and applied the leader's commit
// index as of its addition).
func (c *Cluster) AddLearner(ctx context.Context, shard, node uint64) (uint64, error) {
	id := c.NextReplicaID()
	d, err := c.ChangeReplicas(ctx, shard, func(d *shoalpb.ShardDescriptor) []raftstore.ReplicaChange {
		if replicaOn(d, node) != nil {
			return nil
		}
		return []raftstore.ReplicaChange{{Type: raftstore.AddLearner, NodeID: node, ReplicaID: id}}
	})
	if err != nil {
		return 0, err
	}
	rd := replicaOn(d, node)
	if rd == nil {
		return 0, fmt.Errorf("testcluster: shard %d: no replica on node %d after adding it", shard, node)
	}
	return rd.ReplicaId, c.WaitCaughtUp(ctx, shard, rd.ReplicaId)
}

// WaitCaughtUp waits until the leader of shard sees replica as having
// everything the leader had applied when the wait began.
func (c *Cluster) WaitCaughtUp(ctx context.Context, shard, replica uint64) error {
	var target uint64
	return WaitFor(ctx, func() error {
		n, err := c.Leader(shard)
		if err != nil {
			return err
		}
		st, err := n.Store().Status(shard)
		if err != nil {
			return err
		}
		if target == 0 {
			target = st.Applied
		}
		pr, ok := st.Progress[replica]
		if !ok || pr.Match < target {
			return fmt.Errorf("shard %d: replica %d at %d (%s), want %d", shard, replica, pr.Match, pr.State, target)
		}
		return nil
	})
}

// MoveReplica moves shard's replica on node from to node to: a learner is
// added on to and caught up, then promoted while from's replica is removed,
// in one joint configuration change (the leader hands over first if it is
// the one leaving).
func (c *Cluster) MoveReplica(ctx context.Context, shard, from, to uint64) (*shoalpb.ShardDescriptor, error) {
	d, err := c.Descriptor(shard)
	if err != nil {
		return nil, err
	}
	if replicaOn(d, from) == nil && replicaOn(d, to) != nil {
		return d, nil
	}
	if _, err := c.AddLearner(ctx, shard, to); err != nil {
		return nil, fmt.Errorf("add learner: %w", err)
	}
	return c.ChangeReplicas(ctx, shard, func(d *shoalpb.ShardDescriptor) []raftstore.ReplicaChange {
		var changes []raftstore.ReplicaChange
		if r := replicaOn(d, to); r != nil && r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER {
			changes = append(changes, raftstore.ReplicaChange{Type: raftstore.PromoteLearner, NodeID: to, ReplicaID: r.ReplicaId})
		}
		if r := replicaOn(d, from); r != nil {
			changes = append(changes, raftstore.ReplicaChange{Type: raftstore.RemoveReplica, NodeID: from, ReplicaID: r.ReplicaId})
		}
		return changes
	})
}

// Checksums returns the checksum of every running replica of shard once
// they all have applied the same index (they are polled until then), by
// node.
func (c *Cluster) Checksums(ctx context.Context, shard uint64) (map[uint64]raftstore.Checksum, error) {
	var out map[uint64]raftstore.Checksum
	err := WaitFor(ctx, func() error {
		out = map[uint64]raftstore.Checksum{}
		var applied uint64
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			sum, err := n.Store().Checksum(ctx, shard)
			if errors.Is(err, raftstore.ErrShardNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if applied != 0 && sum.Applied != applied {
				return fmt.Errorf("shard %d: replicas at different indexes (%d, %d)", shard, applied, sum.Applied)
			}
			applied = sum.Applied
			out[n.ID] = sum
		}
		return nil
	})
	return out, err
}

// ProposeObserved is Propose that calls retried (if not nil) with every
// error it retries, and the node that returned it, before retrying: tests
// use it to check which errors a client that follows the leader meets,
// during a move for instance, where any retry is invisible to Propose's
// caller.
func (c *Cluster) ProposeObserved(ctx context.Context, shard uint64, cmd []byte, retried func(node uint64, err error)) (any, error) {
	target := uint64(0)
	backoff := time.Millisecond
	// hops counts NotLeader hints followed at once since the last wait: two
	// replicas can name each other during a handover, and following them
	// without a pause spins (as the Go client avoids, client/client.go).
	hops := 0
	for {
		if target == 0 || !c.Node(target).Running() {
			if n, err := c.Leader(shard); err == nil {
				target = n.ID
			} else {
				target = c.Nodes[rand.N(len(c.Nodes))].ID
			}
		}
		n := c.Node(target)
		res, err := n.Store().Propose(ctx, shard, cmd)
		if err == nil || !Retryable(err) {
			return res, err
		}
		if retried != nil {
			retried(target, err)
		}
		var nl *raftstore.NotLeaderError
		if errors.As(err, &nl) && nl.LeaderNode != 0 && nl.LeaderNode != target {
			target = nl.LeaderNode
			if hops < 3 {
				hops++
				continue
			}
		} else {
			target = 0
		}
		hops = 0
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}

// CrashKeeping is Crash, except that each write not synced at the crash (a
// data block or a directory entry) survives with probability percent/100,
// drawn from seed: as when the OS wrote some dirty pages back before the
// power went. 100 keeps everything written, files half written included
// (as a kill -9 would); 0 is Crash. It needs Options.CrashableFS.
func (n *Node) CrashKeeping(percent int, seed uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return
	}
	mem, ok := n.fs.(*vfs.MemFS)
	if !ok {
		n.c.t.Fatalf("testcluster: CrashKeeping needs Options.CrashableFS")
	}
	// The crash point: from here nothing the node sends reaches its peers
	// (it could acknowledge writes it syncs after the image below), and the
	// post-crash image holds only what was synced before it (and what
	// percent lets survive).
	n.c.Net.Freeze(n.ID)
	// Stop the store before the image is taken: a store left running would
	// go on syncing, and as a leader count its own acknowledgement of a
	// sync the image lacks. What it synced while stopping is in the image
	// (a slightly later crash); what it did not sync is lost.
	n.n.Store().Stop()
	n.fs = mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: percent, RNG: rand.New(rand.NewPCG(seed, seed))})
	n.running = false
	_ = n.n.Stop()
}
