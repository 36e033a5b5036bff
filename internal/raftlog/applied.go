package raftlog

import (
	"slices"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// appliedEncoder encodes a replica's AppliedState, written with every
// apply batch, in the bytes protobuf's deterministic marshal gives, but
// reuses the encoding of the configuration (ConfState) while it is
// unchanged: the configuration changes only with a membership change, and
// encoding it through protobuf's reflection tables was most of the cost
// (about 1.3% of a node's CPU under a write load, docs/benchmarks.md).
type appliedEncoder struct {
	// conf is a copy of the configuration last encoded, confEnc its
	// encoding; valid is false until the first.
	conf    *raftpb.ConfState
	confEnc []byte
	valid   bool
	buf     []byte
}

// encode returns as's encoding; it is valid until the next call.
func (e *appliedEncoder) encode(as *shoalpb.AppliedState) ([]byte, error) {
	cs := as.GetConfState()
	if !e.valid || !sameConf(e.conf, cs) {
		enc, err := proto.MarshalOptions{Deterministic: true}.Marshal(cs)
		if err != nil {
			return nil, err
		}
		e.conf, e.confEnc, e.valid = nil, enc, true
		if cs != nil {
			e.conf = proto.CloneOf(cs)
		}
	}
	b := e.buf[:0]
	if as.Index != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, as.Index)
	}
	if as.Term != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, as.Term)
	}
	if cs != nil {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, e.confEnc)
	}
	e.buf = b
	return b, nil
}

// sameConf reports whether a and b encode alike: the same members in the
// same order, and the same AutoLeave, set or not.
func sameConf(a, b *raftpb.ConfState) bool {
	if a == nil || b == nil {
		return a == b
	}
	if (a.AutoLeave == nil) != (b.AutoLeave == nil) || a.GetAutoLeave() != b.GetAutoLeave() {
		return false
	}
	return slices.Equal(a.Voters, b.Voters) && slices.Equal(a.Learners, b.Learners) &&
		slices.Equal(a.VotersOutgoing, b.VotersOutgoing) && slices.Equal(a.LearnersNext, b.LearnersNext) &&
		len(a.ProtoReflect().GetUnknown()) == 0 && len(b.ProtoReflect().GetUnknown()) == 0
}
