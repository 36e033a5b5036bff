package raftstore_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// A snapshot stream whose ID is not one this build makes (a path, say) and
// that fails midway loses nothing on the receiver: the directory it is
// built in is named by the receiver, and only that one is removed.
func TestSnapshotIDIsNotAPath(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 1, Shards: 1, Replicas: 1, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	n := c.Nodes[0]
	st, err := n.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	engineDir := n.Engine().Dir()
	for _, id := range []string{"..", "", "../..", "/"} {
		data, err := proto.Marshal(&shoalpb.SnapshotData{Shard: st.Descriptor, Id: id})
		if err != nil {
			t.Fatal(err)
		}
		first := &shoalpb.SnapshotChunk{TotalBytes: 1, Header: &shoalpb.RaftMessage{
			ShardId: 1, FromNode: 2, ToNode: n.ID, Epoch: st.Descriptor.Epoch,
			Message: &raftpb.Message{Type: raftpb.MsgSnap.Enum(), To: new(st.ReplicaID), From: new(uint64(99)),
				Snapshot: &raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{
					ConfState: raftstore.ConfStateOf(st.Descriptor), Index: new(st.Applied + 100), Term: new(st.Term)}}},
		}}
		cut := errors.New("stream cut")
		err = n.Store().HandleSnapshot(context.Background(), first, func() (*shoalpb.SnapshotChunk, error) { return nil, cut })
		if !errors.Is(err, cut) {
			t.Fatalf("snapshot %q: got %v, want the stream's error", id, err)
		}
		if m, err := filepath.Glob(filepath.Join(engineDir, "MANIFEST-*")); err != nil || len(m) == 0 {
			t.Fatalf("after snapshot %q failed: the engine's manifest: %v %v", id, m, err)
		}
	}
	if _, err := c.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v"))); err != nil {
		t.Fatal(err)
	}
}
