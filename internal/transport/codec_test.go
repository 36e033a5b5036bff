package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"
	"unsafe"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// randomBatch makes a batch that sets each field, or not, at random, with
// values from the whole range (presence of proto2 scalars included: a set
// pointer to zero is sent).
func randomBatch(r *rand.Rand) *shoalpb.RaftMessageBatch {
	u := func() uint64 {
		switch r.IntN(4) {
		case 0:
			return 0
		case 1:
			return uint64(r.IntN(200))
		case 2:
			return r.Uint64()
		default:
			return 1 << r.IntN(64)
		}
	}
	maybe := func() *uint64 {
		if r.IntN(3) == 0 {
			return nil
		}
		return new(u())
	}
	someBytes := func() []byte {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return []byte{}
		default:
			b := make([]byte, r.IntN(300))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		}
	}
	var message func(depth int) *raftpb.Message
	message = func(depth int) *raftpb.Message {
		m := &raftpb.Message{To: maybe(), From: maybe(), Term: maybe(), LogTerm: maybe(),
			Index: maybe(), Commit: maybe(), RejectHint: maybe(), Vote: maybe(), Context: someBytes()}
		switch r.IntN(8) {
		case 0:
		case 1:
			m.Type = raftpb.MessageType(int32(r.Uint32())).Enum() // unknown, maybe negative
		default:
			m.Type = raftpb.MessageType(r.IntN(len(raftpb.MessageType_name))).Enum()
		}
		if r.IntN(3) == 0 {
			m.Reject = new(r.IntN(2) == 0)
		}
		for range r.IntN(4) {
			e := &raftpb.Entry{Term: maybe(), Index: maybe(), Data: someBytes()}
			if r.IntN(2) == 0 {
				e.Type = raftpb.EntryType(r.IntN(len(raftpb.EntryType_name))).Enum()
			}
			m.Entries = append(m.Entries, e)
		}
		if r.IntN(8) == 0 {
			m.Snapshot = &raftpb.Snapshot{Data: someBytes(), Metadata: &raftpb.SnapshotMetadata{
				Index: maybe(), Term: maybe(),
				ConfState: &raftpb.ConfState{Voters: []uint64{u(), u()}, Learners: []uint64{u()}, AutoLeave: new(true)},
			}}
		}
		if depth < 3 && r.IntN(8) == 0 {
			for range 1 + r.IntN(2) {
				m.Responses = append(m.Responses, message(depth+1))
			}
		}
		return m
	}
	b := &shoalpb.RaftMessageBatch{}
	if r.IntN(2) == 0 {
		b.ClusterId, b.FromNode, b.ToNode = fmt.Sprintf("cluster-%d", r.IntN(100)), u(), u()
	}
	for range r.IntN(6) {
		m := &shoalpb.RaftMessage{ShardId: u(), FromNode: u(), ToNode: u(), Epoch: u(),
			Removed: r.IntN(4) == 0, Quiesce: r.IntN(4) == 0}
		if r.IntN(5) > 0 {
			m.Message = message(0)
		}
		b.Messages = append(b.Messages, m)
	}
	return b
}

func marshal(t testing.TB, c *Codec, v any) []byte {
	t.Helper()
	data, err := c.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Free()
	return data.Materialize()
}

func unmarshal(c *Codec, b []byte, v any) error {
	return c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, v)
}

// TestCodecMatchesProto checks the hand-written encoding against protobuf's,
// byte for byte, and decoding against the original, both ways.
func TestCodecMatchesProto(t *testing.T) {
	c := NewCodec()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		b := randomBatch(r)
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		got := marshal(t, c, b)
		if !bytes.Equal(got, want) {
			t.Fatalf("batch %d: encoded\n%x\nprotobuf encodes\n%x\n(%v)", i, got, want, b)
		}
		var dec shoalpb.RaftMessageBatch
		if err := unmarshal(c, want, &dec); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
		if !proto.Equal(&dec, b) {
			t.Fatalf("batch %d: decoded\n%v\nwant\n%v", i, &dec, b)
		}
	}
	if st := c.Stats(); st.Encoded != 3000 || st.Decoded != 3000 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCodecDecodedIsIndependent checks that a decoded batch owns its bytes:
// gRPC reuses the buffer it decoded from.
func TestCodecDecodedIsIndependent(t *testing.T) {
	c := NewCodec()
	in := &shoalpb.RaftMessageBatch{Messages: []*shoalpb.RaftMessage{{ShardId: 1, Message: &raftpb.Message{
		Type: raftpb.MsgApp.Enum(), Context: []byte("ctx"),
		Entries: []*raftpb.Entry{{Index: new(uint64(1)), Data: []byte("aaaa")}, {Index: new(uint64(2)), Data: []byte("bbbb")}},
	}}}}
	buf := marshal(t, c, in)
	var out shoalpb.RaftMessageBatch
	if err := unmarshal(c, buf, &out); err != nil {
		t.Fatal(err)
	}
	clear(buf)
	m := out.Messages[0].Message
	if string(m.Entries[0].Data) != "aaaa" || string(m.Entries[1].Data) != "bbbb" || string(m.Context) != "ctx" {
		t.Fatalf("decoded data changed with the buffer: %v", m)
	}
	if m.To != nil || m.Index != nil {
		t.Fatal("an unset field is set")
	}
}

