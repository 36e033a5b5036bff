package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// maxCommandBatchBytes bounds one BatchCommands message: the requests
// waiting when the stream is free to send go in one message up to this
// size. A larger request goes as a unary call, so that it meets the
// message limit (MaxMessageBytes, or the caller's dial options) and its
// error as it always did, alone.
const maxCommandBatchBytes = 1 << 20

// errUnary says a command goes as a unary call: the node does not serve
// KV.BatchCommands (an older version), or the command is over
// maxCommandBatchBytes. Nothing was sent.
var errUnary = errors.New("shoal: request goes unary")

// batchKV is the KVClient of one node that sends Get, MultiGet, Put,
// Delete, CompareAndSet, Incr and Batch over the node's BatchCommands
// stream: requests in flight together share its messages, where unary
// calls would each cost an HTTP/2 stream (headers, data and trailers both
// ways, and the work of each in gRPC). Scan, requests over
// maxCommandBatchBytes, those a stream that ended had not sent, and every
// call to a node that does not serve the stream go as unary calls. Each
// method returns
// what the unary call would: the node's response, or an error with the
// same status code, message and detail.
type batchKV struct {
	shoalpb.KVClient
	b *batcher
}

func (k batchKV) Get(ctx context.Context, in *shoalpb.GetRequest, opts ...grpc.CallOption) (*shoalpb.GetResponse, error) {
	r, err := k.b.call(ctx, &shoalpb.BatchCommandsRequest_Command{Request: &shoalpb.BatchCommandsRequest_Command_Get{Get: in}})
	if errors.Is(err, errUnary) {
		return k.KVClient.Get(ctx, in, opts...)
	}
	return result(r, err, r.GetGet())
}

func (k batchKV) MultiGet(ctx context.Context, in *shoalpb.MultiGetRequest, opts ...grpc.CallOption) (*shoalpb.MultiGetResponse, error) {
	r, err := k.b.call(ctx, &shoalpb.BatchCommandsRequest_Command{Request: &shoalpb.BatchCommandsRequest_Command_MultiGet{MultiGet: in}})
	if errors.Is(err, errUnary) {
		return k.KVClient.MultiGet(ctx, in, opts...)
	}
	return result(r, err, r.GetMultiGet())
}

func (k batchKV) Put(ctx context.Context, in *shoalpb.PutRequest, opts ...grpc.CallOption) (*shoalpb.PutResponse, error) {
	r, err := k.b.call(ctx, &shoalpb.BatchCommandsRequest_Command{Request: &shoalpb.BatchCommandsRequest_Command_Put{Put: in}})
	if errors.Is(err, errUnary) {
		return k.KVClient.Put(ctx, in, opts...)
	}
	return result(r, err, r.GetPut())
}

func (k batchKV) Delete(ctx context.Context, in *shoalpb.DeleteRequest, opts ...grpc.CallOption) (*shoalpb.DeleteResponse, error) {
	r, err := k.b.call(ctx, &shoalpb.BatchCommandsRequest_Command{Request: &shoalpb.BatchCommandsRequest_Command_Delete{Delete: in}})
	if errors.Is(err, errUnary) {
		return k.KVClient.Delete(ctx, in, opts...)
	}
	return result(r, err, r.GetDelete())
}

func (k batchKV) CompareAndSet(ctx context.Context, in *shoalpb.CompareAndSetRequest, opts ...grpc.CallOption) (*shoalpb.CompareAndSetResponse, error) {
	r, err := k.b.call(ctx, &shoalpb.BatchCommandsRequest_Command{Request: &shoalpb.BatchCommandsRequest_Command_CompareAndSet{CompareAndSet: in}})
	if errors.Is(err, errUnary) {
		return k.KVClient.CompareAndSet(ctx, in, opts...)
	}
	return result(r, err, r.GetCompareAndSet())
}

func (k batchKV) Incr(ctx context.Context, in *shoalpb.IncrRequest, opts ...grpc.CallOption) (*shoalpb.IncrResponse, error) {
	r, err := k.b.call(ctx, &shoalpb.BatchCommandsRequest_Command{Request: &shoalpb.BatchCommandsRequest_Command_Incr{Incr: in}})
	if errors.Is(err, errUnary) {
		return k.KVClient.Incr(ctx, in, opts...)
	}
	return result(r, err, r.GetIncr())
}

