package raftlog

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// TestAppliedEncoding checks the applied state's encoding against
// protobuf's deterministic marshal, byte for byte, over a run of applied
// states whose configuration changes now and then, is changed in place
// (the encoder must not trust the pointer), or is absent.
func TestAppliedEncoding(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	ids := func() []uint64 {
		switch r.IntN(3) {
		case 0:
			return nil
		case 1:
			return []uint64{}
		}
		out := make([]uint64, 1+r.IntN(5))
		for i := range out {
			out[i] = 1 + r.Uint64N(1<<40)
		}
		return out
	}
	conf := func() *raftpb.ConfState {
		cs := &raftpb.ConfState{Voters: ids(), Learners: ids(), VotersOutgoing: ids(), LearnersNext: ids()}
		if r.IntN(3) > 0 {
			cs.AutoLeave = new(r.IntN(2) == 0)
		}
		return cs
	}
	var e appliedEncoder
	cs := conf()
	var index, term uint64
	for i := range 5000 {
		switch r.IntN(20) {
		case 0:
			cs = conf()
		case 1:
			cs = nil
		case 2:
			if cs != nil && len(cs.Voters) > 0 {
				cs.Voters[r.IntN(len(cs.Voters))]++
			}
		case 3:
			if cs != nil {
				cs.AutoLeave = nil
			}
		case 4:
			index, term = 0, 0
		}
		index += uint64(r.IntN(3))
		if r.IntN(50) == 0 {
			term++
		}
		checkEncodes(t, &e, i, &shoalpb.AppliedState{Index: index, Term: term, ConfState: cs})
	}
}

// checkEncodes fails the test unless e encodes as as protobuf does.
func checkEncodes(t *testing.T, e *appliedEncoder, i int, as *shoalpb.AppliedState) {
	t.Helper()
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(as)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.encode(as)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("state %d (%v): encoded %x, protobuf %x", i, as, got, want)
	}
}

// BenchmarkAppliedEncoding compares the encoder with protobuf's marshal for
// a three-voter configuration.
func BenchmarkAppliedEncoding(b *testing.B) {
	as := &shoalpb.AppliedState{Index: 123456, Term: 7,
		ConfState: &raftpb.ConfState{Voters: []uint64{101, 102, 103}, AutoLeave: new(false)}}
	b.Run("encoder", func(b *testing.B) {
		var e appliedEncoder
		b.ReportAllocs()
		for b.Loop() {
			as.Index++
			if _, err := e.encode(as); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			as.Index++
			if _, err := (proto.MarshalOptions{Deterministic: true}).Marshal(as); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestAppliedEncodingUnknownFields checks that a configuration carrying
// unknown fields (from a newer raft) is never taken from the cache: its
// encoding includes them, as protobuf's does.
func TestAppliedEncodingUnknownFields(t *testing.T) {
	var e appliedEncoder
	plain := &raftpb.ConfState{Voters: []uint64{1, 2, 3}}
	withUnknown := proto.CloneOf(plain)
	withUnknown.ProtoReflect().SetUnknown([]byte{0x78, 0x01}) // field 15, varint 1
	for i, cs := range []*raftpb.ConfState{plain, withUnknown, withUnknown, plain} {
		checkEncodes(t, &e, i, &shoalpb.AppliedState{Index: uint64(10 + i), Term: 2, ConfState: cs})
	}
}
