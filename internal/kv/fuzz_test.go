package kv

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
)

// FuzzApply feeds arbitrary command bytes to the state machine over a state
// that has plain, TTL, expired and non-integer keys and a session. Apply
// must never panic, must never report a storage failure, must return one
// *KVCommandResult, and must leave the expiry index in step with the data.
func FuzzApply(f *testing.F) {
	for _, c := range randomCommands(99, 40) {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xff})

	h := newHarness(f, allSlots())
	h.apply(
		cmdAt(t0, putOp("k0", "1"), putOp("k1", "x", withTTLAt(t0+10)), putOp("k2", "y", withTTLAt(t0+1000))),
		inSession(1, 0, 0, cmdAt(t0, appendOp("k3", "7"))),
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		b := h.eng.NewIndexedBatch()
		defer b.Close() // never committed: every input starts from the same state
		res, err := h.sm.Apply(b, []raftstore.Command{{Index: 1, Term: 1, Data: data}})
		if err != nil {
			t.Fatalf("Apply failed: %v", err)
		}
		if len(res) != 1 {
			t.Fatalf("%d results", len(res))
		}
		r, ok := res[0].(*shoalpb.KVCommandResult)
		if !ok {
			t.Fatalf("result is %T", res[0])
		}
		if r.Error != shoalpb.KVErrorCode_KV_ERROR_NONE && (len(r.Results) != 0 || r.ErrorMessage == "") {
			t.Fatalf("failed result %v must have a message and no op results", r)
		}
		checkExpiryIndex(t, b)
	})
}