func (k batchKV) Batch(ctx context.Context, in *shoalpb.BatchRequest, opts ...grpc.CallOption) (*shoalpb.BatchResponse, error) {
	r, err := k.b.call(ctx, &shoalpb.BatchCommandsRequest_Command{Request: &shoalpb.BatchCommandsRequest_Command_Batch{Batch: in}})
	if errors.Is(err, errUnary) {
		return k.KVClient.Batch(ctx, in, opts...)
	}
	return result(r, err, r.GetBatch())
}

// result is a command's response of type R, or its error.
func result[R proto.Message](r *shoalpb.BatchCommandsResponse_Result, err error, resp R) (R, error) {
	var zero R
	switch {
	case err != nil:
		return zero, err
	case r.GetError() != nil:
		return zero, r.GetError().Err()
	case !resp.ProtoReflect().IsValid():
		return zero, status.Errorf(codes.Internal, "BatchCommands: result %d carries no %s", r.GetId(), resp.ProtoReflect().Descriptor().Name())
	}
	return resp, nil
}

// batcher sends one node's commands over a BatchCommands stream, opened at
// the first command and again after the stream breaks.
type batcher struct {
	kc   shoalpb.KVClient
	addr string
	// ctx ends with the Client or at close (cancel), and with it every
	// stream.
	ctx    context.Context
	cancel context.CancelFunc
	// nextID names the batcher's commands.
	nextID atomic.Uint64

	mu     sync.Mutex
	stream *commandStream
	// unaryUntil is set when the node said it does not serve
	// BatchCommands: until then commands go unary, then the stream is
	// tried again (the node may have been upgraded).
	unaryUntil time.Time
	closed     bool
	// streams counts the streams' goroutines, for close.
	streams sync.WaitGroup
}

// retryBatchingAfter is how long a node that does not serve BatchCommands
// gets unary calls before the stream is tried again.
const retryBatchingAfter = time.Minute

// commandStream is one BatchCommands stream: commands queue until its
// sender takes them, results go to the commands' waiters by id.
type commandStream struct {
	b *batcher
	// wake has a token when queue has commands for the sender.
	wake chan struct{}

	mu      sync.Mutex
	queue   []*pendingCommand
	waiting map[uint64]*pendingCommand
	// peak is the most commands waiting at once since waiting was made:
	// a Go map keeps its size after a burst, so once the burst is over
	// (none waiting) a map grown past shrinkWaitingAt is made again.
	peak int
	// err is set once the stream has broken: no command is taken after.
	err error
}

// pendingCommand is a command between its caller and its result. It holds
// the command encoded (by the caller, before it queued it), so that
// nothing the caller owns is read after call returns: a caller that gives
// up may reuse its request and buffers at once, as after a unary call.
type pendingCommand struct {
	ctx context.Context
	// body is the command in protobuf's wire format, without its
	// timeout_ms: the sender adds that, from ctx's deadline at the time
	// it sends, in front of body as the frame's head (fields may come in
	// any order), with the frame's tag and length.
	body []byte
	// taken is set when the sender took the command for a message: from
	// then on it may have reached the node.
	taken bool
	done  chan struct{}
	res   *shoalpb.BatchCommandsResponse_Result
	err   error
}

