package shoalpb

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMayBeServed(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp: connection refused\""), false},
		{status.Error(codes.Unavailable, "error reading from server: EOF"), true},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), true},
		{status.Error(codes.Canceled, "context canceled"), true},
		{status.Error(codes.Internal, "stream terminated by RST_STREAM"), true},
		// A request over the server's limit, never run, and an answer over
		// the caller's read alike; the first is the common one.
		{status.Error(codes.ResourceExhausted, "grpc: received message larger than max (9000000 vs. 4194304)"), false},
		{status.Error(codes.ResourceExhausted, "grpc: trying to send message larger than max (9000000 vs. 4194304)"), false},
		{status.Error(codes.InvalidArgument, "bad"), false},
	} {
		if got := MayBeServed(tc.err); got != tc.want {
			t.Errorf("MayBeServed(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
