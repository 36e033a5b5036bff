package resp

import "testing"

// TestHeldBytes checks what a connection counts against MaxPipelinedBytes:
// the arguments of every pipelined command, and the replies of those that
// finished (a running command's reply is not known yet).
func TestHeldBytes(t *testing.T) {
	running := &pipelined{size: 100, reply: 0, done: make(chan struct{})}
	done := &pipelined{size: 10, reply: 5000, done: make(chan struct{})}
	close(done.done)
	c := &conn{inflight: []*pipelined{running, done}, inflightBytes: 110}
	if got := c.heldBytes(); got != 5110 {
		t.Fatalf("heldBytes = %d, want 5110", got)
	}
	running.reply = 7 // set by the command just before it finishes
	close(running.done)
	if got := c.heldBytes(); got != 5117 {
		t.Fatalf("heldBytes = %d, want 5117", got)
	}
}
