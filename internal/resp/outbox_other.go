//go:build !unix

package resp

// canWriteNow says that writeNowFD does not work here: every reply goes
// through the outbox's sender.
const canWriteNow = false

func (o *outbox) writeNowFD(uintptr) bool { return true }
