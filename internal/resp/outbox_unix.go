//go:build unix

package resp

import "syscall"

// canWriteNow says that writeNowFD works here.
const canWriteNow = true

// writeNowFD writes o.directP to fd until the socket takes no more. It
// returns true: the caller (RawConn.Write) is not to wait for the socket.
func (o *outbox) writeNowFD(fd uintptr) bool {
	p := o.directP
	for o.directN < len(p) {
		m, err := syscall.Write(int(fd), p[o.directN:])
		if m > 0 {
			o.directN += m
		}
		switch {
		case err == syscall.EINTR:
		case err == syscall.EAGAIN:
			return true
		case err != nil:
			o.directErr = err
			return true
		case m <= 0:
			return true
		}
	}
	return true
}
