package raftstore

import (
	"context"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/storage"
)

type nopTransport struct{}

func (nopTransport) Send(uint64, []*shoalpb.RaftMessage) error { return nil }

type echoSM struct{}

func (echoSM) Apply(b *storage.Batch, cmds []Command) ([]any, error) {
	out := make([]any, len(cmds))
	for i, c := range cmds {
		if err := b.Set(append([]byte("d"), c.Data...), c.Data, nil); err != nil {
			return nil, err
		}
		out[i] = string(c.Data)
	}
	return out, nil
}

func TestSmokeSingleNode(t *testing.T) {
	eng, err := storage.Open(storage.Options{Dir: "/db", FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	s, err := NewStore(Options{NodeID: 1, Engine: eng, Transport: nopTransport{},
		NewStateMachine: func(*shoalpb.ShardDescriptor) StateMachine { return echoSM{} }})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Stop()
	desc := &shoalpb.ShardDescriptor{ShardId: 1, StartSlot: 0, EndSlot: 16384,
		Replicas: []*shoalpb.ReplicaDescriptor{{NodeId: 1, ReplicaId: 1}}}
	if err := s.BootstrapReplica(desc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		st, _ := s.Status(1)
		if st.Role == RoleLeader {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := range 100 {
		v, err := s.Propose(ctx, 1, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		if v.(string) != string([]byte{byte(i)}) {
			t.Fatalf("got %v", v)
		}
	}
	if err := s.ReadIndex(ctx, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("stats %+v", s.Stats())
}