// TestCodecRefuses checks what the decoder refuses, and that other messages
// go through the stock codec.
func TestCodecRefuses(t *testing.T) {
	c := NewCodec()
	good := marshal(t, c, &shoalpb.RaftMessageBatch{ClusterId: "c", Messages: []*shoalpb.RaftMessage{
		{ShardId: 3, Message: &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum()}}}})
	msgTwice := marshal(t, c, &shoalpb.RaftMessageBatch{})
	inner, _ := proto.Marshal(&raftpb.Message{Type: raftpb.MsgApp.Enum()})
	rm := append(append([]byte{tag(rmMessage, 2), byte(len(inner))}, inner...), append([]byte{tag(rmMessage, 2), byte(len(inner))}, inner...)...)
	msgTwice = append(append(msgTwice, tag(batchMessages, 2), byte(len(rm))), rm...)
	for name, in := range map[string][]byte{
		"truncated":         good[:len(good)-1],
		"bad cluster":       {tag(batchClusterID, 2), 2, 0xff, 0xfe},
		"bad tag":           {0},
		"end group":         {tag(5, 4)},
		"message twice":     msgTwice,
		"overlong varint":   {tag(batchFromNode, 0), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"length past end":   {tag(batchMessages, 2), 10, 1},
		"nested truncation": {tag(batchMessages, 2), 2, tag(rmMessage, 2), 5},
	} {
		var out shoalpb.RaftMessageBatch
		err := unmarshal(c, in, &out)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
		if perr := proto.Unmarshal(in, &shoalpb.RaftMessageBatch{}); perr == nil && name != "message twice" {
			t.Errorf("%s: protobuf accepts it", name)
		}
	}
	// Unknown fields and unknown enum values are skipped, as protobuf does.
	skip := append([]byte{tag(15, 0), 7, tag(14, 1), 1, 2, 3, 4, 5, 6, 7, 8, tag(13, 5), 1, 2, 3, 4}, good...)
	var out shoalpb.RaftMessageBatch
	if err := unmarshal(c, skip, &out); err != nil {
		t.Fatal(err)
	}
	if out.ClusterId != "c" || len(out.Messages) != 1 || out.Messages[0].ShardId != 3 {
		t.Fatalf("decoded %v", &out)
	}
	// An enum takes any value, as protobuf-go decodes it.
	unknownType := marshal(t, c, &shoalpb.RaftMessageBatch{Messages: []*shoalpb.RaftMessage{
		{Message: &raftpb.Message{Type: raftpb.MessageType(999).Enum(), To: new(uint64(2)),
			Entries: []*raftpb.Entry{{Type: raftpb.EntryType(-3).Enum()}}}}}})
	if err := unmarshal(c, unknownType, &out); err != nil {
		t.Fatal(err)
	}
	var want shoalpb.RaftMessageBatch
	if err := proto.Unmarshal(unknownType, &want); err != nil {
		t.Fatal(err)
	}
	if m := out.Messages[0].Message; m.GetType() != 999 || m.Entries[0].GetType() != -3 || !proto.Equal(&out, &want) {
		t.Fatalf("unknown enum values decoded as %v, protobuf decodes %v", &out, &want)
	}
	// Anything else is the stock codec's.
	resp := marshal(t, c, &shoalpb.RaftStreamResponse{BatchesReceived: 5})
	var got shoalpb.RaftStreamResponse
	if err := unmarshal(c, resp, &got); err != nil || got.BatchesReceived != 5 {
		t.Fatalf("fallback: %v %v", &got, err)
	}
	if st := c.Stats(); st.Encoded != 3 || st.Decoded != 10 {
		t.Fatalf("stats %+v: other messages counted", st)
	}
}

// discardUnknown drops the unknown fields protobuf keeps, which the codec
// skips.
func discardUnknown(m protoreflect.Message) {
	m.SetUnknown(nil)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				discardUnknown(v.List().Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			discardUnknown(v.Message())
		}
		return true
	})
}

