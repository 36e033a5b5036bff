package transport

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unicode/utf8"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Codec is the gRPC codec of the servers and the Raft streams. It encodes
// and decodes RaftMessageBatch, the Raft stream's message, by hand, in
// protobuf's wire format byte for byte (so either side may run the stock
// codec: nodes of the previous version interoperate), and hands every other
// message to gRPC's proto codec.
//
// Why by hand: etcd raft's messages are proto2 with a pointer per scalar
// field, so protobuf's generic decoder makes about ten allocations per Raft
// message and its encoder walks each message twice through reflection
// tables. Encoding and decoding the stream took 9-10% of the nodes' CPU
// under a write load (docs/benchmarks.md). This codec sizes each message
// once; it decodes a batch's messages and their scalars in chunks of up to
// 64, and each entry in two allocations (the entry, its data), since
// entries outlive their batch in Raft's log.
//
// The decoder follows protobuf-go's rules for what the sender may vary:
// fields in any order, a repeated scalar field's last value wins, an enum
// takes any value; it skips unknown fields (protobuf keeps them; nothing in
// Shoal reads them). It refuses what no encoder produces and protobuf would
// merge, an embedded message field (a Raft message, a snapshot) given
// twice, and responses nested deeper than protobuf's recursion limit. The
// encoder writes no unknown fields (Shoal sets none) and treats a nil
// element of a repeated message field as an empty message, as protobuf
// does.
type Codec struct {
	fallback         encoding.CodecV2
	encoded, decoded atomic.Uint64
}

// CodecStats counts the Raft batches a Codec encoded and decoded.
type CodecStats struct{ Encoded, Decoded uint64 }

// Stats returns the codec's counters.
func (c *Codec) Stats() CodecStats {
	return CodecStats{Encoded: c.encoded.Load(), Decoded: c.decoded.Load()}
}

// NewCodec returns the codec.
func NewCodec() *Codec {
	return &Codec{fallback: encoding.GetCodecV2(grpcproto.Name)}
}

// Name is the content subtype: "proto", as the stock codec's, since the
// bytes are the same.
func (c *Codec) Name() string { return grpcproto.Name }

// ErrMalformed is returned for a Raft stream message that is not valid.
var ErrMalformed = errors.New("transport: malformed raft message batch")

// Marshal implements encoding.CodecV2.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*shoalpb.RaftMessageBatch)
	if !ok {
		return c.fallback.Marshal(v)
	}
	if !utf8.ValidString(b.ClusterId) {
		return nil, fmt.Errorf("transport: cluster ID %q is not UTF-8", b.ClusterId)
	}
	c.encoded.Add(1)
	var small [64]msgSizes
	n, sizes := sizeBatch(b, small[:0])
	if mem.IsBelowBufferPoolingThreshold(n) {
		buf := appendBatch(make([]byte, 0, n), b, sizes)
		if len(buf) != n {
			return nil, fmt.Errorf("transport: raft batch encoded to %d bytes, sized %d", len(buf), n)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	bp := pool.Get(n)
	*bp = appendBatch((*bp)[:0], b, sizes)
	if len(*bp) != n {
		pool.Put(bp)
		return nil, fmt.Errorf("transport: raft batch encoded to %d bytes, sized %d", len(*bp), n)
	}
	return mem.BufferSlice{mem.NewBuffer(bp, pool)}, nil
}

// Unmarshal implements encoding.CodecV2.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*shoalpb.RaftMessageBatch)
	if !ok {
		return c.fallback.Unmarshal(data, v)
	}
	c.decoded.Add(1)
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return decodeBatch(buf.ReadOnlyData(), b)
}

// callOption makes a client call use the codec.
func (c *Codec) callOption() grpc.CallOption { return grpc.ForceCodecV2(c) }

// Field numbers and wire types, from api/shoalpb/raftmsg.proto and etcd
// raft's raftpb/raft.proto.
const (
	batchClusterID = 1
	batchFromNode  = 2
	batchToNode    = 3
	batchMessages  = 4

	rmShardID  = 1
	rmFromNode = 2
	rmToNode   = 3
	rmEpoch    = 4
	rmMessage  = 5
	rmRemoved  = 6
	rmQuiesce  = 7

	msgType       = 1
	msgTo         = 2
	msgFrom       = 3
	msgTerm       = 4
	msgLogTerm    = 5
	msgIndex      = 6
	msgEntries    = 7
	msgCommit     = 8
	msgSnapshot   = 9
	msgReject     = 10
	msgRejectHint = 11
	msgContext    = 12
	msgVote       = 13
	msgResponses  = 14

	entType  = 1
	entTerm  = 2
	entIndex = 3
	entData  = 4
)

