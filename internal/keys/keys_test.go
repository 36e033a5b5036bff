package keys_test

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/shoaldb/shoal/internal/keys"
)

// Interesting integer values: zero, around every byte boundary, the top.
var (
	indexes = []uint64{0, 1, 2, 0x7f, 0xfe, 0xff, 0x100, 0x101, 0xfffe, 0xffff, 0x10000,
		0xffffff, 0x1000000, 1<<32 - 1, 1 << 32, 1<<56 - 1, 1 << 56, math.MaxInt64, math.MaxUint64 - 1, math.MaxUint64}
	shards = []uint64{0, 1, 2, 0xff, 0x100, 0xffff, 0x10000, keys.MaxShardID - 1, keys.MaxShardID}
	slots  = []uint16{0, 1, 0xff, 0x100, 0x101, 8191, 8192, keys.SlotCount - 2, keys.SlotCount - 1}
	users  = [][]byte{nil, {}, {0}, {0, 0}, {1}, []byte("a"), []byte("a\x00"), []byte("ab"), []byte("b"),
		{0xff}, {0xff, 0xff}, []byte("{tag}x")}
)

func TestDataKeyRoundTrip(t *testing.T) {
	for _, slot := range slots {
		for _, k := range users {
			b := keys.DataKey(slot, k)
			if b[0] != keys.DataPrefix || len(b) != 3+len(k) {
				t.Fatalf("DataKey(%d, %q) = %q: bad layout", slot, k, b)
			}
			if a := keys.AppendDataKey([]byte("pre"), slot, k); !bytes.Equal(a, append([]byte("pre"), b...)) {
				t.Fatalf("AppendDataKey(pre, %d, %q) = %q, want pre+%q", slot, k, a, b)
			}
			gs, gk, err := keys.DecodeDataKey(b)
			if err != nil || gs != slot || !bytes.Equal(gk, k) {
				t.Fatalf("DecodeDataKey(DataKey(%d, %q)) = %d, %q, %v", slot, k, gs, gk, err)
			}
		}
	}
}

func TestExpiryKeyRoundTrip(t *testing.T) {
	for _, slot := range slots {
		for _, at := range indexes {
			for _, k := range users {
				b := keys.ExpiryKey(slot, at, k)
				if b[0] != keys.ExpiryPrefix || len(b) != 11+len(k) {
					t.Fatalf("ExpiryKey(%d, %d, %q) = %q: bad layout", slot, at, k, b)
				}
				gs, ga, gk, err := keys.DecodeExpiryKey(b)
				if err != nil || gs != slot || ga != at || !bytes.Equal(gk, k) {
					t.Fatalf("DecodeExpiryKey(ExpiryKey(%d, %d, %q)) = %d, %d, %q, %v", slot, at, k, gs, ga, gk, err)
				}
			}
		}
	}
}

func TestRaftKeysRoundTrip(t *testing.T) {
	for _, shard := range shards {
		for _, i := range indexes {
			gs, gi, err := keys.DecodeRaftLogKey(keys.RaftLogKey(shard, i))
			if err != nil || gs != shard || gi != i {
				t.Fatalf("DecodeRaftLogKey(RaftLogKey(%d, %d)) = %d, %d, %v", shard, i, gs, gi, err)
			}
			gs, gi, err = keys.DecodeSessionKey(keys.SessionKey(shard, i))
			if err != nil || gs != shard || gi != i {
				t.Fatalf("DecodeSessionKey(SessionKey(%d, %d)) = %d, %d, %v", shard, i, gs, gi, err)
			}
		}
		gs, err := keys.DecodeReplicaStateKey(keys.ReplicaStateKey(shard))
		if err != nil || gs != shard {
			t.Fatalf("DecodeReplicaStateKey(ReplicaStateKey(%d)) = %d, %v", shard, gs, err)
		}
		// The per-shard singletons are distinct from each other and from
		// every log and session key.
		single := [][]byte{keys.HardStateKey(shard), keys.AppliedStateKey(shard), keys.TruncatedStateKey(shard)}
		for i, a := range single {
			for _, b := range single[i+1:] {
				if bytes.Equal(a, b) {
					t.Fatalf("shard %d: two raft state keys are both %q", shard, a)
				}
			}
			if _, _, err := keys.DecodeRaftLogKey(a); err == nil {
				t.Fatalf("state key %q decodes as a raft log key", a)
			}
			if _, _, err := keys.DecodeSessionKey(a); err == nil {
				t.Fatalf("state key %q decodes as a session key", a)
			}
		}
	}
}

