package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/transport"
)

// maxStreamCommands bounds the commands of one BatchCommands stream that
// run at once; one more is answered OVERLOADED.
const maxStreamCommands = 4096

// maxResultBatchBytes bounds a BatchCommands response: results that
// finished together go in one message up to this size; a larger result
// goes alone.
const maxResultBatchBytes = 1 << 20

// maxResultBytes is the largest result a response carries: the message
// limit, less room for the response around it. A larger one is answered
// RESOURCE_EXHAUSTED, as gRPC fails a unary answer over the limit.
const maxResultBytes = transport.MaxMessageBytes - 1<<10

type commandResult = shoalpb.BatchCommandsResponse_Result

// maxIdleCommandWorkers bounds the goroutines a node keeps waiting for the
// next command of any BatchCommands stream; one that finishes a command
// with as many waiting already ends.
const maxIdleCommandWorkers = 256

// commandWorkers are the goroutines that run BatchCommands' commands, for
// every stream of the node. One that finishes a command waits for the
// next (up to maxIdleCommandWorkers of them), rather than each command
// getting a new goroutine: a new goroutine's stack grows through the
// whole call path of a request, which cost 9% of a node's CPU under reads
// when every command had one.
type commandWorkers struct {
	work      chan commandJob
	idle      atomic.Int32
	closeOnce sync.Once
}

func newCommandWorkers() *commandWorkers { return &commandWorkers{work: make(chan commandJob)} }

// commandJob is one command of a stream.
type commandJob struct {
	ctx context.Context
	cmd *shoalpb.BatchCommandsRequest_Command
	run *streamRun
}

// streamRun is what a stream's commands share: where their results go, the
// slots that bound how many run, and the count of those running.
type streamRun struct {
	results chan *commandResult
	slots   chan struct{}
	running sync.WaitGroup
}

// start runs j on an idle worker, or on a new one.
func (w *commandWorkers) start(s *kvService, j commandJob) {
	select {
	case w.work <- j:
	default:
		go w.loop(s, j)
	}
}

func (w *commandWorkers) loop(s *kvService, j commandJob) {
	for {
		j.run.results <- s.runCommand(j.ctx, j.cmd)
		<-j.run.slots
		j.run.running.Done()
		if w.idle.Add(1) > maxIdleCommandWorkers {
			w.idle.Add(-1)
			return
		}
		var ok bool
		j, ok = <-w.work
		w.idle.Add(-1)
		if !ok {
			return
		}
	}
}

// close ends the idle workers. No stream may start commands after: the
// node closes them once its server has stopped, and with it every
// BatchCommands handler.
func (w *commandWorkers) close() { w.closeOnce.Do(func() { close(w.work) }) }

// BatchCommands implements shoalpb.KVServer: each command runs on a
// goroutine of its own (commandWorkers) through the unary method it names,
// so it is routed, forwarded, bounded and answered exactly as that call
// would be, and its result goes back as soon as it is ready, with any
// others ready by then. A command beyond maxStreamCommands running on the
// stream is answered OVERLOADED at once (the client backs off and retries),
// so that commands stuck on one shard (say, one without a quorum) do not
// hold up the stream's commands for other shards. It returns once the
// client ends the stream (or the connection ends) and every command it
// started has finished: Stop relies on that (WaitForHandlers) before it
// closes what the commands use.
func (s *kvService) BatchCommands(stream shoalpb.KV_BatchCommandsServer) error {
	ctx := stream.Context()
	run := &streamRun{results: make(chan *commandResult, 256), slots: make(chan struct{}, s.streamCommands)}
	sent := make(chan error, 1)
	go func() { sent <- sendResults(stream, run.results) }()
	var recvErr error
	for {
		req, err := stream.Recv()
		if err != nil {
			recvErr = err
			break
		}
		for _, cmd := range req.Commands {
			select {
			case run.slots <- struct{}{}:
			default:
				err := shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_OVERLOADED},
					fmt.Sprintf("node %d: %d commands of this stream running already", s.n.cfg.NodeID, s.streamCommands))
				s.observe(commandMethod(cmd), err, 0)
				run.results <- &commandResult{Id: cmd.GetId(), Error: shoalpb.CommandStatusOf(err)}
				continue
			}
			run.running.Add(1)
			s.workers.start(s, commandJob{ctx: ctx, cmd: cmd, run: run})
		}
	}
	run.running.Wait()
	close(run.results)
	sendErr := <-sent
	if errors.Is(recvErr, io.EOF) {
		return sendErr
	}
	return recvErr
}

// isWriteResult reports whether r answers a write.
func isWriteResult(r *commandResult) bool {
	switch r.GetResponse().(type) {
	case *shoalpb.BatchCommandsResponse_Result_Get, *shoalpb.BatchCommandsResponse_Result_MultiGet:
		return false
	}
	return r.GetResponse() != nil
}

