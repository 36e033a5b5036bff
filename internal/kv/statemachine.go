package kv

import (
	"fmt"
	"log/slog"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
)

// StateMachineOptions configure a shard's state machine. Nothing in them
// changes what a command does: every replica applies the same bytes to the
// same result whatever its options.
type StateMachineOptions struct {
	// Logger receives the state machine's logs; the caller adds the node's
	// attributes. Default: discarded.
	Logger *slog.Logger
	// RowCache is the node's cache of read values (Options.RowCache): the
	// state machine announces every data key it writes to it, before the
	// batch is committed and once it is (Committed). Default nil.
	RowCache *RowCache
}

// Error texts of failed commands, as Redis words them, so that the RESP
// front end can pass them on unchanged.
const (
	msgNotInteger = "ERR value is not an integer or out of range"
	msgOverflow   = "ERR increment or decrement would overflow"
	msgTooLarge   = "ERR string exceeds maximum allowed size"
	msgMalformed  = "ERR malformed command"
)

// opError is a command failing by its own rules: it is reported in the
// command's result, never returned from Apply.
type opError struct {
	code shoalpb.KVErrorCode
	msg  string
}

func (e opError) Error() string { return e.msg }

func invalidf(format string, args ...any) opError {
	return opError{code: shoalpb.KVErrorCode_KV_ERROR_INVALID, msg: fmt.Sprintf(format, args...)}
}

// stateMachine applies the KVCommands of one shard. The store calls Apply
// from one goroutine at a time, so the scratch state needs no lock.
type stateMachine struct {
	shard      uint64
	start, end uint32 // the shard's slots: [start, end)
	log        *slog.Logger

	// Scratch, reused across commands. buf is dropped after a command that
	// grew it beyond maxScratch, so that an idle replica does not pin the
	// memory of its largest value.
	ov  overlay
	buf []byte
	// sessions caches session records (session.go).
	sessions map[uint64]*cachedSession
	// cachedResults is the results the cached records hold in all.
	cachedResults int
	// sessionEnc encodes session records (applyInSession).
	sessionEnc sessionEncoder
	// rows is the node's row cache; ov.written holds the data keys
	// announced to it (begin) whose batch is not committed yet.
	rows *RowCache
}

const maxScratch = 64 << 10

// NewStateMachine returns the state machine of a replica of the shard desc
// describes. It fits raftstore.Options.NewStateMachine once opts is bound.
func NewStateMachine(desc *shoalpb.ShardDescriptor, opts StateMachineOptions) raftstore.StateMachine {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &stateMachine{
		shard: desc.GetShardId(),
		start: desc.GetStartSlot(),
		end:   desc.GetEndSlot(),
		log:   opts.Logger.With("shard", desc.GetShardId()),
		ov:    overlay{index: make(map[string]int), track: opts.RowCache != nil},
		rows:  opts.RowCache,
	}
}

// Apply implements raftstore.StateMachine. Each command's result is a
// *shoalpb.KVCommandResult. It returns an error only when reading or
// writing b fails or a stored record is corrupt.
func (sm *stateMachine) Apply(b *storage.Batch, cmds []raftstore.Command) ([]any, error) {
	out := make([]any, len(cmds))
	for i, c := range cmds {
		n := len(sm.ov.written)
		res, err := sm.applyCommand(b, c.Data)
		// Drop the keys the command wrote from the row cache before the
		// batch is committed (rowcache.go); Committed lets them be cached
		// again.
		for _, dk := range sm.ov.written[n:] {
			sm.rows.begin(dk)
		}
		sm.ov.reset()
		if cap(sm.buf) > maxScratch {
			sm.buf = nil
		}
		if err != nil {
			return nil, fmt.Errorf("kv: shard %d: apply index %d: %w", sm.shard, c.Index, err)
		}
		out[i] = res
	}
	return out, nil
}

// Committed implements raftstore.Committer: the batch holding what Apply
// staged is committed.
func (sm *stateMachine) Committed() {
	for _, dk := range sm.ov.written {
		sm.rows.end(dk)
	}
	clear(sm.ov.written)
	sm.ov.written = sm.ov.written[:0]
}

// applyCommand decodes and applies one command, through its session if it
// has one.
func (sm *stateMachine) applyCommand(b *storage.Batch, data []byte) (*shoalpb.KVCommandResult, error) {
	cmd := &shoalpb.KVCommand{}
	if err := proto.Unmarshal(data, cmd); err != nil {
		// The decoder's text is not stable across builds, so it stays out
		// of the replicated result.
		sm.log.Debug("malformed command", "err", err)
		return failed(invalidf("%s", msgMalformed), 0), nil
	}
	if cmd.NowMs < 0 {
		return failed(invalidf("%s: now_ms %d is negative", msgMalformed, cmd.NowMs), 0), nil
	}
	if cmd.SessionId != 0 {
		return sm.applyInSession(b, cmd)
	}
	return sm.execute(b, cmd)
}

// maxResultBytes bounds the values one command's results carry (old
// values, GETEX's, a failed CAS's current one): a command past it fails
// with TOO_LARGE and applies nothing. Without it a small command of many
// ops each returning one large value (GETEX of an 8 MiB key, 100,000
// times) made every replica allocate its results, and, being in the log,
// did so again at every restart; and a session record, which keeps a
// command's result whole, could outgrow the 64 MiB a snapshot message
// takes. It is part of the replicated semantics (every replica must fail
// such a command alike), so changing it is a format change.
const maxResultBytes = 16 << 20

// msgResultsTooLarge is the error of a command past maxResultBytes.
const msgResultsTooLarge = "ERR the values this command returns exceed 16 MiB"

// execute applies cmd's ops all or nothing: they are staged in the overlay
// and written to b only if every one succeeds.
func (sm *stateMachine) execute(b *storage.Batch, cmd *shoalpb.KVCommand) (*shoalpb.KVCommandResult, error) {
	res := &shoalpb.KVCommandResult{Results: make([]*shoalpb.KVOpResult, 0, min(len(cmd.Ops), 1024))}
	returned := 0
	for i, op := range cmd.Ops {
		r, err := sm.applyOp(b, cmd, op)
		if oe, ok := err.(opError); ok {
			return failed(oe, i), nil
		}
		if err != nil {
			return nil, err
		}
		if returned += len(r.Value); returned > maxResultBytes {
			return failed(opError{code: shoalpb.KVErrorCode_KV_ERROR_TOO_LARGE, msg: msgResultsTooLarge}, i), nil
		}
		res.Results = append(res.Results, r)
	}
	var err error
	sm.buf, err = sm.ov.flush(b, sm.buf)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// failed returns the result of a command whose op i failed with oe.
func failed(oe opError, i int) *shoalpb.KVCommandResult {
	return &shoalpb.KVCommandResult{Error: oe.code, ErrorMessage: oe.msg, FailedOp: int32(i)}
}

// slotOf returns the slot of key, or an opError if the shard does not own
// it.
func (sm *stateMachine) slotOf(key []byte) (uint16, error) {
	slot := keys.Slot(key)
	if uint32(slot) < sm.start || uint32(slot) >= sm.end {
		return 0, invalidf("ERR key's slot %d is not served by this shard", slot)
	}
	return slot, nil
}
