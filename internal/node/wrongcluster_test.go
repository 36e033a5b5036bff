package node_test

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoaldb/shoal/api/shoalpb"
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
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return shoalpb.NewKVClient(conn)
}