// sendResults sends what the commands return, batching those that are
// ready together, until results is closed. A failed send ends the stream
// (gRPC sends the client its status, and Recv fails), so after one it only
// drains results, so that no command waits on it, and returns the error.
func sendResults(stream shoalpb.KV_BatchCommandsServer, results <-chan *commandResult) error {
	var failed error
	var next *commandResult
	nextSize := 0
	take := func(r *commandResult) {
		next, nextSize = r, proto.Size(r)
		if nextSize > maxResultBytes {
			msg := fmt.Sprintf("BatchCommands: the result is %d bytes, over the limit of %d", nextSize, maxResultBytes)
			err := status.Error(codes.ResourceExhausted, msg)
			if isWriteResult(r) {
				// The write was applied; only its answer is lost.
				err = shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_TOO_LARGE, Ambiguous: true}, msg)
			}
			next = &commandResult{Id: r.Id, Error: shoalpb.CommandStatusOf(err)}
			nextSize = proto.Size(next)
		}
	}
	for r := range results {
		if failed != nil {
			continue
		}
		take(r)
		for next != nil && failed == nil {
			resp := &shoalpb.BatchCommandsResponse{Results: []*commandResult{next}}
			size := nextSize
			next = nil
		more:
			for {
				select {
				case r, ok := <-results:
					if !ok {
						break more
					}
					if take(r); size+nextSize > maxResultBatchBytes {
						break more // next goes in the following message
					}
					resp.Results = append(resp.Results, next)
					size += nextSize
					next = nil
				default:
					break more
				}
			}
			failed = stream.Send(resp)
		}
	}
	return failed
}

// runCommand runs one command through its unary method, with the caller's
// time left (or maxKVRequestTime, as boundKVRequests gives a unary call
// without a deadline), and records it as that method.
func (s *kvService) runCommand(ctx context.Context, cmd *shoalpb.BatchCommandsRequest_Command) *commandResult {
	timeout := maxKVRequestTime
	if ms := cmd.GetTimeoutMs(); ms > 0 && ms < int64(maxKVRequestTime/time.Millisecond) {
		// Longer ones get maxKVRequestTime, as a unary call does (and
		// one past 292 years would wrap).
		timeout = time.Duration(ms) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	res := &commandResult{Id: cmd.GetId()}
	var err error
	switch r := cmd.GetRequest().(type) {
	case *shoalpb.BatchCommandsRequest_Command_Get:
		var resp *shoalpb.GetResponse
		if resp, err = s.Get(ctx, r.Get); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Get{Get: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_MultiGet:
		var resp *shoalpb.MultiGetResponse
		if resp, err = s.MultiGet(ctx, r.MultiGet); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_MultiGet{MultiGet: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_Put:
		var resp *shoalpb.PutResponse
		if resp, err = s.Put(ctx, r.Put); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Put{Put: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_Delete:
		var resp *shoalpb.DeleteResponse
		if resp, err = s.Delete(ctx, r.Delete); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Delete{Delete: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_CompareAndSet:
		var resp *shoalpb.CompareAndSetResponse
		if resp, err = s.CompareAndSet(ctx, r.CompareAndSet); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_CompareAndSet{CompareAndSet: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_Incr:
		var resp *shoalpb.IncrResponse
		if resp, err = s.Incr(ctx, r.Incr); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Incr{Incr: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_Batch:
		var resp *shoalpb.BatchResponse
		if resp, err = s.Batch(ctx, r.Batch); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Batch{Batch: resp}
		}
	default:
		err = shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_INVALID},
			"BatchCommands: a command without a request, or of a kind this node does not know")
	}
	if err != nil {
		// A handler's plain error reads as Unknown, as gRPC would send it.
		res.Error = shoalpb.CommandStatusOf(err)
	}
	s.observe(commandMethod(cmd), err, time.Since(start))
	return res
}

// observe records a command in the request metrics, as its unary method.
func (s *kvService) observe(method string, err error, d time.Duration) {
	if s.metrics != nil {
		s.metrics.Observe(method, err, d)
	}
}

// commandMethod is the unary method a command names, for the metrics.
func commandMethod(cmd *shoalpb.BatchCommandsRequest_Command) string {
	switch cmd.GetRequest().(type) {
	case *shoalpb.BatchCommandsRequest_Command_Get:
		return "Get"
	case *shoalpb.BatchCommandsRequest_Command_MultiGet:
		return "MultiGet"
	case *shoalpb.BatchCommandsRequest_Command_Put:
		return "Put"
	case *shoalpb.BatchCommandsRequest_Command_Delete:
		return "Delete"
	case *shoalpb.BatchCommandsRequest_Command_CompareAndSet:
		return "CompareAndSet"
	case *shoalpb.BatchCommandsRequest_Command_Incr:
		return "Incr"
	case *shoalpb.BatchCommandsRequest_Command_Batch:
		return "Batch"
	}
	return "BatchCommands"
}