func TestIdentityKey(t *testing.T) {
	for _, name := range []string{"", "cluster", "node"} {
		k := keys.IdentityKey(name)
		if k[0] != keys.IdentityPrefix || string(k[1:]) != name {
			t.Errorf("IdentityKey(%q) = %q", name, k)
		}
	}
	if bytes.Equal(keys.IdentityKey("cluster"), keys.IdentityKey("node")) {
		t.Error("identity keys collide")
	}
}

// checkOrder asserts that for every pair of parts, the byte order of their
// encodings equals cmpParts.
func checkOrder[P any](t *testing.T, name string, parts []P, enc func(P) []byte, cmpParts func(a, b P) int) {
	t.Helper()
	for _, a := range parts {
		ka := enc(a)
		for _, b := range parts {
			kb := enc(b)
			if got, want := bytes.Compare(ka, kb), cmpParts(a, b); got != want {
				t.Fatalf("%s: compare(enc(%v)=%x, enc(%v)=%x) = %d, want %d", name, a, ka, b, kb, got, want)
			}
		}
	}
}

func TestRaftLogKeyOrder(t *testing.T) {
	type p struct{ shard, index uint64 }
	var parts []p
	for _, s := range []uint64{0, 1, 0xff, 0x100, keys.MaxShardID} {
		for _, i := range indexes {
			parts = append(parts, p{s, i})
		}
	}
	checkOrder(t, "RaftLogKey", parts,
		func(x p) []byte { return keys.RaftLogKey(x.shard, x.index) },
		func(a, b p) int { return cmp.Or(cmp.Compare(a.shard, b.shard), cmp.Compare(a.index, b.index)) })
	checkOrder(t, "SessionKey", parts,
		func(x p) []byte { return keys.SessionKey(x.shard, x.index) },
		func(a, b p) int { return cmp.Or(cmp.Compare(a.shard, b.shard), cmp.Compare(a.index, b.index)) })

	// Random pairs, concentrated around large values and byte boundaries.
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		i := rng.Uint64() >> (rng.IntN(64))
		j := i + uint64(rng.IntN(600)) - 300
		ki, kj := keys.RaftLogKey(7, i), keys.RaftLogKey(7, j)
		if (bytes.Compare(ki, kj) < 0) != (i < j) {
			t.Fatalf("RaftLogKey(7, %d) < RaftLogKey(7, %d) is %v, want %v", i, j, bytes.Compare(ki, kj) < 0, i < j)
		}
	}
}

func TestReplicaStateKeyOrder(t *testing.T) {
	checkOrder(t, "ReplicaStateKey", shards, keys.ReplicaStateKey, cmp.Compare[uint64])
	span := keys.ReplicaStateSpan()
	for _, s := range shards {
		if !span.Contains(keys.ReplicaStateKey(s)) {
			t.Errorf("ReplicaStateSpan does not contain ReplicaStateKey(%d)", s)
		}
	}
}

func TestDataKeyOrder(t *testing.T) {
	type p struct {
		slot uint16
		k    []byte
	}
	var parts []p
	for _, s := range slots {
		for _, k := range users {
			parts = append(parts, p{s, k})
		}
	}
	checkOrder(t, "DataKey", parts,
		func(x p) []byte { return keys.DataKey(x.slot, x.k) },
		func(a, b p) int { return cmp.Or(cmp.Compare(a.slot, b.slot), bytes.Compare(a.k, b.k)) })
}

func TestExpiryKeyOrder(t *testing.T) {
	type p struct {
		slot uint16
		at   uint64
		k    []byte
	}
	var parts []p
	for _, s := range []uint16{0, 0xff, 0x100, keys.SlotCount - 1} {
		for _, at := range []uint64{0, 0xff, 0x100, 1 << 40, math.MaxUint64} {
			for _, k := range [][]byte{nil, {0}, []byte("a"), {0xff}} {
				parts = append(parts, p{s, at, k})
			}
		}
	}
	checkOrder(t, "ExpiryKey", parts,
		func(x p) []byte { return keys.ExpiryKey(x.slot, x.at, x.k) },
		func(a, b p) int {
			return cmp.Or(cmp.Compare(a.slot, b.slot), cmp.Compare(a.at, b.at), bytes.Compare(a.k, b.k))
		})
}