// FuzzCodecDecode feeds the decoder arbitrary bytes: it must not panic, must
// fail where protobuf fails, and must decode what protobuf decodes the same
// way (but for unknown fields, which it skips, and an embedded message given
// twice, which it refuses and protobuf merges).
func FuzzCodecDecode(f *testing.F) {
	c := NewCodec()
	r := rand.New(rand.NewPCG(3, 4))
	for range 40 {
		f.Add(marshal(f, c, randomBatch(r)))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var ours, theirs shoalpb.RaftMessageBatch
		err := unmarshal(c, in, &ours)
		perr := proto.Unmarshal(in, &theirs)
		switch {
		case perr != nil && err == nil:
			t.Fatalf("protobuf refuses (%v), the codec decodes %v", perr, &ours)
		case perr != nil:
			return
		case err != nil:
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			if !bytes.Contains([]byte(err.Error()), []byte("given twice")) {
				t.Fatalf("the codec refuses (%v) what protobuf decodes: %v", err, &theirs)
			}
			return
		}
		discardUnknown(theirs.ProtoReflect())
		if !proto.Equal(&ours, &theirs) {
			t.Fatalf("codec decodes\n%v\nprotobuf decodes\n%v", &ours, &theirs)
		}
	})
}

// TestCodecInteroperates runs a Raft stream between the codec and the stock
// codec, both ways, over gRPC on loopback: a node of the previous version
// (stock codec) and one of this version talk.
func TestCodecInteroperates(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	serverCodec := NewCodec()
	for _, tc := range []struct {
		name       string
		serverOpts []grpc.ServerOption
		clientOpts []grpc.CallOption
	}{
		{name: "stock client, codec server", serverOpts: serverOptions(serverCodec)},
		{name: "codec client, stock server", clientOpts: []grpc.CallOption{grpc.ForceCodecV2(NewCodec())}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			rec := newRecorder()
			tr, err := New(Options{NodeID: 2, ClusterID: "c", Resolve: func(uint64) (string, error) { return "", errors.New("none") }, Handler: rec})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			srv := grpc.NewServer(tc.serverOpts...)
			tr.Register(srv)
			go srv.Serve(lis)
			defer srv.Stop()
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := shoalpb.NewRaftTransportClient(conn).RaftStream(ctx, tc.clientOpts...)
			if err != nil {
				t.Fatal(err)
			}
			var sent []*shoalpb.RaftMessage
			for i := range 50 {
				b := randomBatch(r)
				if i == 0 {
					b.ClusterId, b.ToNode = "c", 2
				}
				if err := stream.Send(b); err != nil {
					t.Fatal(err)
				}
				sent = append(sent, b.Messages...)
			}
			waitFor(t, 10*time.Second, func() error {
				if got := rec.count(); got != len(sent) {
					return fmt.Errorf("received %d of %d messages", got, len(sent))
				}
				return nil
			})
			if tc.serverOpts != nil && serverCodec.Stats().Decoded == 0 {
				t.Fatal("the server's codec decoded nothing")
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			for i, m := range rec.msgs {
				if !proto.Equal(m, sent[i]) {
					t.Fatalf("message %d arrived as\n%v\nsent\n%v", i, m, sent[i])
				}
			}
		})
	}
}

// TestTransportUsesCodec checks that the transport's streams are encoded
// by the codec.
func TestTransportUsesCodec(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	a := startEndpoint(t, bk, 1, "c", "")
	b := startEndpoint(t, bk, 2, "c", "")
	if err := a.t.Send(2, []*shoalpb.RaftMessage{msg(7, 1, 2, 1)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if b.rec.count() != 1 {
			return errors.New("not received")
		}
		return nil
	})
	if st := a.t.codec.Stats(); st.Encoded == 0 {
		t.Fatalf("the sender's codec encoded nothing: %+v", st)
	}
}

// TestCodecNesting checks responses nested within protobuf's recursion
// limit decode as protobuf decodes them, and that deeper nesting is refused
// (not a stack overflow).
func TestCodecNesting(t *testing.T) {
	c := NewCodec()
	nested := func(depth int) []byte {
		inner := []byte{}
		for range depth {
			inner = append(protowire.AppendVarint([]byte{tag(msgResponses, protowire.BytesType)}, uint64(len(inner))), inner...)
		}
		rm := append(protowire.AppendVarint([]byte{tag(rmMessage, protowire.BytesType)}, uint64(len(inner))), inner...)
		return append(protowire.AppendVarint([]byte{tag(batchMessages, protowire.BytesType)}, uint64(len(rm))), rm...)
	}
	var ours, theirs shoalpb.RaftMessageBatch
	in := nested(100)
	if err := unmarshal(c, in, &ours); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(in, &theirs); err != nil || !proto.Equal(&ours, &theirs) {
		t.Fatalf("100 levels: protobuf %v, equal %v", err, proto.Equal(&ours, &theirs))
	}
	deep := nested(protowire.DefaultRecursionLimit + 10)
	if err := unmarshal(c, deep, &ours); !errors.Is(err, ErrMalformed) {
		t.Fatalf("%d levels: got %v, want ErrMalformed", protowire.DefaultRecursionLimit+10, err)
	}
	if err := proto.Unmarshal(deep, &theirs); err == nil {
		t.Fatal("protobuf accepts it")
	}
}

