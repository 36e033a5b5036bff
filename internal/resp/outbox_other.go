//go:build !unix

package resp

import "syscall"

// writeNow writes nothing: without a non-blocking write, every reply goes
// through the outbox's sender.
func writeNow(syscall.RawConn, []byte) (int, error) { return 0, nil }
