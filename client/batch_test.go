package client

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// scriptedKV is a KV server whose BatchCommands does what a test needs
// (the client's handling of the stream is what these tests are about; the
// real node's side is tested in internal/node). Get answers unary calls.
type scriptedKV struct {
	shoalpb.UnimplementedKVServer
	unaryGets atomic.Int64
	unaryPuts atomic.Int64
	streams   atomic.Int64
	batch     func(n int64, stream shoalpb.KV_BatchCommandsServer) error
}

func (s *scriptedKV) Put(_ context.Context, in *shoalpb.PutRequest) (*shoalpb.PutResponse, error) {
	s.unaryPuts.Add(1)
	return &shoalpb.PutResponse{Applied: true}, nil
}

func (s *scriptedKV) Get(_ context.Context, in *shoalpb.GetRequest) (*shoalpb.GetResponse, error) {
	s.unaryGets.Add(1)
	return &shoalpb.GetResponse{Found: true, Value: in.Key}, nil
}

func (s *scriptedKV) BatchCommands(stream shoalpb.KV_BatchCommandsServer) error {
	if s.batch == nil {
		return status.Error(codes.Unimplemented, "method BatchCommands not implemented")
	}
	return s.batch(s.streams.Add(1), stream)
}

// echoGets answers every Get command with the key as its value.
func echoGets(stream shoalpb.KV_BatchCommandsServer) error { return echoGetsNoting(stream, nil) }