func TestDataSpan(t *testing.T) {
	type rng struct{ start, end uint32 }
	ranges := []rng{{0, 1}, {0, 256}, {255, 256}, {256, 512}, {1, 16383}, {8192, 16384}, {16383, 16384}, {0, 16384}, {5, 5}}
	for n := 1; n <= keys.SlotCount; n *= 4 {
		for _, i := range []int{0, n / 2, n - 1} {
			s, e := keys.ShardSlots(i, n)
			ranges = append(ranges, rng{uint32(s), uint32(e)})
		}
	}
	probe := []uint16{0, 1, 4, 5, 6, 254, 255, 256, 257, 511, 512, 8191, 8192, 16382, 16383}
	for _, r := range ranges {
		for name, f := range map[string]struct {
			span keys.Span
			enc  func(slot uint16, k []byte) []byte
		}{
			"DataSpan":   {keys.DataSpan(r.start, r.end), keys.DataKey},
			"ExpirySpan": {keys.ExpirySpan(r.start, r.end), func(s uint16, k []byte) []byte { return keys.ExpiryKey(s, 1<<40, k) }},
		} {
			for _, slot := range probe {
				want := r.start <= uint32(slot) && uint32(slot) < r.end
				for _, k := range [][]byte{nil, {0}, []byte("k"), {0xff, 0xff, 0xff}} {
					if got := f.span.Contains(f.enc(slot, k)); got != want {
						t.Fatalf("%s(%d, %d).Contains(slot %d, key %q) = %v, want %v", name, r.start, r.end, slot, k, got, want)
					}
				}
			}
			// The span holds nothing of any other family.
			for _, other := range otherFamilyKeys() {
				if other[0] == f.span.Start[0] {
					continue
				}
				if f.span.Contains(other) {
					t.Fatalf("%s(%d, %d) contains foreign key %q", name, r.start, r.end, other)
				}
			}
		}
	}
	// Expiry times at the extremes stay inside their slot's span.
	sp := keys.ExpirySpan(7, 8)
	for _, at := range []uint64{0, math.MaxUint64} {
		if !sp.Contains(keys.ExpiryKey(7, at, []byte{0xff})) {
			t.Errorf("ExpirySpan(7, 8) misses expiry key at %d", at)
		}
	}
}

func otherFamilyKeys() [][]byte {
	return [][]byte{
		keys.DataKey(0, nil), keys.DataKey(keys.SlotCount-1, []byte{0xff, 0xff}),
		keys.ExpiryKey(0, 0, nil), keys.ExpiryKey(keys.SlotCount-1, math.MaxUint64, []byte{0xff}),
		keys.RaftLogKey(0, 0), keys.RaftLogKey(keys.MaxShardID, math.MaxUint64),
		keys.HardStateKey(0), keys.SessionKey(keys.MaxShardID, math.MaxUint64),
		keys.ReplicaStateKey(0), keys.ReplicaStateKey(keys.MaxShardID),
		keys.IdentityKey(""), keys.IdentityKey("cluster"), keys.IdentityKey("\xff\xff"),
	}
}

func TestRaftLogSpan(t *testing.T) {
	for _, shard := range []uint64{0, 5, keys.MaxShardID} {
		for _, r := range [][2]uint64{{0, 1}, {5, 6}, {5, 300}, {0xff, 0x100}, {1, math.MaxUint64}, {7, 7}} {
			sp := keys.RaftLogSpan(shard, r[0], r[1])
			for _, i := range append(slices.Clone(indexes), r[0], r[1], r[0]+1, r[1]-1) {
				want := r[0] <= i && i < r[1]
				if got := sp.Contains(keys.RaftLogKey(shard, i)); got != want {
					t.Fatalf("RaftLogSpan(%d, %d, %d).Contains(index %d) = %v, want %v", shard, r[0], r[1], i, got, want)
				}
				for _, other := range []uint64{shard - 1, shard + 1} {
					if other <= keys.MaxShardID && sp.Contains(keys.RaftLogKey(other, i)) {
						t.Fatalf("RaftLogSpan(%d, ...) contains shard %d's entry %d", shard, other, i)
					}
				}
			}
			for _, k := range [][]byte{keys.HardStateKey(shard), keys.AppliedStateKey(shard), keys.TruncatedStateKey(shard), keys.SessionKey(shard, r[0])} {
				if sp.Contains(k) {
					t.Fatalf("RaftLogSpan(%d, %d, %d) contains non-log key %q", shard, r[0], r[1], k)
				}
			}
		}
	}
}

func shardRecords(shard uint64) map[string][]byte {
	m := map[string][]byte{
		"hardstate": keys.HardStateKey(shard),
		"applied":   keys.AppliedStateKey(shard),
		"truncated": keys.TruncatedStateKey(shard),
	}
	for _, i := range []uint64{0, 1, 0xff, 0x100, math.MaxUint64} {
		m[fmt.Sprintf("log %d", i)] = keys.RaftLogKey(shard, i)
		m[fmt.Sprintf("session %d", i)] = keys.SessionKey(shard, i)
	}
	return m
}