// TestCodecNilElements checks that a nil element of a repeated message
// field is encoded as protobuf encodes it (an empty message), not a panic.
func TestCodecNilElements(t *testing.T) {
	c := NewCodec()
	b := &shoalpb.RaftMessageBatch{Messages: []*shoalpb.RaftMessage{nil, {ShardId: 1, Message: &raftpb.Message{
		Entries: []*raftpb.Entry{nil, {Data: []byte("x")}}, Responses: []*raftpb.Message{nil}}}}}
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := marshal(t, c, b); !bytes.Equal(got, want) {
		t.Fatalf("encoded %x, protobuf %x", got, want)
	}
	if _, err := c.Marshal(&shoalpb.RaftMessageBatch{ClusterId: "\xff"}); err == nil {
		t.Fatal("a cluster ID that is not UTF-8 was encoded")
	}
}

// TestCodecReadIndexOwnSlab checks that a read request, which Raft keeps
// until it is answered, does not share its allocation with the batch's
// other messages (it would keep them, and their entries, alive).
func TestCodecReadIndexOwnSlab(t *testing.T) {
	c := NewCodec()
	app := func() *shoalpb.RaftMessage {
		return &shoalpb.RaftMessage{ShardId: 1, Message: &raftpb.Message{Type: raftpb.MsgApp.Enum(),
			Entries: []*raftpb.Entry{{Data: make([]byte, 100)}}}}
	}
	read := &shoalpb.RaftMessage{ShardId: 2, Message: &raftpb.Message{Type: raftpb.MsgReadIndex.Enum(),
		Entries: []*raftpb.Entry{{Data: []byte("ctx")}}}}
	var out shoalpb.RaftMessageBatch
	if err := unmarshal(c, marshal(t, c, &shoalpb.RaftMessageBatch{Messages: []*shoalpb.RaftMessage{app(), read, app()}}), &out); err != nil {
		t.Fatal(err)
	}
	first := uintptr(unsafe.Pointer(out.Messages[0].Message))
	last := uintptr(unsafe.Pointer(out.Messages[2].Message))
	r := uintptr(unsafe.Pointer(out.Messages[1].Message))
	if last-first != 2*unsafe.Sizeof(messageSlab{}) {
		t.Fatalf("the appends are not in one chunk (%d bytes apart)", last-first)
	}
	if r >= first && r <= last {
		t.Fatal("the read request lies in the chunk of the batch's other messages")
	}
}

// BenchmarkCodec compares the codec with protobuf on a batch like those of
// a write load: appends with one 150-byte entry and their answers.
func BenchmarkCodec(b *testing.B) {
	batch := &shoalpb.RaftMessageBatch{}
	for i := range 32 {
		m := &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: new(uint64(2)), From: new(uint64(1)), Term: new(uint64(7)),
			LogTerm: new(uint64(7)), Index: new(uint64(1000 + i)), Commit: new(uint64(999 + i)),
			Entries: []*raftpb.Entry{{Term: new(uint64(7)), Index: new(uint64(1001 + i)), Type: raftpb.EntryNormal.Enum(), Data: make([]byte, 150)}}}
		if i%2 == 1 {
			m = &raftpb.Message{Type: raftpb.MsgAppResp.Enum(), To: new(uint64(1)), From: new(uint64(2)), Term: new(uint64(7)),
				Index: new(uint64(1000 + i)), Commit: new(uint64(999 + i))}
		}
		batch.Messages = append(batch.Messages, &shoalpb.RaftMessage{ShardId: uint64(i + 1), FromNode: 1, ToNode: 2, Epoch: 3, Message: m})
	}
	c := NewCodec()
	stock := c.fallback
	for _, bc := range []struct {
		name string
		enc  func(v any) (mem.BufferSlice, error)
		dec  func(mem.BufferSlice, any) error
	}{{"codec", c.Marshal, c.Unmarshal}, {"protobuf", stock.Marshal, stock.Unmarshal}} {
		b.Run(bc.name+"/encode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				d, err := bc.enc(batch)
				if err != nil {
					b.Fatal(err)
				}
				d.Free()
			}
		})
		b.Run(bc.name+"/decode", func(b *testing.B) {
			d, err := bc.enc(batch)
			if err != nil {
				b.Fatal(err)
			}
			buf := d.Materialize()
			b.ReportAllocs()
			for b.Loop() {
				var out shoalpb.RaftMessageBatch
				if err := bc.dec(mem.BufferSlice{mem.SliceBuffer(buf)}, &out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
