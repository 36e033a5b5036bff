package node_test

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/node"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// A request naming another cluster (a client whose table gives it an
// address now used by a node of this cluster) is refused with
// WRONG_CLUSTER and does nothing; one naming this cluster, or none, is
// served.
func TestKVRefusesOtherCluster(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 1, Shards: 1, Replicas: 1})
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	kvc := kvClient(t, c.Nodes[0].Addr)
	_, err := kvc.Put(ctx, &shoalpb.PutRequest{Header: &shoalpb.RequestHeader{ClusterId: "another"}, Key: []byte("k"), Value: []byte("v")})
	if d := shoalpb.DetailOf(err); d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER || d.GetAmbiguous() {
		t.Fatalf("put for another cluster: %v, want WRONG_CLUSTER", err)
	}
	for _, id := range []string{"testcluster", ""} {
		got, err := kvc.Get(ctx, &shoalpb.GetRequest{Header: &shoalpb.RequestHeader{ClusterId: id}, Key: []byte("k")})
		if err != nil || got.Found {
			t.Fatalf("get with cluster %q: found %v, %v; want served, the refused put not applied", id, got.GetFound(), err)
		}
	}
}

// kvClient returns a KV client of the node at addr that takes answers up
// to the nodes' 64 MiB, closed when the test ends.
func kvClient(t *testing.T, addr string) shoalpb.KVClient {
	t.Helper()
	return shoalpb.NewKVClient(dialNode(t, addr))
}

// dialNode connects to the node at addr, taking answers up to the nodes'
// 64 MiB; the connection is closed when the test ends.
func dialNode(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A node without a replica of a slot whose route table, behind, names
// the node itself as the shard's leader (it led the shard and gave it
// away) answers SHARD_NOT_HERE, so that the client refreshes its table,
// not NOT_LEADER naming itself, which sends the client straight back.
func TestStaleRouteNamingThisNode(t *testing.T) {
	ctx, c, st := startPlaced(t, tc.Options{Masters: 1, Nodes: 4, Shards: 4, Replicas: 3})
	var n *tc.Node
	var shard *shoalpb.ShardDescriptor
	for _, rt := range st.Routes.Shards {
		holders := map[uint64]bool{}
		for _, r := range rt.Shard.Replicas {
			holders[r.NodeId] = true
		}
		for _, cand := range c.Nodes {
			if !holders[cand.ID] && n == nil {
				n, shard = cand, rt.Shard
			}
		}
	}
	if n == nil {
		t.Fatal("every node holds every shard")
	}
	// The node's table, with the shard's leader replica moved onto it.
	if err := tc.WaitFor(ctx, func() error {
		if v := n.Node().Routes().GetVersion(); v < st.Routes.Version {
			return fmt.Errorf("node %d has route table %d, want %d", n.ID, v, st.Routes.Version)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	table := proto.Clone(n.Node().Routes()).(*shoalpb.RouteTable)
	table.Version += 1000
	for _, rt := range table.Shards {
		if rt.Shard.ShardId == shard.ShardId {
			rt.Shard.Replicas[0].NodeId = n.ID
			rt.LeaderReplica = rt.Shard.Replicas[0].ReplicaId
		}
	}
	node.SetRoutes(n.Node(), table)
	key := keyInSlots(shard.StartSlot, shard.EndSlot)
	_, err := kvClient(t, n.Addr).Get(ctx, &shoalpb.GetRequest{Key: key})
	if d := shoalpb.DetailOf(err); d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE || d.GetLeaderId() != 0 {
		t.Fatalf("get on node %d, named the leader of shard %d by its stale table: %v (leader hint %d), want SHARD_NOT_HERE",
			n.ID, shard.ShardId, err, d.GetLeaderId())
	}
}

// keyInSlots returns a key whose slot is in [start, end).
func keyInSlots(start, end uint32) []byte {
	for i := 0; ; i++ {
		k := []byte("key-" + strconv.Itoa(i))
		if s := uint32(keys.Slot(k)); s >= start && s < end {
			return k
		}
	}
}

// A step of an operator meant for another cluster's node, or another node
// of this cluster, that reaches this node (an address reused) is refused
// before it touches a shard: WRONG_CLUSTER, UNKNOWN_NODE.
func TestRunStepRefusesOtherClusterOrNode(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 1, Shards: 1, Replicas: 1})
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	admin := shoalpb.NewNodeAdminClient(dialNode(t, c.Nodes[0].Addr))
	st, err := c.Nodes[0].Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	remove := &shoalpb.OperatorStep{Step: &shoalpb.OperatorStep_RemoveReplica{RemoveReplica: &shoalpb.RemoveReplicaStep{ReplicaId: st.ReplicaID}}}
	for _, tt := range []struct {
		cluster string
		node    uint64
		want    shoalpb.ErrorCode
	}{
		{"another", c.Nodes[0].ID, shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER},
		{"testcluster", c.Nodes[0].ID + 1, shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE},
	} {
		_, err := admin.RunStep(ctx, &shoalpb.RunStepRequest{ShardId: 1, Epoch: st.Descriptor.GetEpoch(), Step: remove,
			ClusterId: tt.cluster, NodeId: tt.node})
		if d := shoalpb.DetailOf(err); d.GetCode() != tt.want {
			t.Fatalf("step for cluster %q, node %d: %v, want %v", tt.cluster, tt.node, err, tt.want)
		}
	}
	if after, err := c.Nodes[0].Store().Status(1); err != nil || after.Descriptor.GetEpoch() != st.Descriptor.GetEpoch() {
		t.Fatalf("the shard after the refused steps: %v, %v; want it untouched", after.Descriptor, err)
	}
}
