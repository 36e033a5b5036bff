package keys_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/shoaldb/shoal/internal/keys"
)

func FuzzSlot(f *testing.F) {
	for _, s := range []string{"", "{", "}", "{}", "123456789", "foo", "{user1000}.following",
		"foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "}{a}", "\xff\x00{\x00}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, key []byte) {
		orig := bytes.Clone(key)
		slot := keys.Slot(key)
		if want := refSlot(key); slot != want {
			t.Fatalf("Slot(%q) = %d, reference %d", key, slot, want)
		}
		if crc, want := keys.CRC16(key), refCRC16(key); crc != want {
			t.Fatalf("CRC16(%q) = %#04x, reference %#04x", key, crc, want)
		}
		tag := keys.HashTag(key)
		if !bytes.Equal(tag, refHashTag(key)) {
			t.Fatalf("HashTag(%q) = %q, reference %q", key, tag, refHashTag(key))
		}
		// Wrapping the tag in braces anywhere after a brace-free prefix
		// keeps the slot, which is what makes multi-key ops routable.
		if len(tag) > 0 && !bytes.ContainsAny(tag, "}") {
			wrapped := append(append([]byte("pre{"), tag...), "}post{x}"...)
			if got := keys.Slot(wrapped); got != keys.CRC16(tag)%keys.SlotCount {
				t.Fatalf("Slot(%q) = %d, want the slot of tag %q", wrapped, got, tag)
			}
		}
		if !bytes.Equal(key, orig) {
			t.Fatalf("Slot modified its input")
		}
	})
}

// FuzzDecode feeds arbitrary bytes to every decoder. A decoder must not
// panic; it must accept exactly the inputs of its family's shape; and what it
// accepts must re-encode to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, b := range [][]byte{
		nil, {'d'}, {'r'}, {'m'}, {'x'}, {'s'},
		keys.DataKey(12182, []byte("foo")), keys.DataKey(keys.SlotCount-1, nil), {'d', 0x40, 0},
		keys.ExpiryKey(3, 1<<40, []byte("k")), {'x', 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0},
		keys.RaftLogKey(1, 0x1ff), keys.RaftLogKey(keys.MaxShardID, ^uint64(0)),
		keys.SessionKey(2, 42), keys.HardStateKey(3), keys.AppliedStateKey(3), keys.TruncatedStateKey(3),
		keys.ReplicaStateKey(7), keys.IdentityKey("cluster"),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		slotOK := len(b) >= 3 && binary.BigEndian.Uint16(b[1:]) < keys.SlotCount

		slot, k, err := keys.DecodeDataKey(b)
		checkErr(t, "DecodeDataKey", b, err, len(b) >= 3 && b[0] == keys.DataPrefix && slotOK)
		if err == nil && !bytes.Equal(keys.DataKey(slot, k), b) {
			t.Fatalf("DataKey(DecodeDataKey(%q)) = %q", b, keys.DataKey(slot, k))
		}

		slot, at, k, err := keys.DecodeExpiryKey(b)
		checkErr(t, "DecodeExpiryKey", b, err, len(b) >= 11 && b[0] == keys.ExpiryPrefix && slotOK)
		if err == nil && !bytes.Equal(keys.ExpiryKey(slot, at, k), b) {
			t.Fatalf("ExpiryKey(DecodeExpiryKey(%q)) = %q", b, keys.ExpiryKey(slot, at, k))
		}

		shard, idx, err := keys.DecodeRaftLogKey(b)
		checkErr(t, "DecodeRaftLogKey", b, err, len(b) == 14 && b[0] == keys.RaftPrefix && b[5] == 'l')
		if err == nil {
			if !bytes.Equal(keys.RaftLogKey(shard, idx), b) {
				t.Fatalf("RaftLogKey(DecodeRaftLogKey(%q)) = %q", b, keys.RaftLogKey(shard, idx))
			}
			if !keys.ShardRaftSpan(shard).Contains(b) || !keys.RaftLogSpan(shard, idx, idx+1).Contains(b) && idx != ^uint64(0) {
				t.Fatalf("raft log key %q (shard %d, index %d) outside its spans", b, shard, idx)
			}
		}

		shard, sess, err := keys.DecodeSessionKey(b)
		checkErr(t, "DecodeSessionKey", b, err, len(b) == 14 && b[0] == keys.RaftPrefix && b[5] == 'c')
		if err == nil {
			if !bytes.Equal(keys.SessionKey(shard, sess), b) {
				t.Fatalf("SessionKey(DecodeSessionKey(%q)) = %q", b, keys.SessionKey(shard, sess))
			}
			if !keys.SessionSpan(shard).Contains(b) {
				t.Fatalf("session key %q outside SessionSpan(%d)", b, shard)
			}
		}

		shard, err = keys.DecodeReplicaStateKey(b)
		checkErr(t, "DecodeReplicaStateKey", b, err, len(b) == 5 && b[0] == keys.ReplicaPrefix)
		if err == nil && !bytes.Equal(keys.ReplicaStateKey(shard), b) {
			t.Fatalf("ReplicaStateKey(DecodeReplicaStateKey(%q)) = %q", b, keys.ReplicaStateKey(shard))
		}

		if !bytes.Equal(b, orig) {
			t.Fatalf("a decoder modified its input")
		}
	})
}

func checkErr(t *testing.T, name string, b []byte, err error, wantOK bool) {
	t.Helper()
	switch {
	case wantOK && err != nil:
		t.Fatalf("%s(%q) = %v, want success", name, b, err)
	case !wantOK && err == nil:
		t.Fatalf("%s(%q) succeeded on a malformed key", name, b)
	case !wantOK && !errors.Is(err, keys.ErrMalformed):
		t.Fatalf("%s(%q) = %v, want ErrMalformed", name, b, err)
	}
}
