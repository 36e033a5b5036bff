package kv

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// TestSessionEncoderMatchesProto holds sessionEncoder to the generic
// deterministic encoder, byte for byte, on random records: zero and large
// fields, empty and large results, keys 0 and beyond 2^63, unknown fields.
func TestSessionEncoderMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	varint := func() uint64 {
		switch rng.IntN(4) {
		case 0:
			return 0
		case 1:
			return rng.Uint64N(128)
		case 2:
			return rng.Uint64N(1 << 20)
		}
		return rng.Uint64()
	}
	var e sessionEncoder
	for i := range 2000 {
		s := &shoalpb.SessionRecord{AckedBelow: varint(), LastActiveMs: int64(varint())}
		n := rng.IntN(6)
		if i%100 == 0 {
			n = 300
		}
		if n > 0 {
			s.Results = map[uint64]*shoalpb.KVCommandResult{}
		}
		for range n {
			r := &shoalpb.KVCommandResult{}
			if rng.IntN(3) == 0 {
				r.Error = shoalpb.KVErrorCode(rng.IntN(5))
				r.ErrorMessage = "ERR something"
				r.FailedOp = int32(rng.IntN(3)) - 1
			}
			for range rng.IntN(3) {
				op := &shoalpb.KVOpResult{Applied: rng.IntN(2) == 0, Found: rng.IntN(2) == 0, IntValue: int64(varint())}
				if rng.IntN(2) == 0 {
					op.Value = bytes.Repeat([]byte{'v'}, rng.IntN(300))
				}
				r.Results = append(r.Results, op)
			}
			s.Results[varint()] = r
		}
		if i%7 == 0 {
			// A field of a newer build, kept as unknown.
			s.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 5))
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.append([]byte("prefix"), s, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[len("prefix"):], want) || string(got[:len("prefix")]) != "prefix" {
			t.Fatalf("record %d (%d results): encoded\n%x\nwant\n%x", i, len(s.Results), got, want)
		}
	}
}

// BenchmarkSessionRecordEncode encodes a record with a few small results,
// as a session under many concurrent writes holds: generic is
// proto.MarshalOptions{Deterministic: true}, own is sessionEncoder.
func BenchmarkSessionRecordEncode(b *testing.B) {
	s := &shoalpb.SessionRecord{AckedBelow: 1000, LastActiveMs: 1764400000000, Results: map[uint64]*shoalpb.KVCommandResult{}}
	for seq := uint64(1000); seq < 1004; seq++ {
		s.Results[seq] = &shoalpb.KVCommandResult{Results: []*shoalpb.KVOpResult{{Applied: true}}}
	}
	var buf []byte
	b.Run("generic", func(b *testing.B) {
		for b.Loop() {
			buf, _ = proto.MarshalOptions{Deterministic: true}.MarshalAppend(buf[:0], s)
		}
	})
	var e sessionEncoder
	b.Run("own", func(b *testing.B) {
		for b.Loop() {
			buf, _ = e.append(buf[:0], s, nil)
		}
	})
}
