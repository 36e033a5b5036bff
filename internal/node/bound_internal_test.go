package node

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// A key-value request that came without a deadline gets one; one with a
// deadline keeps it, and other services are left alone.
func TestBoundKVRequests(t *testing.T) {
	deadlineOf := func(ctx context.Context, method string) (time.Time, bool) {
		var d time.Time
		var ok bool
		_, _ = boundKVRequests(ctx, nil, &grpc.UnaryServerInfo{FullMethod: method}, func(ctx context.Context, _ any) (any, error) {
			d, ok = ctx.Deadline()
			return nil, nil
		})
		return d, ok
	}
	start := time.Now()
	if d, ok := deadlineOf(context.Background(), shoalpb.KV_Put_FullMethodName); !ok || d.Before(start.Add(maxKVRequestTime)) || d.After(time.Now().Add(maxKVRequestTime)) {
		t.Fatalf("KV request without a deadline: deadline %v (%v), want %v from now", d, ok, maxKVRequestTime)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	want, _ := ctx.Deadline()
	if d, ok := deadlineOf(ctx, shoalpb.KV_Get_FullMethodName); !ok || !d.Equal(want) {
		t.Fatalf("KV request with a deadline: %v, want its own %v", d, want)
	}
	if _, ok := deadlineOf(context.Background(), shoalpb.NodeAdmin_RunStep_FullMethodName); ok {
		t.Fatal("an admin request was given a deadline")
	}
}

// A forwarded request's failure: the leader's answer passes as it is, but
// for WRONG_CLUSTER (this node's table is behind); no answer is
// UNAVAILABLE or TIMEOUT, ambiguous only for a write that may have been
// received.
func TestForwardError(t *testing.T) {
	wrong := shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER}, "other cluster")
	notLeader := shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, Ambiguous: true}, "moved")
	for _, tt := range []struct {
		name      string
		err       error
		write     bool
		code      shoalpb.ErrorCode
		ambiguous bool
	}{
		{"another cluster's node", wrong, true, shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE, false},
		{"the leader's answer", notLeader, true, shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, true},
		{"no connection", status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: refused\""), true, shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE, false},
		{"connection broke, write", status.Error(codes.Unavailable, "transport is closing"), true, shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE, true},
		{"connection broke, read", status.Error(codes.Unavailable, "transport is closing"), false, shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE, false},
		{"deadline, write", status.Error(codes.DeadlineExceeded, "deadline"), true, shoalpb.ErrorCode_ERROR_CODE_TIMEOUT, true},
	} {
		d := shoalpb.DetailOf(forwardError(tt.err, tt.write))
		if d.GetCode() != tt.code || d.GetAmbiguous() != tt.ambiguous {
			t.Errorf("%s: code %v ambiguous %v, want %v %v", tt.name, d.GetCode(), d.GetAmbiguous(), tt.code, tt.ambiguous)
		}
	}
	if forwardError(nil, true) != nil {
		t.Error("no error became one")
	}
}