// Every field number here is below 16: a tag is one byte.
func tag(num protowire.Number, typ protowire.Type) byte { return byte(num)<<3 | byte(typ) }

func sizeVarintField(v uint64) int { return 1 + protowire.SizeVarint(v) }
func sizeBytesField(n int) int     { return 1 + protowire.SizeBytes(n) }

func appendVarintField(buf []byte, num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(append(buf, tag(num, protowire.VarintType)), v)
}

func appendBytesField(buf []byte, num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(append(buf, tag(num, protowire.BytesType)), v)
}

// appendLen appends the tag and length of an embedded message of n bytes.
func appendLen(buf []byte, num protowire.Number, n int) []byte {
	return protowire.AppendVarint(append(buf, tag(num, protowire.BytesType)), uint64(n))
}

// A proto3 scalar is sent when it is not zero.
func sizeNonZero(v uint64) int {
	if v == 0 {
		return 0
	}
	return sizeVarintField(v)
}

func appendNonZero(buf []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return buf
	}
	return appendVarintField(buf, num, v)
}

func boolVarint(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// A proto2 scalar is sent when its pointer is set, whatever its value.
func sizeSet(p *uint64) int {
	if p == nil {
		return 0
	}
	return sizeVarintField(*p)
}

func appendSet(buf []byte, num protowire.Number, p *uint64) []byte {
	if p == nil {
		return buf
	}
	return appendVarintField(buf, num, *p)
}

// enumVarint is how protobuf encodes an enum: its int32, sign-extended.
func enumVarint[E ~int32](e E) uint64 { return uint64(int64(e)) }

// msgSizes are the encoded sizes of one message of a batch and of its Raft
// message: sizeBatch computes them once, appendBatch writes them as length
// prefixes.
type msgSizes struct{ rm, msg int }

func sizeBatch(b *shoalpb.RaftMessageBatch, sizes []msgSizes) (int, []msgSizes) {
	n := sizeNonZero(b.FromNode) + sizeNonZero(b.ToNode)
	if len(b.ClusterId) > 0 {
		n += sizeBytesField(len(b.ClusterId))
	}
	for _, m := range b.Messages {
		sz := sizeRaftMessage(m)
		sizes = append(sizes, sz)
		n += sizeBytesField(sz.rm)
	}
	return n, sizes
}

func appendBatch(buf []byte, b *shoalpb.RaftMessageBatch, sizes []msgSizes) []byte {
	if len(b.ClusterId) > 0 {
		buf = appendBytesField(buf, batchClusterID, []byte(b.ClusterId))
	}
	buf = appendNonZero(buf, batchFromNode, b.FromNode)
	buf = appendNonZero(buf, batchToNode, b.ToNode)
	for i, m := range b.Messages {
		buf = appendRaftMessage(appendLen(buf, batchMessages, sizes[i].rm), m, sizes[i].msg)
	}
	return buf
}

func sizeRaftMessage(m *shoalpb.RaftMessage) msgSizes {
	if m == nil {
		return msgSizes{}
	}
	n := sizeNonZero(m.ShardId) + sizeNonZero(m.FromNode) + sizeNonZero(m.ToNode) + sizeNonZero(m.Epoch) +
		sizeNonZero(boolVarint(m.Removed)) + sizeNonZero(boolVarint(m.Quiesce))
	msg := 0
	if m.Message != nil {
		msg = sizeMessage(m.Message)
		n += sizeBytesField(msg)
	}
	return msgSizes{rm: n, msg: msg}
}

// appendRaftMessage appends m, whose Raft message encodes to msgSize bytes.
func appendRaftMessage(buf []byte, m *shoalpb.RaftMessage, msgSize int) []byte {
	if m == nil {
		return buf
	}
	buf = appendNonZero(buf, rmShardID, m.ShardId)
	buf = appendNonZero(buf, rmFromNode, m.FromNode)
	buf = appendNonZero(buf, rmToNode, m.ToNode)
	buf = appendNonZero(buf, rmEpoch, m.Epoch)
	if m.Message != nil {
		buf = appendMessage(appendLen(buf, rmMessage, msgSize), m.Message)
	}
	buf = appendNonZero(buf, rmRemoved, boolVarint(m.Removed))
	return appendNonZero(buf, rmQuiesce, boolVarint(m.Quiesce))
}

// sizeMessage and appendMessage write the fields in field number order, as
// protobuf does.
func sizeMessage(m *raftpb.Message) int {
	if m == nil {
		return 0
	}
	n := sizeSet(m.To) + sizeSet(m.From) + sizeSet(m.Term) + sizeSet(m.LogTerm) + sizeSet(m.Index) +
		sizeSet(m.Commit) + sizeSet(m.RejectHint) + sizeSet(m.Vote)
	if m.Type != nil {
		n += sizeVarintField(enumVarint(*m.Type))
	}
	for _, e := range m.Entries {
		n += sizeBytesField(sizeEntry(e))
	}
	if m.Snapshot != nil {
		n += sizeBytesField(proto.Size(m.Snapshot))
	}
	if m.Reject != nil {
		n += 2
	}
	if m.Context != nil {
		n += sizeBytesField(len(m.Context))
	}
	for _, r := range m.Responses {
		n += sizeBytesField(sizeMessage(r))
	}
	return n
}

func appendMessage(buf []byte, m *raftpb.Message) []byte {
	if m == nil {
		return buf
	}
	if m.Type != nil {
		buf = appendVarintField(buf, msgType, enumVarint(*m.Type))
	}
	buf = appendSet(buf, msgTo, m.To)
	buf = appendSet(buf, msgFrom, m.From)
	buf = appendSet(buf, msgTerm, m.Term)
	buf = appendSet(buf, msgLogTerm, m.LogTerm)
	buf = appendSet(buf, msgIndex, m.Index)
	for _, e := range m.Entries {
		buf = appendEntry(appendLen(buf, msgEntries, sizeEntry(e)), e)
	}
	buf = appendSet(buf, msgCommit, m.Commit)
	if m.Snapshot != nil {
		buf = appendLen(buf, msgSnapshot, proto.Size(m.Snapshot))
		// proto.Size just cached the sizes the append uses.
		buf, _ = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, m.Snapshot)
	}
	if m.Reject != nil {
		buf = appendVarintField(buf, msgReject, boolVarint(*m.Reject))
	}
	buf = appendSet(buf, msgRejectHint, m.RejectHint)
	if m.Context != nil {
		buf = appendBytesField(buf, msgContext, m.Context)
	}
	buf = appendSet(buf, msgVote, m.Vote)
	for _, r := range m.Responses {
		buf = appendMessage(appendLen(buf, msgResponses, sizeMessage(r)), r)
	}
	return buf
}

