package client

import (
	"testing"
	"time"
)

// TestAttemptForLargeRequests checks that a large request's attempt gets
// the attempt timeout again per MiB, so that a write still being
// replicated is not given up on and sent again.
func TestAttemptForLargeRequests(t *testing.T) {
	o := options{attemptTimeout: time.Second}
	for _, tt := range []struct {
		size int
		want time.Duration
	}{
		{0, time.Second},
		{100, time.Second + 95367*time.Nanosecond},
		{1 << 20, 2 * time.Second},
		{6 << 20, 7 * time.Second},
	} {
		if got := o.attemptFor(tt.size); got != tt.want {
			t.Errorf("attemptFor(%d) = %v, want %v", tt.size, got, tt.want)
		}
	}
	if got := (&options{}).attemptFor(6 << 20); got != 0 {
		t.Errorf("attemptFor with no attempt timeout = %v, want 0 (none)", got)
	}
}
