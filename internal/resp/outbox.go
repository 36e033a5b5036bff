package resp

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
)

// outbox is where a connection's replies go on their way to the client. It
// keeps the connection reading commands while the client is not reading
// replies: a client may send a whole pipeline before it reads any reply
// (go-redis's Pipeline does), and if the connection stopped reading
// whenever the socket could take no more replies, such a pipeline larger
// than the two sockets' buffers would stall both sides until one timed out.
// Redis avoids this by buffering replies; so does the outbox.
//
// A write goes straight to the socket, without blocking, when nothing is
// queued; what the socket does not take is queued and written by a
// goroutine of its own, started then and gone once the queue is empty. So
// a client that reads its replies costs no goroutine switch per reply.
//
// INVARIANT: bytes reach the socket in the order Write was given them:
// Write writes directly only while no sender runs, and only the
// connection's goroutine calls Write, so only it starts a sender.
type outbox struct {
	nc  net.Conn
	raw syscall.RawConn // nil: every write goes through the sender
	// limit is how many queued bytes make Write wait for the client to
	// read: Options.MaxReplyBacklog, or unauthBacklog before AUTH. Only
	// the connection's goroutine uses it.
	limit int
	// waits counts the writes that waited at the limit (the server's
	// INFO reply_backlog_waits).
	waits *atomic.Int64
	// direct is the write to the socket that does not wait (writeNow),
	// made once so that a write costs no allocation; it writes directP and
	// leaves how much it wrote in directN and its error in directErr.
	direct    func(fd uintptr) bool
	directP   []byte
	directN   int
	directErr error

	mu   sync.Mutex
	cond sync.Cond
	// queue holds what the sender has yet to take, in order.
	queue []byte
	// sending is set while a sender goroutine runs.
	sending bool
	// err is the first failed write: every later Write returns it.
	err error
	// sent counts the bytes the sender has written, so that a
	// connection ending can tell a slow client from one that stopped
	// reading (lingerClose).
	sent atomic.Int64
}

// sendChunk is how much the sender writes at once, so that sent moves
// while a large backlog goes out.
const sendChunk = 64 << 10

// unauthBacklog is the reply backlog of a connection that has not
// authenticated on a server with a password, so that unknown clients that
// send without reading hold little.
const unauthBacklog = 64 << 10

// Queue buffers this large or smaller are kept for the next backlog; a
// larger one goes once the backlog is sent, so that a connection that once
// queued a large pipeline's replies does not keep the memory.
const keepQueueCap = 64 << 10

func newOutbox(nc net.Conn, limit int, waits *atomic.Int64) *outbox {
	o := &outbox{nc: nc, limit: limit, waits: waits}
	o.cond.L = &o.mu
	if sc, ok := nc.(syscall.Conn); ok && canWriteNow {
		if raw, err := sc.SyscallConn(); err == nil {
			o.raw = raw
			o.direct = o.writeNowFD
		}
	}
	return o
}

// writeNow writes what the socket takes of p without waiting, and returns
// how much that was.
func (o *outbox) writeNow(p []byte) (int, error) {
	o.directP, o.directN, o.directErr = p, 0, nil
	err := o.raw.Write(o.direct) // o.direct returns true: the write does not wait
	if err == nil {
		err = o.directErr
	}
	o.directP = nil
	return o.directN, err
}

// Write sends p, or queues what the socket cannot take at once. It waits
// only while more than limit bytes are queued. It returns the error of an
// earlier write that failed.
func (o *outbox) Write(p []byte) (int, error) {
	o.mu.Lock()
	if o.err != nil {
		err := o.err
		o.mu.Unlock()
		return 0, err
	}
	if o.sending {
		o.queue = append(o.queue, p...)
		for waited := false; len(o.queue) > o.limit && o.err == nil && o.sending; waited = true {
			if !waited {
				o.waits.Add(1)
			}
			o.cond.Wait()
		}
		err := o.err
		o.mu.Unlock()
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	o.mu.Unlock()
	n := 0
	if o.raw != nil {
		var err error
		if n, err = o.writeNow(p); err != nil {
			o.mu.Lock()
			o.err = err
			o.mu.Unlock()
			return n, err
		}
		if n == len(p) {
			return n, nil
		}
	}
	o.mu.Lock()
	o.queue = append(o.queue, p[n:]...)
	o.sending = true
	o.mu.Unlock()
	go o.send()
	return len(p), nil
}

// send writes the queue until it is empty or a write fails.
func (o *outbox) send() {
	var buf []byte
	o.mu.Lock()
	for len(o.queue) > 0 && o.err == nil {
		buf, o.queue = o.queue, buf[:0]
		o.cond.Broadcast() // the queue has room again
		o.mu.Unlock()
		var err error
		for rest := buf; len(rest) > 0 && err == nil; {
			var n int
			n, err = o.nc.Write(rest[:min(len(rest), sendChunk)])
			o.sent.Add(int64(n))
			rest = rest[n:]
		}
		o.mu.Lock()
		if err != nil {
			o.err = err
		}
	}
	if cap(o.queue) > keepQueueCap || o.err != nil {
		o.queue = nil
	}
	o.sending = false
	o.cond.Broadcast()
	o.mu.Unlock()
}

// wait waits until everything written has gone to the socket, or a write
// failed, and returns the first write error.
func (o *outbox) wait() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.sending {
		o.cond.Wait()
	}
	return o.err
}

// busy reports whether replies are queued for the sender.
func (o *outbox) busy() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.sending
}
