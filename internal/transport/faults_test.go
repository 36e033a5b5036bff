package transport

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// sink is a Sender that records deliveries.
type sink struct {
	mu  sync.Mutex
	got map[uint64][]time.Time
}

func (s *sink) Send(to uint64, msgs []*shoalpb.RaftMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range msgs {
		s.got[to] = append(s.got[to], time.Now())
	}
	return nil
}

func (s *sink) SendSnapshot(context.Context, uint64, *shoalpb.SnapshotChunk, func() (*shoalpb.SnapshotChunk, error)) error {
	return nil
}

func (s *sink) n(to uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got[to])
}

func one() []*shoalpb.RaftMessage { return []*shoalpb.RaftMessage{{ShardId: 1}} }

func TestNetworkRules(t *testing.T) {
	net := NewNetwork()
	s1, s2 := &sink{got: map[uint64][]time.Time{}}, &sink{got: map[uint64][]time.Time{}}
	n1, n2 := net.Wrap(1, s1), net.Wrap(2, s2)
	send := func() {
		_ = n1.Send(2, one())
		_ = n2.Send(1, one())
	}
	send()
	if s1.n(2) != 1 || s2.n(1) != 1 {
		t.Fatal("healthy network dropped messages")
	}

	net.Block(1, 2) // one way
	send()
	if s1.n(2) != 1 || s2.n(1) != 2 {
		t.Fatalf("one-way block: 1->2 %d, 2->1 %d", s1.n(2), s2.n(1))
	}
	net.Unblock(1, 2)

	net.Partition([]uint64{1}, []uint64{2, 3})
	send()
	if s1.n(2) != 1 || s2.n(1) != 2 {
		t.Fatalf("partition leaked: 1->2 %d, 2->1 %d", s1.n(2), s2.n(1))
	}
	if err := n2.Send(3, one()); err != nil || s2.n(3) != 1 {
		t.Fatalf("partition cut a link inside a group")
	}
	net.Heal()
	send()
	if s1.n(2) != 2 || s2.n(1) != 3 {
		t.Fatal("heal did not restore links")
	}

	net.Freeze(1)
	net.Heal()
	send()
	if s1.n(2) != 2 || s2.n(1) != 4 {
		t.Fatal("frozen node's messages got through, or heal thawed it")
	}
	net.Thaw(1)
	send()
	if s1.n(2) != 3 {
		t.Fatal("thaw did not restore the node")
	}
	if net.Dropped() != 4 {
		t.Fatalf("dropped %d, want 4", net.Dropped())
	}
}

func TestNetworkDelay(t *testing.T) {
	net := NewNetwork()
	s := &sink{got: map[uint64][]time.Time{}}
	n1 := net.Wrap(1, s)
	const d = 50 * time.Millisecond
	net.Delay(1, 2, d)
	sent := time.Now()
	_ = n1.Send(2, one())
	waitFor(t, 5*time.Second, func() error {
		if s.n(2) == 0 {
			return errNotYet
		}
		return nil
	})
	s.mu.Lock()
	at := s.got[2][0]
	s.mu.Unlock()
	if at.Sub(sent) < d {
		t.Fatalf("delivered after %v, want >= %v", at.Sub(sent), d)
	}
	// A delayed message meets a partition that started meanwhile.
	_ = n1.Send(2, one())
	net.Block(1, 2)
	net.Delay(1, 2, 0)
	waitFor(t, 5*time.Second, func() error {
		if net.Dropped() != 1 {
			return errNotYet
		}
		return nil
	})
	if s.n(2) != 1 {
		t.Fatal("delayed message crossed a partition")
	}
}

var errNotYet = errorString("not yet")

type errorString string

func (e errorString) Error() string { return string(e) }

func TestNetworkDropType(t *testing.T) {
	net := NewNetwork()
	s1 := &sink{got: map[uint64][]time.Time{}}
	n1 := net.Wrap(1, s1)
	msg := func(typ raftpb.MessageType) *shoalpb.RaftMessage {
		return &shoalpb.RaftMessage{ShardId: 1, Message: &raftpb.Message{Type: typ.Enum()}}
	}
	batch := func() []*shoalpb.RaftMessage {
		return []*shoalpb.RaftMessage{msg(raftpb.MsgApp), msg(raftpb.MsgReadIndex), msg(raftpb.MsgHeartbeat)}
	}
	net.DropType(1, 2, raftpb.MsgReadIndex)
	_ = n1.Send(2, batch())
	_ = n1.Send(3, batch())
	if s1.n(2) != 2 || s1.n(3) != 3 || net.Dropped() != 1 {
		t.Fatalf("DropType(1, 2, MsgReadIndex): 1->2 got %d of 3 (want 2), 1->3 got %d (want 3), dropped %d (want 1)",
			s1.n(2), s1.n(3), net.Dropped())
	}
	_ = n1.Send(2, []*shoalpb.RaftMessage{msg(raftpb.MsgReadIndex)})
	if s1.n(2) != 2 || net.Dropped() != 2 {
		t.Fatalf("a batch of only dropped messages: got %d, dropped %d", s1.n(2), net.Dropped())
	}
	net.Heal()
	_ = n1.Send(2, batch())
	if s1.n(2) != 5 {
		t.Fatalf("after Heal 1->2 got %d, want 5", s1.n(2))
	}
}