// echoGetsNoting is echoGets that passes every command to note first.
func echoGetsNoting(stream shoalpb.KV_BatchCommandsServer, note func(*shoalpb.BatchCommandsRequest_Command)) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		resp := &shoalpb.BatchCommandsResponse{}
		for _, c := range req.Commands {
			if note != nil {
				note(c)
			}
			resp.Results = append(resp.Results, &shoalpb.BatchCommandsResponse_Result{Id: c.Id,
				Response: &shoalpb.BatchCommandsResponse_Result_Get{Get: &shoalpb.GetResponse{Found: true, Value: c.GetGet().GetKey()}}})
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// startScripted serves srv on loopback and returns a batching KVClient of
// it.
func startScripted(t *testing.T, srv *scriptedKV) batchKV {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	shoalpb.RegisterKVServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return dialBatchKV(t, lis.Addr().String())
}

func dialBatchKV(t *testing.T, addr string) batchKV {
	t.Helper()
	conn, err := grpc.NewClient(addr, DefaultDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kc := shoalpb.NewKVClient(conn)
	return batchKV{KVClient: kc, b: &batcher{kc: kc, addr: addr, ctx: ctx}}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A node without BatchCommands (an older version) gets unary calls: the
// first call learns it from the stream, and goes unary itself.
func TestBatchFallsBackToUnary(t *testing.T) {
	srv := &scriptedKV{}
	kc := startScripted(t, srv)
	for i, key := range []string{"a", "b"} {
		resp, err := kc.Get(testCtx(t), &shoalpb.GetRequest{Key: []byte(key)})
		if err != nil || string(resp.GetValue()) != key {
			t.Fatalf("get %d: %v, %v", i, resp, err)
		}
	}
	if n := srv.unaryGets.Load(); n != 2 {
		t.Fatalf("the server served %d unary Gets, want 2", n)
	}
	if n := srv.streams.Load(); n != 0 {
		t.Fatalf("%d streams were served", n)
	}
}

// A stream that breaks fails the commands waiting on it as a broken
// connection fails a unary call (Unavailable, may have been served), and
// the next command opens a new stream.
func TestBatchStreamBreaks(t *testing.T) {
	srv := &scriptedKV{batch: func(n int64, stream shoalpb.KV_BatchCommandsServer) error {
		if n == 1 {
			if _, err := stream.Recv(); err != nil {
				return err
			}
			return status.Error(codes.Internal, "scripted failure")
		}
		return echoGets(stream)
	}}
	kc := startScripted(t, srv)
	_, err := kc.Get(testCtx(t), &shoalpb.GetRequest{Key: []byte("a")})
	if status.Code(err) != codes.Unavailable || !shoalpb.MayBeServed(err) {
		t.Fatalf("get on a stream that broke: %v (code %v), want Unavailable that may have been served", err, status.Code(err))
	}
	resp, err := kc.Get(testCtx(t), &shoalpb.GetRequest{Key: []byte("b")})
	if err != nil || string(resp.GetValue()) != "b" {
		t.Fatalf("get after the break: %v, %v", resp, err)
	}
	if n := srv.streams.Load(); n != 2 {
		t.Fatalf("%d streams, want 2", n)
	}
	if n := srv.unaryGets.Load(); n != 0 {
		t.Fatalf("%d unary Gets, want none", n)
	}
}

// A command's error comes back as the unary call's would: code, message
// and detail.
func TestBatchCommandError(t *testing.T) {
	want := shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, ShardId: 7, LeaderId: 2, LeaderAddr: "127.0.0.2:1"}, "not the leader")
	srv := &scriptedKV{batch: func(_ int64, stream shoalpb.KV_BatchCommandsServer) error {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		return stream.Send(&shoalpb.BatchCommandsResponse{Results: []*shoalpb.BatchCommandsResponse_Result{
			{Id: req.Commands[0].Id, Error: shoalpb.CommandStatusOf(want)},
		}})
	}}
	kc := startScripted(t, srv)
	_, err := kc.Put(testCtx(t), &shoalpb.PutRequest{Key: []byte("a"), Value: []byte("v")})
	d := shoalpb.DetailOf(err)
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "not the leader" ||
		d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER || d.GetLeaderId() != 2 || d.GetLeaderAddr() != "127.0.0.2:1" || d.GetShardId() != 7 {
		t.Fatalf("put: %v, detail %v; want %v", err, d, want)
	}
}

// A caller whose context ends stops waiting with the status a unary call
// would end with, and its command leaves the stream's table.
func TestBatchCallerDeadline(t *testing.T) {
	srv := &scriptedKV{batch: func(_ int64, stream shoalpb.KV_BatchCommandsServer) error {
		for { // answers nothing
			if _, err := stream.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}}
	kc := startScripted(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := kc.Get(ctx, &shoalpb.GetRequest{Key: []byte("a")})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("get past its deadline: %v", err)
	}
	kc.b.mu.Lock()
	s := kc.b.stream
	kc.b.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiting) != 0 {
		t.Fatalf("%d commands waiting after their callers left", len(s.waiting))
	}
}

// A command carries its caller's time left, which bounds it on the node;
// one without a deadline carries none (the node's default bound applies).
func TestBatchCarriesDeadline(t *testing.T) {
	got := make(chan int64, 2)
	srv := &scriptedKV{batch: func(_ int64, stream shoalpb.KV_BatchCommandsServer) error {
		return echoGetsNoting(stream, func(c *shoalpb.BatchCommandsRequest_Command) { got <- c.TimeoutMs })
	}}
	kc := startScripted(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := kc.Get(ctx, &shoalpb.GetRequest{Key: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	if ms := <-got; ms <= 4000 || ms > 5000 {
		t.Fatalf("a command with 5 s left carried %d ms", ms)
	}
	if _, err := kc.Get(context.Background(), &shoalpb.GetRequest{Key: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if ms := <-got; ms != 0 {
		t.Fatalf("a command without a deadline carried %d ms", ms)
	}
}

// A node that cannot be reached fails the command as a unary call to it
// would: Unavailable while dialing, which says the request never went
// out (so a write is not ambiguous).
func TestBatchDialFailure(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	kc := dialBatchKV(t, addr)
	_, err = kc.Put(testCtx(t), &shoalpb.PutRequest{Key: []byte("a"), Value: []byte("v")})
	if status.Code(err) != codes.Unavailable || shoalpb.MayBeServed(err) {
		t.Fatalf("put to a closed port: %v; want Unavailable that was not served", err)
	}
}

// A request over maxCommandBatchBytes goes as a unary call, alone, so that
// it meets the message limit as it always did; smaller ones are batched.
func TestBatchLargeRequestGoesUnary(t *testing.T) {
	srv := &scriptedKV{batch: func(_ int64, stream shoalpb.KV_BatchCommandsServer) error { return echoGets(stream) }}
	kc := startScripted(t, srv)
	if _, err := kc.Put(testCtx(t), &shoalpb.PutRequest{Key: []byte("a"), Value: make([]byte, maxCommandBatchBytes)}); err != nil {
		t.Fatal(err)
	}
	if n, m := srv.unaryPuts.Load(), srv.streams.Load(); n != 1 || m != 0 {
		t.Fatalf("%d unary Puts and %d streams, want 1 and none", n, m)
	}
	if resp, err := kc.Get(testCtx(t), &shoalpb.GetRequest{Key: []byte("b")}); err != nil || string(resp.GetValue()) != "b" {
		t.Fatalf("get: %v, %v", resp, err)
	}
	if n, m := srv.unaryGets.Load(), srv.streams.Load(); n != 0 || m != 1 {
		t.Fatalf("%d unary Gets and %d streams, want none and 1", n, m)
	}
}

// The commands queued when the sender looks go out in one message, but
// those whose callers left, and no more than maxCommandBatchBytes; each
// carries its caller's time left as the sender takes it.
func TestBatchTake(t *testing.T) {
	s := &commandStream{waiting: map[uint64]*pendingCommand{}}
	live := context.Background()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	hour, cancelHour := context.WithTimeout(context.Background(), time.Hour)
	defer cancelHour()
	put := func(id uint64, value int) *shoalpb.BatchCommandsRequest_Command {
		return &shoalpb.BatchCommandsRequest_Command{Id: id,
			Request: &shoalpb.BatchCommandsRequest_Command_Put{Put: &shoalpb.PutRequest{Key: []byte("k"), Value: make([]byte, value)}}}
	}
	body := func(cmd *shoalpb.BatchCommandsRequest_Command) []byte {
		b, err := proto.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	add := func(ctx context.Context, cmd *shoalpb.BatchCommandsRequest_Command) {
		s.queue = append(s.queue, &pendingCommand{ctx: ctx, body: body(cmd)})
	}
	add(live, put(1, 10))
	add(gone, put(2, 10))
	add(hour, put(3, 10))
	// 4 is near the largest command call batches: it fits in a message
	// alone, not after 1 and 3; 5 fits after it.
	over := len(body(put(4, maxCommandBatchBytes))) - maxCommandBatchBytes
	add(live, put(4, maxCommandBatchBytes-3*maxFrameHead-over))
	add(live, put(5, 0))
	// decode reads a message as the node does.
	decode := func(msg *encodedCommands) []*shoalpb.BatchCommandsRequest_Command {
		t.Helper()
		var b []byte
		for _, f := range *msg {
			b = append(b, f...)
		}
		if len(b) > maxCommandBatchBytes {
			t.Fatalf("a message of %d bytes, over %d", len(b), maxCommandBatchBytes)
		}
		var req shoalpb.BatchCommandsRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			t.Fatal(err)
		}
		return req.Commands
	}
	first := decode(s.take())
	if len(first) != 2 || first[0].Id != 1 || first[1].Id != 3 || len(first[0].GetPut().GetValue()) != 10 {
		t.Fatalf("first message carries %v, want commands 1 and 3", first)
	}
	if ms := first[1].TimeoutMs; ms < 59*60*1000 || ms > 60*60*1000 {
		t.Fatalf("command 3, with an hour left, carries a timeout of %d ms", ms)
	}
	if ms := first[0].TimeoutMs; ms != 0 {
		t.Fatalf("command 1, without a deadline, carries a timeout of %d ms", ms)
	}
	second := decode(s.take())
	if len(second) != 2 || second[0].Id != 4 || second[1].Id != 5 {
		var ids []uint64
		for _, c := range second {
			ids = append(ids, c.Id)
		}
		t.Fatalf("second message carries commands %v, want 4 and 5", ids)
	}
	if msg := s.take(); msg != nil {
		t.Fatalf("third message %v, want none", msg)
	}
}

// A stream that ends fails the commands it sent as possibly served, and
// those it had not sent with errUnary, so that they go as unary calls
// rather than read as ambiguous; with ErrClosed once the client is
// closing, so that none goes out after Close.
func TestBatchFailSentAndQueued(t *testing.T) {
	closing, closeClient := context.WithCancel(context.Background())
	closeClient()
	for _, tc := range []struct {
		name       string
		client     context.Context
		wantUnsent error
	}{
		{"client open", context.Background(), errUnary},
		{"client closing", closing, ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &batcher{ctx: tc.client}
			s := &commandStream{b: b, waiting: map[uint64]*pendingCommand{}}
			b.stream = s
			sentCmd := &pendingCommand{ctx: context.Background(), done: make(chan struct{})}
			queued := &pendingCommand{ctx: context.Background(), done: make(chan struct{})}
			// As take leaves them: the first sent, the second still queued.
			sentCmd.taken = true
			s.waiting[1], s.waiting[2] = sentCmd, queued
			s.queue = []*pendingCommand{queued}
			broken := status.Error(codes.Unavailable, "stream ended")
			s.fail(broken)
			<-sentCmd.done
			<-queued.done
			if sentCmd.err != broken || !shoalpb.MayBeServed(sentCmd.err) {
				t.Fatalf("a sent command got %v", sentCmd.err)
			}
			if !errors.Is(queued.err, tc.wantUnsent) {
				t.Fatalf("a command never sent got %v, want %v", queued.err, tc.wantUnsent)
			}
			if b.stream != nil || len(s.queue) != 0 || len(s.waiting) != 0 {
				t.Fatalf("after fail: stream %v, %d queued, %d waiting", b.stream, len(s.queue), len(s.waiting))
			}
		})
	}
}
