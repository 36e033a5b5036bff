package kv

import (
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// sessionEncoder encodes session records exactly as
// proto.MarshalOptions{Deterministic: true} does (fields in number order,
// the map's entries by key, unknown fields last), which the stored records
// must stay byte for byte: replicas of different builds write the same
// records. It skips the generic encoder's sizing pass over the whole record
// and its reflection over the map, which was 3.4% of the nodes' CPU under
// Go-client writes (docs/benchmarks.md); TestSessionEncoderMatchesProto
// holds it to the generic encoder. Its buffers are reused: one per state
// machine.
type sessionEncoder struct {
	seqs []uint64
	val  []byte
}

// appendCached appends the encoding of cs's record to b, encoding only
// the results whose map entries cs does not hold yet, and keeps those.
func (e *sessionEncoder) appendCached(b []byte, cs *cachedSession) ([]byte, error) {
	if !cacheable(len(cs.rec.Results), 0) {
		// Not to be cached (cacheSession): keeping its encodings would
		// only copy them.
		cs.enc = nil
		return e.append(b, cs.rec, nil)
	}
	if cs.enc == nil {
		cs.enc = make(map[uint64]encodedResult, len(cs.rec.Results))
	}
	b, err := e.append(b, cs.rec, cs.enc)
	if err != nil {
		return nil, err
	}
	// Forget the entries of results the record dropped (trimSessionCount).
	if len(cs.enc) > len(cs.rec.Results) {
		for seq := range cs.enc {
			if _, ok := cs.rec.Results[seq]; !ok {
				delete(cs.enc, seq)
			}
		}
	}
	return b, nil
}

// append appends the encoding of s to b, taking each result's map entry
// from enc where it holds one for that very result, and adding to enc
// those it makes (if enc is not nil). Results are not changed once in a
// record (trimSessionBytes replaces them), so an entry made once stays
// their encoding.
func (e *sessionEncoder) append(b []byte, s *shoalpb.SessionRecord, enc map[uint64]encodedResult) ([]byte, error) {
	if s.AckedBelow != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, s.AckedBelow)
	}
	if s.LastActiveMs != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(s.LastActiveMs))
	}
	e.seqs = e.seqs[:0]
	for seq := range s.Results {
		e.seqs = append(e.seqs, seq)
	}
	slices.Sort(e.seqs)
	for _, seq := range e.seqs {
		r := s.Results[seq]
		if c, ok := enc[seq]; ok && c.res == r {
			b = append(b, c.entry...)
			continue
		}
		var err error
		if e.val, err = (proto.MarshalOptions{Deterministic: true}).MarshalAppend(e.val[:0], r); err != nil {
			return nil, err
		}
		// A map entry: its key (field 1) and value (field 2), both
		// always written.
		at := len(b)
		size := protowire.SizeTag(1) + protowire.SizeVarint(seq) + protowire.SizeTag(2) + protowire.SizeBytes(len(e.val))
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, seq)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, e.val)
		if enc != nil {
			enc[seq] = encodedResult{res: r, entry: slices.Clone(b[at:])}
		}
	}
	if cap(e.val) > 64<<10 {
		e.val = nil // a large result (an old value) is not kept for ever
	}
	return append(b, s.ProtoReflect().GetUnknown()...), nil
}