func sizeEntry(e *raftpb.Entry) int {
	if e == nil {
		return 0
	}
	n := sizeSet(e.Term) + sizeSet(e.Index)
	if e.Type != nil {
		n += sizeVarintField(enumVarint(*e.Type))
	}
	if e.Data != nil {
		n += sizeBytesField(len(e.Data))
	}
	return n
}

func appendEntry(buf []byte, e *raftpb.Entry) []byte {
	if e == nil {
		return buf
	}
	if e.Type != nil {
		buf = appendVarintField(buf, entType, enumVarint(*e.Type))
	}
	buf = appendSet(buf, entTerm, e.Term)
	buf = appendSet(buf, entIndex, e.Index)
	if e.Data != nil {
		buf = appendBytesField(buf, entData, e.Data)
	}
	return buf
}

// reader walks the fields of one encoded message. Its methods record the
// first error and then return zero values, so a decoder checks r.err once
// per field.
type reader struct {
	buf []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.buf = nil
}

// field reads the next tag; false at the end or on an error.
func (r *reader) field() (protowire.Number, protowire.Type, bool) {
	if len(r.buf) == 0 {
		return 0, 0, false
	}
	if b := r.buf[0]; b < 0x80 && b >= 8 { // a one-byte tag
		r.buf = r.buf[1:]
		return protowire.Number(b >> 3), protowire.Type(b & 7), true
	}
	num, typ, n := protowire.ConsumeTag(r.buf)
	if n < 0 {
		r.fail(fmt.Errorf("%w: %v", ErrMalformed, protowire.ParseError(n)))
		return 0, 0, false
	}
	if !num.IsValid() {
		r.fail(fmt.Errorf("%w: field number %d", ErrMalformed, num))
		return 0, 0, false
	}
	r.buf = r.buf[n:]
	return num, typ, true
}

func (r *reader) varint() uint64 {
	if len(r.buf) > 0 && r.buf[0] < 0x80 {
		v := uint64(r.buf[0])
		r.buf = r.buf[1:]
		return v
	}
	v, n := protowire.ConsumeVarint(r.buf)
	if n < 0 {
		r.fail(fmt.Errorf("%w: %v", ErrMalformed, protowire.ParseError(n)))
		return 0
	}
	r.buf = r.buf[n:]
	return v
}

