package kv

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// maxSessionResults bounds the results one session keeps for retries. It is
// part of the replicated semantics (every replica must trim alike), so
// changing it is a format change.
const maxSessionResults = 256

// applyInSession applies cmd at most once per (session_id, seq): a retry
// gets the first result back, a sequence the client already acknowledged is
// refused, and anything else is applied and its result remembered in the
// session record, written in the same batch as the command's effects.
func (sm *stateMachine) applyInSession(b *storage.Batch, cmd *shoalpb.KVCommand) (*shoalpb.KVCommandResult, error) {
	key := keys.SessionKey(sm.shard, cmd.SessionId)
	s := &shoalpb.SessionRecord{}
	if _, err := storage.GetProto(b, key, s); err != nil {
		return nil, err
	}
	if cmd.Seq < s.AckedBelow {
		return &shoalpb.KVCommandResult{
			Error: shoalpb.KVErrorCode_KV_ERROR_STALE_SEQUENCE,
			ErrorMessage: fmt.Sprintf("ERR session %d: sequence %d is below the acknowledged mark %d",
				cmd.SessionId, cmd.Seq, s.AckedBelow),
		}, nil
	}
	if res, ok := s.Results[cmd.Seq]; ok {
		return res, nil
	}
	res, err := sm.execute(b, cmd)
	if err != nil {
		return nil, err
	}
	if s.Results == nil {
		s.Results = make(map[uint64]*shoalpb.KVCommandResult)
	}
	s.Results[cmd.Seq] = res
	s.AckedBelow = max(s.AckedBelow, cmd.AckedBelow)
	s.LastActiveMs = max(s.LastActiveMs, cmd.NowMs)
	trimSession(s)
	// Deterministic: map order must not make replicas store different bytes.
	sm.buf, err = proto.MarshalOptions{Deterministic: true}.MarshalAppend(sm.buf[:0], s)
	if err != nil {
		return nil, fmt.Errorf("encode session %d: %w", cmd.SessionId, err)
	}
	if err := b.Set(key, sm.buf, nil); err != nil {
		return nil, err
	}
	return res, nil
}

// trimSession forgets the results the client acknowledged and, beyond
// maxSessionResults, the oldest ones, raising the acknowledged mark past them
// so that a late retry is refused instead of applied twice.
func trimSession(s *shoalpb.SessionRecord) {
	for seq := range s.Results {
		if seq < s.AckedBelow {
			delete(s.Results, seq)
		}
	}
	for len(s.Results) > maxSessionResults {
		oldest := uint64(0)
		first := true
		for seq := range s.Results {
			if first || seq < oldest {
				oldest, first = seq, false
			}
		}
		delete(s.Results, oldest)
		s.AckedBelow = max(s.AckedBelow, oldest+1)
	}
}
