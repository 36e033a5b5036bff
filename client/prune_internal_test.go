package client

import (
	"context"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
)

// tableMaster serves a fixed route table.
type tableMaster struct {
	shoalpb.UnimplementedMasterServer
	table *shoalpb.RouteTable
}

func (m *tableMaster) GetRoutes(context.Context, *shoalpb.GetRoutesRequest) (*shoalpb.RouteTable, error) {
	return m.table, nil
}

func (m *tableMaster) WatchRoutes(_ *shoalpb.WatchRoutesRequest, s grpc.ServerStreamingServer[shoalpb.RouteTable]) error {
	<-s.Context().Done()
	return nil
}

// okNode answers every Put.
type okNode struct{ shoalpb.UnimplementedKVServer }

func (okNode) Put(context.Context, *shoalpb.PutRequest) (*shoalpb.PutResponse, error) {
	return &shoalpb.PutResponse{Header: &shoalpb.ResponseHeader{}, Applied: true}, nil
}

func serveOn(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// openWith opens a client on master, closed when the test ends, and
// returns it with a context for the test.
func openWith(t *testing.T, master shoalpb.MasterServer) (context.Context, *Client) {
	t.Helper()
	addr := serveOn(t, func(s *grpc.Server) { shoalpb.RegisterMasterServer(s, master) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c, err := Open(ctx, []string{addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ctx, c
}

// oneShardTable is a table of one shard, all slots, led by node 1 at
// addrs[0], with a voter on each node.
func oneShardTable(version uint64, addrs ...string) *shoalpb.RouteTable {
	desc := &shoalpb.ShardDescriptor{ShardId: 1, StartSlot: 0, EndSlot: keys.SlotCount, Epoch: 1}
	t := &shoalpb.RouteTable{ClusterId: "c", Version: version, Shards: []*shoalpb.ShardRoute{{Shard: desc, LeaderReplica: 1}}}
	for i, a := range addrs {
		desc.Replicas = append(desc.Replicas, &shoalpb.ReplicaDescriptor{NodeId: uint64(i + 1), ReplicaId: uint64(i + 1), Role: shoalpb.ReplicaRole_REPLICA_ROLE_VOTER})
		t.Nodes = append(t.Nodes, &shoalpb.NodeInfo{Id: uint64(i + 1), Addr: a})
	}
	return t
}

// A connection to a node the route table no longer names is closed once
// no attempt uses it (never under one: the write it carries would read as
// possibly applied), and a node named again gets a new one.
func TestConnectionsToDepartedNodesClose(t *testing.T) {
	a := serveOn(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, okNode{}) })
	b := serveOn(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, okNode{}) })
	ctx, c := openWith(t, &tableMaster{table: oneShardTable(1, b, a)})
	if _, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	nb := c.nodes[b]
	c.mu.Unlock()
	if nb == nil {
		t.Fatal("no connection to the leader after a put")
	}
	// An attempt in flight on b when b leaves the table.
	inFlight, err := c.node(b)
	if err != nil {
		t.Fatal(err)
	}
	c.routes.replace(oneShardTable(2, a))
	c.pruneNodes()
	if st := nb.conn.GetState(); st == connectivity.Shutdown {
		t.Fatal("a connection was closed under an attempt")
	}
	c.release(inFlight)
	c.mu.Lock()
	_, kept := c.nodes[b]
	c.mu.Unlock()
	if kept || nb.conn.GetState() != connectivity.Shutdown {
		t.Fatalf("connection to the departed node: kept %v, state %v; want closed once unused", kept, nb.conn.GetState())
	}
	if _, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil {
		t.Fatalf("put after the leader moved to a: %v", err)
	}
	c.mu.Lock()
	_, onA := c.nodes[a]
	c.mu.Unlock()
	if !onA {
		t.Fatal("no connection to a, the leader now")
	}
}

// gatedMaster serves a table; once gate is set, each GetRoutes waits for
// it to close.
type gatedMaster struct {
	tableMaster
	calls   atomic.Int64
	gate    atomic.Pointer[chan struct{}]
	waiting chan struct{}
}

func (m *gatedMaster) GetRoutes(ctx context.Context, r *shoalpb.GetRoutesRequest) (*shoalpb.RouteTable, error) {
	m.calls.Add(1)
	if g := m.gate.Load(); g != nil {
		m.waiting <- struct{}{}
		<-*g
	}
	return m.tableMaster.GetRoutes(ctx, r)
}

// Requests that need a fresh table at once share one fetch from the
// masters.
func TestRefreshIsShared(t *testing.T) {
	a := serveOn(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, okNode{}) })
	m := &gatedMaster{tableMaster: tableMaster{table: oneShardTable(1, a)}, waiting: make(chan struct{}, 16)}
	ctx, c := openWith(t, m)
	gate := make(chan struct{})
	m.gate.Store(&gate)
	before := m.calls.Load()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start // all at once: the fetch gives up after a second
			c.refresh(ctx)
		}()
	}
	close(start)
	<-m.waiting // one fetch is in flight
	// Every caller is inside refresh, so each finds that fetch (it cannot
	// end before the gate opens).
	deadline := time.Now().Add(20 * time.Second)
	for inRefresh() < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines in refresh, want 10", inRefresh())
		}
		runtime.Gosched()
	}
	close(gate)
	wg.Wait()
	if n := m.calls.Load() - before; n != 1 {
		t.Fatalf("%d fetches for 10 requests refreshing at once, want 1", n)
	}
}

// inRefresh counts the goroutines in Client.refresh.
func inRefresh() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "client.(*Client).refresh(")
}