func (r *reader) bytes() []byte {
	b, n := protowire.ConsumeBytes(r.buf)
	if n < 0 {
		r.fail(fmt.Errorf("%w: %v", ErrMalformed, protowire.ParseError(n)))
		return nil
	}
	r.buf = r.buf[n:]
	return b
}

// skip reads past the value of a field the decoder does not know (or of a
// known number with another wire type, which protobuf treats alike).
func (r *reader) skip(num protowire.Number, typ protowire.Type) {
	n := protowire.ConsumeFieldValue(num, typ, r.buf)
	if n < 0 {
		r.fail(fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n)))
		return
	}
	r.buf = r.buf[n:]
}

func decodeBatch(buf []byte, b *shoalpb.RaftMessageBatch) error {
	proto.Reset(b)
	// Count the messages (reading only their tags and lengths), to
	// allocate them, and their Raft messages, at once.
	n := 0
	for r := (reader{buf: buf}); ; {
		num, typ, ok := r.field()
		if !ok {
			if r.err != nil {
				return r.err
			}
			break
		}
		if num == batchMessages && typ == protowire.BytesType {
			n++
		}
		r.skip(num, typ)
	}
	d := chunks{left: n}
	b.Messages = make([]*shoalpb.RaftMessage, 0, n)
	r := reader{buf: buf}
	for {
		num, typ, ok := r.field()
		if !ok {
			break
		}
		switch {
		case num == batchClusterID && typ == protowire.BytesType:
			v := r.bytes()
			if r.err == nil && !utf8.Valid(v) {
				return fmt.Errorf("%w: cluster_id is not UTF-8", ErrMalformed)
			}
			b.ClusterId = string(v)
		case num == batchFromNode && typ == protowire.VarintType:
			b.FromNode = r.varint()
		case num == batchToNode && typ == protowire.VarintType:
			b.ToNode = r.varint()
		case num == batchMessages && typ == protowire.BytesType:
			v := r.bytes()
			if r.err != nil {
				break
			}
			m := d.raftMessage()
			if err := decodeRaftMessage(v, m, &d); err != nil {
				return err
			}
			b.Messages = append(b.Messages, m)
		default:
			r.skip(num, typ)
		}
	}
	if n == 0 {
		b.Messages = nil
	}
	return r.err
}

// chunks are the allocations a batch's messages are carved from, at most
// chunkSize at a time: a message kept alive keeps its chunk (and what its
// neighbours point to) alive, and a batch of empty messages must not make
// one huge allocation.
type chunks struct {
	left  int // messages counted and not yet taken
	rms   []shoalpb.RaftMessage
	slabs []messageSlab
}

const chunkSize = 64

func (d *chunks) raftMessage() *shoalpb.RaftMessage {
	if len(d.rms) == 0 {
		d.rms = make([]shoalpb.RaftMessage, max(1, min(d.left, chunkSize)))
	}
	d.left--
	m := &d.rms[0]
	d.rms = d.rms[1:]
	return m
}

// slab returns a slab for the current message's Raft message.
func (d *chunks) slab() *messageSlab {
	if len(d.slabs) == 0 {
		d.slabs = make([]messageSlab, max(1, min(d.left+1, chunkSize)))
	}
	s := &d.slabs[0]
	d.slabs = d.slabs[1:]
	return s
}

func decodeRaftMessage(buf []byte, m *shoalpb.RaftMessage, d *chunks) error {
	r := reader{buf: buf}
	for {
		num, typ, ok := r.field()
		if !ok {
			break
		}
		switch {
		case typ == protowire.VarintType && num == rmShardID:
			m.ShardId = r.varint()
		case typ == protowire.VarintType && num == rmFromNode:
			m.FromNode = r.varint()
		case typ == protowire.VarintType && num == rmToNode:
			m.ToNode = r.varint()
		case typ == protowire.VarintType && num == rmEpoch:
			m.Epoch = r.varint()
		case typ == protowire.VarintType && num == rmRemoved:
			m.Removed = r.varint() != 0
		case typ == protowire.VarintType && num == rmQuiesce:
			m.Quiesce = r.varint() != 0
		case typ == protowire.BytesType && num == rmMessage:
			v := r.bytes()
			if r.err != nil {
				break
			}
			if m.Message != nil {
				return fmt.Errorf("%w: a raft message given twice", ErrMalformed)
			}
			var err error
			if m.Message, err = decodeMessage(v, d.slab(), 0); err != nil {
				return err
			}
			if m.Message.GetType() == raftpb.MsgReadIndex {
				// Raft keeps a read request until it is answered: decode
				// it again on its own, so that it keeps no chunk alive.
				if m.Message, err = decodeMessage(v, &messageSlab{}, 0); err != nil {
					return err
				}
			}
		default:
			r.skip(num, typ)
		}
	}
	return r.err
}

