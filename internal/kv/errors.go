package kv

import (
	"errors"
	"fmt"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/storage"
)

// Sentinel errors of DB. Errors from the store (raftstore.ErrNotLeader and
// the rest) are returned wrapped, so errors.Is works for both.
var (
	// ErrNotInteger: INCRBY on a value that is not a 64-bit decimal integer.
	ErrNotInteger = errors.New("kv: value is not an integer or out of range")
	// ErrOverflow: INCRBY would overflow a 64-bit integer.
	ErrOverflow = errors.New("kv: increment or decrement would overflow")
	// ErrTooLarge: a key or value exceeds Options.Limits. Nothing was
	// written.
	ErrTooLarge = errors.New("kv: too large")
	// ErrStaleSequence: a session write whose sequence the client had
	// already acknowledged. Nothing was written.
	ErrStaleSequence = errors.New("kv: stale session sequence")
	// ErrInvalid: a malformed request (bad options, an op the caller may
	// not send, a key the shard does not own). Nothing was written.
	ErrInvalid = errors.New("kv: invalid request")
	// ErrCrossShard: a batch whose keys live in more than one shard.
	ErrCrossShard = errors.New("kv: keys in more than one shard")
	// ErrDiskFull: a write refused because the node's disk has less free
	// space than its reserve (Options.Space). Nothing was written; deletes
	// are still accepted.
	ErrDiskFull = storage.ErrDiskFull
)

// CommandError is a command the state machine refused by its own rules.
// Nothing of the command was written. It matches the sentinel of its code
// with errors.Is.
type CommandError struct {
	Code shoalpb.KVErrorCode
	// Message is Redis's wording, such as "ERR value is not an integer or
	// out of range", for front ends to pass on.
	Message string
	// Op is the index of the op that failed.
	Op int
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%s (op %d)", e.Message, e.Op)
}

// Unwrap returns the sentinel error of the code.
func (e *CommandError) Unwrap() error {
	switch e.Code {
	case shoalpb.KVErrorCode_KV_ERROR_NOT_INTEGER:
		return ErrNotInteger
	case shoalpb.KVErrorCode_KV_ERROR_OVERFLOW:
		return ErrOverflow
	case shoalpb.KVErrorCode_KV_ERROR_TOO_LARGE:
		return ErrTooLarge
	case shoalpb.KVErrorCode_KV_ERROR_STALE_SEQUENCE:
		return ErrStaleSequence
	}
	return ErrInvalid
}

// resultError returns the error res reports, nil if none.
func resultError(res *shoalpb.KVCommandResult) error {
	if res.GetError() == shoalpb.KVErrorCode_KV_ERROR_NONE {
		return nil
	}
	return &CommandError{Code: res.Error, Message: res.ErrorMessage, Op: int(res.FailedOp)}
}