func TestShardRaftSpan(t *testing.T) {
	for _, shard := range []uint64{0, 1, 0xff, 0x100, 0xffff, keys.MaxShardID - 1, keys.MaxShardID} {
		sp := keys.ShardRaftSpan(shard)
		for name, k := range shardRecords(shard) {
			if !sp.Contains(k) {
				t.Errorf("ShardRaftSpan(%d) misses its %s key %q", shard, name, k)
			}
		}
		for _, other := range []uint64{shard - 1, shard + 1} {
			if other > keys.MaxShardID {
				continue // shard-1 of 0 and shard+1 of MaxShardID do not exist
			}
			for name, k := range shardRecords(other) {
				if sp.Contains(k) {
					t.Errorf("ShardRaftSpan(%d) contains shard %d's %s key %q", shard, other, name, k)
				}
			}
		}
		for _, k := range otherFamilyKeys() {
			if k[0] != keys.RaftPrefix && sp.Contains(k) {
				t.Errorf("ShardRaftSpan(%d) contains foreign key %q", shard, k)
			}
		}
		ss := keys.SessionSpan(shard)
		for name, k := range shardRecords(shard) {
			_, _, err := keys.DecodeSessionKey(k)
			if got, want := ss.Contains(k), err == nil; got != want {
				t.Errorf("SessionSpan(%d).Contains(%s key) = %v, want %v", shard, name, got, want)
			}
		}
		if bytes.Compare(ss.Start, sp.Start) < 0 || bytes.Compare(ss.End, sp.End) > 0 {
			t.Errorf("SessionSpan(%d) = %q not inside ShardRaftSpan %q", shard, ss, sp)
		}
	}
	// The spans of consecutive shards tile the Raft family.
	for _, s := range []uint64{0, 0xff, keys.MaxShardID - 1} {
		if !bytes.Equal(keys.ShardRaftSpan(s).End, keys.ShardRaftSpan(s+1).Start) {
			t.Errorf("ShardRaftSpan(%d).End != ShardRaftSpan(%d).Start", s, s+1)
		}
	}
}

func TestDecodersRejectMalformed(t *testing.T) {
	good := map[string][]byte{
		"log":     keys.RaftLogKey(3, 9),
		"session": keys.SessionKey(3, 9),
		"replica": keys.ReplicaStateKey(3),
		"data":    keys.DataKey(3, []byte("k")),
		"expiry":  keys.ExpiryKey(3, 9, []byte("k")),
	}
	decoders := map[string]func([]byte) error{
		"log":     func(b []byte) error { _, _, err := keys.DecodeRaftLogKey(b); return err },
		"session": func(b []byte) error { _, _, err := keys.DecodeSessionKey(b); return err },
		"replica": func(b []byte) error { _, err := keys.DecodeReplicaStateKey(b); return err },
		"data":    func(b []byte) error { _, _, err := keys.DecodeDataKey(b); return err },
		"expiry":  func(b []byte) error { _, _, _, err := keys.DecodeExpiryKey(b); return err },
	}
	bad := map[string][][]byte{
		"log": {nil, {}, {'r'}, good["log"][:13], append(slices.Clone(good["log"]), 0),
			good["session"], keys.HardStateKey(3), keys.DataKey(3, make([]byte, 11)),
			func() []byte { b := slices.Clone(good["log"]); b[0] = 'd'; return b }()},
		"session": {nil, {'r'}, good["session"][:13], append(slices.Clone(good["session"]), 0), good["log"], keys.AppliedStateKey(3)},
		"replica": {nil, {'m'}, good["replica"][:4], append(slices.Clone(good["replica"]), 0), keys.RaftLogKey(3, 9)[:5]},
		"data": {nil, {}, {'d'}, {'d', 0}, good["expiry"], keys.IdentityKey("xy"),
			keys.DataKey(keys.SlotCount, nil), {'d', 0xff, 0xff, 'k'}},
		"expiry": {nil, {'x'}, good["expiry"][:10], good["data"], keys.IdentityKey("0123456789"),
			keys.ExpiryKey(keys.SlotCount, 0, nil), {'x', 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0}},
	}
	for name, dec := range decoders {
		if err := dec(good[name]); err != nil {
			t.Errorf("%s decoder rejects a good key %q: %v", name, good[name], err)
		}
		for _, b := range bad[name] {
			if err := dec(b); !errors.Is(err, keys.ErrMalformed) {
				t.Errorf("%s decoder on %q: err = %v, want ErrMalformed", name, b, err)
			}
		}
	}
}

func TestSpanContains(t *testing.T) {
	sp := keys.Span{Start: []byte("b"), End: []byte("d")}
	for k, want := range map[string]bool{"": false, "a": false, "b": true, "b\x00": true, "c\xff": true, "d": false, "d\x00": false} {
		if got := sp.Contains([]byte(k)); got != want {
			t.Errorf("[b, d).Contains(%q) = %v, want %v", k, got, want)
		}
	}
}