// messageSlab holds a decoded raftpb.Message and the scalars its pointer
// fields point to: one allocation instead of one per field. A batch's slabs
// are allocated together; Raft keeps none of its messages for long (a read
// request's, until it is answered), but the entries it keeps, so those are
// allocated one by one.
type messageSlab struct {
	msg                                                raftpb.Message
	typ                                                raftpb.MessageType
	to, from, term, logTerm, index, commit, hint, vote uint64
	reject                                             bool
}

// entrySlab is the same for an entry.
type entrySlab struct {
	ent         raftpb.Entry
	typ         raftpb.EntryType
	term, index uint64
}

// maxDepth bounds the nesting of responses, as protobuf's recursion limit
// does: each level costs a few bytes of input and a stack frame.
const maxDepth = protowire.DefaultRecursionLimit - 3

// decodeMessage decodes buf into s's message; depth counts the responses
// it is nested in.
func decodeMessage(buf []byte, s *messageSlab, depth int) (*raftpb.Message, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("%w: responses nested more than %d deep", ErrMalformed, maxDepth)
	}
	m := &s.msg
	r := reader{buf: buf}
	for {
		num, typ, ok := r.field()
		if !ok {
			break
		}
		if typ == protowire.VarintType {
			switch num {
			case msgType:
				// Any value, as protobuf-go decodes an enum (open, even
				// in proto2).
				s.typ, m.Type = raftpb.MessageType(int32(r.varint())), &s.typ
			case msgTo:
				s.to, m.To = r.varint(), &s.to
			case msgFrom:
				s.from, m.From = r.varint(), &s.from
			case msgTerm:
				s.term, m.Term = r.varint(), &s.term
			case msgLogTerm:
				s.logTerm, m.LogTerm = r.varint(), &s.logTerm
			case msgIndex:
				s.index, m.Index = r.varint(), &s.index
			case msgCommit:
				s.commit, m.Commit = r.varint(), &s.commit
			case msgReject:
				s.reject, m.Reject = r.varint() != 0, &s.reject
			case msgRejectHint:
				s.hint, m.RejectHint = r.varint(), &s.hint
			case msgVote:
				s.vote, m.Vote = r.varint(), &s.vote
			default:
				r.skip(num, typ)
			}
			continue
		}
		if typ != protowire.BytesType || num < msgEntries || num > msgResponses {
			r.skip(num, typ)
			continue
		}
		v := r.bytes()
		if r.err != nil {
			break
		}
		switch num {
		case msgEntries:
			e, err := decodeEntry(v)
			if err != nil {
				return nil, err
			}
			m.Entries = append(m.Entries, e)
		case msgSnapshot:
			if m.Snapshot != nil {
				return nil, fmt.Errorf("%w: a snapshot given twice", ErrMalformed)
			}
			m.Snapshot = &raftpb.Snapshot{}
			if err := proto.Unmarshal(v, m.Snapshot); err != nil {
				return nil, fmt.Errorf("%w: snapshot: %w", ErrMalformed, err)
			}
		case msgContext:
			m.Context = append(make([]byte, 0, len(v)), v...)
		case msgResponses:
			resp, err := decodeMessage(v, &messageSlab{}, depth+1)
			if err != nil {
				return nil, err
			}
			m.Responses = append(m.Responses, resp)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return m, nil
}

// decodeEntry decodes one entry; its data is a copy, since gRPC reuses the
// buffer it decodes from.
func decodeEntry(buf []byte) (*raftpb.Entry, error) {
	e := &entrySlab{}
	r := reader{buf: buf}
	for {
		num, typ, ok := r.field()
		if !ok {
			break
		}
		switch {
		case typ == protowire.VarintType && num == entType:
			e.typ, e.ent.Type = raftpb.EntryType(int32(r.varint())), &e.typ
		case typ == protowire.VarintType && num == entTerm:
			e.term, e.ent.Term = r.varint(), &e.term
		case typ == protowire.VarintType && num == entIndex:
			e.index, e.ent.Index = r.varint(), &e.index
		case typ == protowire.BytesType && num == entData:
			v := r.bytes()
			e.ent.Data = append(make([]byte, 0, len(v)), v...)
		default:
			r.skip(num, typ)
		}
	}
	return &e.ent, r.err
}
