package node_test

import (
	"errors"
	"io"
	"math"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/node"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestBatchCommands drives a node's BatchCommands stream by hand: each
// command is answered by id with what its unary method answers (results,
// forwarding to leaders on other nodes, errors with their code, message
// and detail), a command without a request is refused, the commands count
// in the request metrics as their methods, and the stream ends cleanly
// once the client has sent all and every answer is out.
func TestBatchCommands(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 8, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	kc := kvClient(t, c.Nodes[0].Addr)
	stream, err := kc.BatchCommands(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// exchange sends cmds in one message and collects their results by id.
	exchange := func(cmds ...*shoalpb.BatchCommandsRequest_Command) map[uint64]*shoalpb.BatchCommandsResponse_Result {
		t.Helper()
		if err := stream.Send(&shoalpb.BatchCommandsRequest{Commands: cmds}); err != nil {
			t.Fatal(err)
		}
		got := map[uint64]*shoalpb.BatchCommandsResponse_Result{}
		for len(got) < len(cmds) {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range resp.Results {
				if got[r.Id] != nil {
					t.Fatalf("result %d twice", r.Id)
				}
				got[r.Id] = r
			}
		}
		return got
	}
	// Eight keys, over several of the eight shards: node 1 leads only
	// some, and forwards the others' writes.
	keys := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	var puts []*shoalpb.BatchCommandsRequest_Command
	for i, k := range keys {
		puts = append(puts, &shoalpb.BatchCommandsRequest_Command{Id: uint64(i + 1), TimeoutMs: 10000,
			Request: &shoalpb.BatchCommandsRequest_Command_Put{Put: &shoalpb.PutRequest{Key: []byte(k), Value: []byte("v-" + k)}}})
	}
	puts = append(puts, &shoalpb.BatchCommandsRequest_Command{Id: 100})
	got := exchange(puts...)
	for i := range keys {
		if r := got[uint64(i+1)]; r.GetError() != nil || !r.GetPut().GetApplied() {
			t.Fatalf("put %q: %v", keys[i], r)
		}
	}
	if r := got[100]; r.GetError().GetDetail().GetCode() != shoalpb.ErrorCode_ERROR_CODE_INVALID || codes.Code(r.GetError().GetCode()) != codes.InvalidArgument {
		t.Fatalf("empty command: %v", r)
	}
	// A time left past what a duration holds is taken as the longest a
	// request runs (it wrapped, and the put timed out at once); a
	// condition this build does not know is refused, not taken for none.
	got = exchange(
		&shoalpb.BatchCommandsRequest_Command{Id: 1, TimeoutMs: math.MaxInt64,
			Request: &shoalpb.BatchCommandsRequest_Command_Put{Put: &shoalpb.PutRequest{Key: []byte("long"), Value: []byte("v")}}},
		&shoalpb.BatchCommandsRequest_Command{Id: 2,
			Request: &shoalpb.BatchCommandsRequest_Command_Put{Put: &shoalpb.PutRequest{Key: []byte("cond"), Value: []byte("v"), Condition: 99}}})
	if r := got[1]; r.GetError() != nil || !r.GetPut().GetApplied() {
		t.Fatalf("put with the longest time left: %v", r)
	}
	if r := got[2]; r.GetError().GetDetail().GetCode() != shoalpb.ErrorCode_ERROR_CODE_INVALID {
		t.Fatalf("put with an unknown condition: %v, want INVALID", r)
	}
	if g, err := kc.Get(ctx, &shoalpb.GetRequest{Key: []byte("cond")}); err != nil || g.GetFound() {
		t.Fatalf("the put with an unknown condition wrote: found %v, %v", g.GetFound(), err)
	}

	var gets []*shoalpb.BatchCommandsRequest_Command
	for i, k := range keys {
		gets = append(gets, &shoalpb.BatchCommandsRequest_Command{Id: uint64(i + 1),
			Request: &shoalpb.BatchCommandsRequest_Command_Get{Get: &shoalpb.GetRequest{Key: []byte(k)}}})
	}
	incr := &shoalpb.IncrRequest{Key: []byte("a"), Delta: 1}
	gets = append(gets, &shoalpb.BatchCommandsRequest_Command{Id: 200,
		Request: &shoalpb.BatchCommandsRequest_Command_Incr{Incr: proto.Clone(incr).(*shoalpb.IncrRequest)}})
	got = exchange(gets...)
	for i, k := range keys {
		if r := got[uint64(i+1)]; r.GetError() != nil || !r.GetGet().GetFound() || string(r.GetGet().GetValue()) != "v-"+k {
			t.Fatalf("get %q: %v", k, r)
		}
	}
	// The same failure as a unary call: code, message and detail.
	_, unaryErr := kc.Incr(ctx, incr)
	batched := got[200].GetError().Err()
	if shoalpb.DetailOf(unaryErr).GetCode() != shoalpb.ErrorCode_ERROR_CODE_NOT_INTEGER ||
		status.Code(batched) != status.Code(unaryErr) || status.Convert(batched).Message() != status.Convert(unaryErr).Message() ||
		!proto.Equal(shoalpb.DetailOf(batched), shoalpb.DetailOf(unaryErr)) {
		t.Fatalf("INCR of a non-integer: batched %v, unary %v", batched, unaryErr)
	}

	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: %v, want the stream's end", err)
	}

	// The commands count as their methods, as unary calls do.
	families, err := c.Nodes[0].Node().Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "shoal_grpc_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			var method, code string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "method":
					method = l.GetValue()
				case "code":
					code = l.GetValue()
				}
			}
			counts[method+" "+code] += m.GetCounter().GetValue()
		}
	}
	// Forwarded Puts count on the leaders too, as unary ones: node 1's
	// own count is at least the batch's.
	if counts["Put OK"] < float64(len(keys)) || counts["Get OK"] < float64(len(keys)) || counts["BatchCommands InvalidArgument"] != 1 {
		t.Fatalf("node 1's request counts: %v", counts)
	}
}

// TestBatchCommandsOverloaded: a command beyond the stream's limit of
// commands running is answered OVERLOADED at once, while those running
// (writes to a shard that lost its quorum) hold their slots.
func TestBatchCommandsOverloaded(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(c.Shards[0].ShardId)
	if err != nil {
		t.Fatal(err)
	}
	node.SetStreamCommandLimit(leader.Node(), 2)
	for _, n := range c.Nodes {
		if n != leader {
			n.Stop()
		}
	}
	conn, err := grpc.NewClient(leader.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := shoalpb.NewKVClient(conn).BatchCommands(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &shoalpb.BatchCommandsRequest{}
	for id := uint64(1); id <= 3; id++ {
		req.Commands = append(req.Commands, &shoalpb.BatchCommandsRequest_Command{Id: id, TimeoutMs: 1000,
			Request: &shoalpb.BatchCommandsRequest_Command_Put{Put: &shoalpb.PutRequest{Key: []byte("k"), Value: []byte("v")}}})
	}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]*shoalpb.BatchCommandsResponse_Result{}
	for len(got) < 3 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.Results {
			got[r.Id] = r
		}
	}
	if d := got[3].GetError().GetDetail(); d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_OVERLOADED {
		t.Fatalf("the third command: %v, want OVERLOADED", got[3])
	}
	for id := uint64(1); id <= 2; id++ {
		if r := got[id]; r.GetError() == nil || r.GetError().GetDetail().GetCode() == shoalpb.ErrorCode_ERROR_CODE_OVERLOADED {
			t.Fatalf("command %d, a write without a quorum: %v", id, r)
		}
	}
}
