package transport

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Network injects faults into the Raft traffic of a set of in-process nodes.
// Each node's sender is wrapped with Wrap; the Network then decides, per
// batch, whether it is delivered, delayed or silently dropped, as a network
// partition would (no error: the sender learns nothing, as with a black
// hole). Rules are directional: a link from a to b is independent of b to a.
type Network struct {
	mu        sync.RWMutex
	blocked   map[link]bool
	delay     map[link]time.Duration
	frozen    map[uint64]bool
	dropTypes map[link]map[raftpb.MessageType]bool
	dropped   atomic.Uint64
}

type link struct{ from, to uint64 }

// NewNetwork returns a Network that delivers everything.
func NewNetwork() *Network {
	return &Network{blocked: map[link]bool{}, delay: map[link]time.Duration{}, frozen: map[uint64]bool{},
		dropTypes: map[link]map[raftpb.MessageType]bool{}}
}

// Wrap returns the sender of node that goes through n.
func (n *Network) Wrap(node uint64, s Sender) Sender {
	return &faultySender{net: n, node: node, inner: s}
}

// Block drops everything from node from to node to.
func (n *Network) Block(from, to uint64) {
	n.mu.Lock()
	n.blocked[link{from, to}] = true
	n.mu.Unlock()
}

// Unblock undoes Block.
func (n *Network) Unblock(from, to uint64) {
	n.mu.Lock()
	delete(n.blocked, link{from, to})
	n.mu.Unlock()
}

// Delay holds everything from node from to node to for d before delivering.
// Zero removes the delay.
func (n *Network) Delay(from, to uint64, d time.Duration) {
	n.mu.Lock()
	if d <= 0 {
		delete(n.delay, link{from, to})
	} else {
		n.delay[link{from, to}] = d
	}
	n.mu.Unlock()
}

// Partition splits the nodes into groups that cannot reach each other in
// either direction; links inside a group are untouched. Nodes not named in
// any group keep their links.
func (n *Network) Partition(groups ...[]uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, g := range groups {
		for j, h := range groups {
			if i == j {
				continue
			}
			for _, a := range g {
				for _, b := range h {
					n.blocked[link{a, b}] = true
				}
			}
		}
	}
}

// Isolate cuts node off from every node in others, both ways.
func (n *Network) Isolate(node uint64, others []uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, o := range others {
		if o != node {
			n.blocked[link{node, o}] = true
			n.blocked[link{o, node}] = true
		}
	}
}

// Freeze drops everything node sends from now on, whatever the other rules
// say, until Thaw. A message that passed the check before Freeze returned
// was produced before it, which is what a simulated crash needs: nothing the
// node does after the crash point may reach its peers.
func (n *Network) Freeze(node uint64) {
	n.mu.Lock()
	n.frozen[node] = true
	n.mu.Unlock()
}

// Thaw undoes Freeze.
func (n *Network) Thaw(node uint64) {
	n.mu.Lock()
	delete(n.frozen, node)
	n.mu.Unlock()
}

// DropType drops the Raft messages of type t from node from to node to,
// and delivers the rest of their batches: a lost message of one kind,
// where Block loses the whole link.
func (n *Network) DropType(from, to uint64, t raftpb.MessageType) {
	n.mu.Lock()
	l := link{from, to}
	if n.dropTypes[l] == nil {
		n.dropTypes[l] = map[raftpb.MessageType]bool{}
	}
	n.dropTypes[l][t] = true
	n.mu.Unlock()
}

// Heal removes every rule except freezes.
func (n *Network) Heal() {
	n.mu.Lock()
	clear(n.blocked)
	clear(n.delay)
	clear(n.dropTypes)
	n.mu.Unlock()
}

// filter returns msgs without those of the types dropped from from to to.
func (n *Network) filter(from, to uint64, msgs []*shoalpb.RaftMessage) []*shoalpb.RaftMessage {
	n.mu.RLock()
	types := n.dropTypes[link{from, to}]
	if len(types) == 0 {
		n.mu.RUnlock()
		return msgs
	}
	var kept []*shoalpb.RaftMessage
	for _, m := range msgs {
		if types[m.GetMessage().GetType()] {
			n.dropped.Add(1)
			continue
		}
		kept = append(kept, m)
	}
	n.mu.RUnlock()
	return kept
}

// Dropped returns how many messages the Network dropped.
func (n *Network) Dropped() uint64 { return n.dropped.Load() }

func (n *Network) rule(from, to uint64) (blocked bool, delay time.Duration) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.blocked[link{from, to}] || n.frozen[from], n.delay[link{from, to}]
}

// SendSnapshot streams through unless the link is blocked, in which case it
// fails as a stream into a black hole would, only sooner.
func (f *faultySender) SendSnapshot(ctx context.Context, to uint64, first *shoalpb.SnapshotChunk, next func() (*shoalpb.SnapshotChunk, error)) error {
	if blocked, _ := f.net.rule(f.node, to); blocked {
		return fmt.Errorf("transport: snapshot to node %d: %w", to, ErrUnreachable)
	}
	return f.inner.SendSnapshot(ctx, to, first, func() (*shoalpb.SnapshotChunk, error) {
		if blocked, _ := f.net.rule(f.node, to); blocked {
			return nil, fmt.Errorf("transport: snapshot to node %d cut off: %w", to, ErrUnreachable)
		}
		return next()
	})
}

type faultySender struct {
	net   *Network
	node  uint64
	inner Sender
}

func (f *faultySender) Send(to uint64, msgs []*shoalpb.RaftMessage) error {
	if msgs = f.net.filter(f.node, to, msgs); len(msgs) == 0 {
		return nil
	}
	blocked, delay := f.net.rule(f.node, to)
	switch {
	case blocked:
		f.net.dropped.Add(uint64(len(msgs)))
		return nil
	case delay > 0:
		time.AfterFunc(delay, func() {
			// The delayed batch meets the rules in force on arrival.
			if b, _ := f.net.rule(f.node, to); b {
				f.net.dropped.Add(uint64(len(msgs)))
				return
			}
			_ = f.inner.Send(to, msgs)
		})
		return nil
	}
	return f.inner.Send(to, msgs)
}