// call sends cmd and waits for its result, or for ctx to end (then it
// returns the status a unary call would: DeadlineExceeded or Canceled).
// It returns errUnary, having sent nothing, for a command the caller
// should send as a unary call.
func (b *batcher) call(ctx context.Context, cmd *shoalpb.BatchCommandsRequest_Command) (*shoalpb.BatchCommandsResponse_Result, error) {
	cmd.Id = b.nextID.Add(1)
	body, err := proto.MarshalOptions{}.Marshal(cmd)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "BatchCommands: encoding a command: %v", err)
	}
	if len(body)+maxFrameHead > maxCommandBatchBytes {
		return nil, errUnary
	}
	p := &pendingCommand{ctx: ctx, body: body, done: make(chan struct{})}
	b.mu.Lock()
	if b.closed || b.ctx.Err() != nil {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	if !b.unaryUntil.IsZero() {
		if time.Now().Before(b.unaryUntil) {
			b.mu.Unlock()
			return nil, errUnary
		}
		b.unaryUntil = time.Time{}
	}
	s := b.stream
	if s != nil {
		s.mu.Lock()
		if s.err != nil {
			// Broken, and not yet replaced (fail takes b.mu after
			// setting err): a new stream takes the command, which must
			// not get the old stream's error, as if it had gone out.
			s.mu.Unlock()
			s = nil
		}
	}
	if s == nil {
		s = &commandStream{b: b, wake: make(chan struct{}, 1), waiting: map[uint64]*pendingCommand{}}
		b.stream = s
		b.streams.Add(1)
		s.mu.Lock()
		go s.run()
	}
	s.queue = append(s.queue, p)
	s.await(cmd.Id, p)
	s.mu.Unlock()
	b.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
		s.mu.Lock()
		if _, ok := s.waiting[cmd.Id]; !ok {
			// Its result, or the stream's end, came as the caller gave
			// up (p.done is closed): that stands, but a command the
			// stream did not send is not sent unary now.
			s.mu.Unlock()
			if errors.Is(p.err, errUnary) {
				return nil, fmt.Errorf("%w: %w", errNotSent, status.FromContextError(ctx.Err()).Err())
			}
			return p.res, p.err
		}
		s.forget(cmd.Id)
		taken := p.taken
		if !taken {
			s.unqueue(p)
		}
		s.mu.Unlock()
		err := status.FromContextError(ctx.Err()).Err()
		if !taken {
			return nil, fmt.Errorf("%w: %w", errNotSent, err)
		}
		return nil, err
	}
}

// errNotSent wraps the error of a command whose caller gave up while it
// was still queued: it never went out.
var errNotSent = errors.New("shoal: request not sent")

// unqueue drops p, which the sender has not taken, from the queue; s.mu
// is held. A caller that gives up takes its command out at once, so that
// a sender stalled on a node (a full flow-control window, a stream still
// opening) does not keep every abandoned command's body meanwhile.
func (s *commandStream) unqueue(p *pendingCommand) {
	if i := slices.Index(s.queue, p); i >= 0 {
		s.queue = slices.Delete(s.queue, i, i+1)
	}
}

// maxFrameHead bounds a frame's head: its tag and length (1 and up to 5
// bytes) and the timeout_ms field (1 and up to 10).
const maxFrameHead = 16

// appendFrameHead appends the head of body's frame in a
// BatchCommandsRequest to buf: the field's tag and length, then the
// command's timeout_ms field (none when timeoutMs is 0); body follows it.
func appendFrameHead(buf []byte, body []byte, timeoutMs int64) []byte {
	var tm int
	if timeoutMs > 0 {
		tm = 1 + protowire.SizeVarint(uint64(timeoutMs))
	}
	buf = protowire.AppendTag(buf, 1, protowire.BytesType)
	buf = protowire.AppendVarint(buf, uint64(tm+len(body)))
	if timeoutMs > 0 {
		buf = protowire.AppendTag(buf, 2, protowire.VarintType)
		buf = protowire.AppendVarint(buf, uint64(timeoutMs))
	}
	return buf
}

// close ends the batcher's streams and waits for their goroutines.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	if b.cancel != nil {
		b.cancel()
	}
	b.streams.Wait()
}

// encodedCommands is a BatchCommandsRequest in protobuf's wire format: the
// frames of its commands (each a head and a body), which batchCodec sends
// as they are.
type encodedCommands [][]byte

// batchCodec sends encodedCommands as they are, and everything else (the
// responses) through gRPC's proto codec.
type batchCodec struct{ proto encoding.CodecV2 }

func (batchCodec) Name() string { return grpcproto.Name }

func (c batchCodec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*encodedCommands); ok {
		out := make(mem.BufferSlice, len(*e))
		for i, f := range *e {
			out[i] = mem.SliceBuffer(f)
		}
		return out, nil
	}
	return c.proto.Marshal(v)
}

func (c batchCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// run opens the stream, then sends queued commands until it breaks; a
// receiver delivers the results.
func (s *commandStream) run() {
	defer s.b.streams.Done()
	ctx, cancel := context.WithCancel(s.b.ctx)
	defer cancel()
	// The stream's messages are bounded here, not by the caller's dial
	// options: a result over a smaller limit would end the stream for
	// every command on it, where a unary call fails alone.
	stream, err := s.b.kc.BatchCommands(ctx, grpc.ForceCodecV2(batchCodec{encoding.GetCodecV2(grpcproto.Name)}),
		grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes))
	if err != nil {
		// Nothing went out: every command goes unary, and meets the
		// dial failure (or not) as a unary call would.
		s.fail(errUnary)
		return
	}
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		s.receive(stream)
	}()
	for {
		select {
		case <-s.wake:
		case <-recvDone:
			return
		}
		for {
			msg := s.take()
			if msg == nil {
				break
			}
			if err := stream.SendMsg(msg); err != nil {
				// The receiver learns why from Recv, and fails every
				// command waiting.
				cancel()
				<-recvDone
				return
			}
		}
	}
}

