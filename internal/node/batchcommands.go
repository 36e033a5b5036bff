package node

import (
	"context"
	"errors"
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
// run at once; the stream reads no more until one finishes, and gRPC's
// flow control then holds the client back.
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

// maxIdleCommandWorkers bounds the goroutines a BatchCommands stream keeps
// waiting for its next command; one that finishes a command with as many
// waiting already ends.
const maxIdleCommandWorkers = 64

// BatchCommands implements shoalpb.KVServer: each command runs on a
// goroutine of its own through the unary method it names, so it is
// routed, forwarded, bounded and answered exactly as that call would be,
// and its result goes back as soon as it is ready, with any others ready
// by then. The goroutines wait for the stream's next commands once done
// (up to maxIdleCommandWorkers of them): a new goroutine's stack grows
// through the whole call path of a request, which cost 9% of a node's CPU
// under reads when every command had a new one. It returns once the
// client ends the stream (or the connection ends) and every command it
// started has finished: Stop relies on that (WaitForHandlers) before it
// closes what the commands use.
func (s *kvService) BatchCommands(stream shoalpb.KV_BatchCommandsServer) error {
	ctx := stream.Context()
	results := make(chan *commandResult, 256)
	sent := make(chan error, 1)
	go func() { sent <- sendResults(stream, results) }()
	slots := make(chan struct{}, maxStreamCommands)
	work := make(chan *shoalpb.BatchCommandsRequest_Command)
	var idle atomic.Int32
	var running sync.WaitGroup
	worker := func(cmd *shoalpb.BatchCommandsRequest_Command) {
		defer running.Done()
		for ok := true; ok; {
			results <- s.runCommand(ctx, cmd)
			<-slots
			if idle.Add(1) > maxIdleCommandWorkers {
				idle.Add(-1)
				return
			}
			cmd, ok = <-work
			idle.Add(-1)
		}
	}
	var recvErr error
	for {
		req, err := stream.Recv()
		if err != nil {
			recvErr = err
			break
		}
		for _, cmd := range req.Commands {
			slots <- struct{}{}
			select {
			case work <- cmd:
			default:
				running.Add(1)
				go worker(cmd)
			}
		}
	}
	close(work)
	running.Wait()
	close(results)
	sendErr := <-sent
	if errors.Is(recvErr, io.EOF) {
		return sendErr
	}
	return recvErr
}

// sendResults sends what the commands return, batching those that are
// ready together, until results is closed. After a failed send it only
// drains results, so that no command waits on it, and returns the error.
func sendResults(stream shoalpb.KV_BatchCommandsServer, results <-chan *commandResult) error {
	var failed error
	var next *commandResult
	nextSize := 0
	take := func(r *commandResult) {
		next, nextSize = r, proto.Size(r)
		if nextSize > maxResultBytes {
			next = &commandResult{Id: r.Id, Error: shoalpb.CommandStatusOf(status.Errorf(codes.ResourceExhausted,
				"BatchCommands: the result is %d bytes, over the limit of %d", nextSize, maxResultBytes))}
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
	if ms := cmd.GetTimeoutMs(); ms > 0 {
		timeout = time.Duration(ms) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	res := &commandResult{Id: cmd.GetId()}
	var method string
	var err error
	switch r := cmd.GetRequest().(type) {
	case *shoalpb.BatchCommandsRequest_Command_Get:
		method = "Get"
		var resp *shoalpb.GetResponse
		if resp, err = s.Get(ctx, r.Get); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Get{Get: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_MultiGet:
		method = "MultiGet"
		var resp *shoalpb.MultiGetResponse
		if resp, err = s.MultiGet(ctx, r.MultiGet); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_MultiGet{MultiGet: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_Put:
		method = "Put"
		var resp *shoalpb.PutResponse
		if resp, err = s.Put(ctx, r.Put); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Put{Put: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_Delete:
		method = "Delete"
		var resp *shoalpb.DeleteResponse
		if resp, err = s.Delete(ctx, r.Delete); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Delete{Delete: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_CompareAndSet:
		method = "CompareAndSet"
		var resp *shoalpb.CompareAndSetResponse
		if resp, err = s.CompareAndSet(ctx, r.CompareAndSet); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_CompareAndSet{CompareAndSet: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_Incr:
		method = "Incr"
		var resp *shoalpb.IncrResponse
		if resp, err = s.Incr(ctx, r.Incr); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Incr{Incr: resp}
		}
	case *shoalpb.BatchCommandsRequest_Command_Batch:
		method = "Batch"
		var resp *shoalpb.BatchResponse
		if resp, err = s.Batch(ctx, r.Batch); err == nil {
			res.Response = &shoalpb.BatchCommandsResponse_Result_Batch{Batch: resp}
		}
	default:
		method = "BatchCommands"
		err = shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_INVALID},
			"BatchCommands: a command without a request, or of a kind this node does not know")
	}
	if err != nil {
		// A handler's plain error reads as Unknown, as gRPC would send it.
		res.Error = shoalpb.CommandStatusOf(err)
	}
	if s.metrics != nil {
		s.metrics.Observe(method, err, time.Since(start))
	}
	return res
}