// take returns the next message of queued commands, at most
// maxCommandBatchBytes (nil when none is queued), dropping those whose
// callers gave up before they went out. Each command carries its caller's
// time left as of now.
func (s *commandStream) take() *encodedCommands {
	s.mu.Lock()
	defer s.mu.Unlock()
	var msg encodedCommands
	var heads []byte
	size := 0
	n := 0
	now := time.Now()
	for ; n < len(s.queue); n++ {
		p := s.queue[n]
		if p.ctx.Err() != nil {
			continue
		}
		if len(msg) > 0 && size+maxFrameHead+len(p.body) > maxCommandBatchBytes {
			break
		}
		if heads == nil {
			heads = make([]byte, 0, maxFrameHead*(len(s.queue)-n))
		}
		var timeoutMs int64
		if d, ok := p.ctx.Deadline(); ok {
			timeoutMs = max(1, d.Sub(now).Milliseconds())
		}
		at := len(heads)
		heads = appendFrameHead(heads, p.body, timeoutMs)
		p.taken = true
		msg = append(msg, heads[at:len(heads):len(heads)], p.body)
		size += len(heads) - at + len(p.body)
	}
	clear(s.queue[:n])
	s.queue = s.queue[n:]
	if len(s.queue) == 0 {
		s.queue = nil
	}
	if len(msg) == 0 {
		return nil
	}
	return &msg
}

// receive delivers results until the stream ends, then fails the commands
// still waiting.
func (s *commandStream) receive(stream shoalpb.KV_BatchCommandsClient) {
	for {
		resp, err := stream.Recv()
		if err != nil {
			if status.Code(err) == codes.Unimplemented {
				// The node ran none of them.
				s.b.mu.Lock()
				s.b.unaryUntil = time.Now().Add(retryBatchingAfter)
				s.b.mu.Unlock()
				s.fail(errUnary)
				return
			}
			// The commands sent may have been served: Unavailable
			// without "while dialing" says so (shoalpb.MayBeServed).
			s.fail(status.Errorf(codes.Unavailable, "BatchCommands stream to %s ended: %v", s.b.addr, err))
			return
		}
		s.mu.Lock()
		for _, r := range resp.Results {
			if p := s.waiting[r.GetId()]; p != nil {
				s.forget(r.GetId())
				p.res = r
				close(p.done)
			}
		}
		s.mu.Unlock()
	}
}

// shrinkWaitingAt is the peak of commands waiting on a stream beyond which
// its map is made again once none waits (commandStream.peak).
const shrinkWaitingAt = 1024

// await adds p, command id, to those waiting; s.mu is held.
func (s *commandStream) await(id uint64, p *pendingCommand) {
	s.waiting[id] = p
	s.peak = max(s.peak, len(s.waiting))
}

// forget drops command id from those waiting; s.mu is held.
func (s *commandStream) forget(id uint64) {
	delete(s.waiting, id)
	if len(s.waiting) == 0 && s.peak > shrinkWaitingAt {
		s.waiting, s.peak = map[uint64]*pendingCommand{}, 0
	}
}

// fail ends the stream: every command waiting that the sender took gets
// sent, the others (never sent) errUnary, or ErrClosed once the batcher is
// closing (the client closes, or no longer has the node in its table), and
// the next command opens a new stream.
func (s *commandStream) fail(sent error) {
	// Commands not sent go unary, unless the client is closing: then they
	// end with ErrClosed rather than go out, unary, after Close.
	unsent := errUnary
	if s.b.ctx.Err() != nil {
		unsent = ErrClosed
	}
	s.mu.Lock()
	s.err = sent
	for id, p := range s.waiting {
		delete(s.waiting, id)
		p.err = unsent
		if p.taken {
			p.err = sent
		}
		close(p.done)
	}
	s.queue = nil
	s.mu.Unlock()
	s.b.mu.Lock()
	if s.b.stream == s {
		s.b.stream = nil
	}
	s.b.mu.Unlock()
}
