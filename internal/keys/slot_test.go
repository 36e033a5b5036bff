package keys_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/shoaldb/shoal/internal/keys"
)

// refCRC16 is an independent CRC-16/XMODEM: the textbook bit-at-a-time
// polynomial division (poly 0x1021, init 0, MSB first, no final XOR), with no
// table. It shares no code with keys.CRC16.
func refCRC16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		for bit := 7; bit >= 0; bit-- {
			in := (c>>bit)&1 == 1
			top := crc&0x8000 != 0
			crc <<= 1
			if in != top {
				crc ^= 0x1021
			}
		}
	}
	return crc
}

// refHashTag is Redis's keyHashSlot tag rule written independently: the
// bytes between the first '{' and the next '}' if non-empty, else the key.
func refHashTag(key []byte) []byte {
	s := bytes.IndexByte(key, '{')
	if s < 0 {
		return key
	}
	e := bytes.IndexByte(key[s+1:], '}')
	if e <= 0 { // no '}' after the '{', or "{}"
		return key
	}
	return key[s+1 : s+1+e]
}

func refSlot(key []byte) uint16 { return refCRC16(refHashTag(key)) % 16384 }

func TestCRC16CheckValue(t *testing.T) {
	// The catalogue check value of CRC-16/XMODEM, which Redis Cluster's
	// specification quotes.
	if got := keys.CRC16([]byte("123456789")); got != 0x31C3 {
		t.Fatalf("CRC16(123456789) = %#04x, want 0x31c3", got)
	}
	if got := refCRC16([]byte("123456789")); got != 0x31C3 {
		t.Fatalf("reference CRC16(123456789) = %#04x, want 0x31c3 (test helper broken)", got)
	}
	if got := keys.CRC16(nil); got != 0 {
		t.Fatalf("CRC16(nil) = %#04x, want 0", got)
	}
}

func TestSlotRedisValues(t *testing.T) {
	// Values as returned by Redis's CLUSTER KEYSLOT.
	tests := []struct {
		key  string
		want uint16
	}{
		{"foo", 12182},
		{"bar", 5061},
		{"hello", 866},
		{"somekey", 11058},
		{"foo{hash_tag}", 2515},
		{"bar{hash_tag}", 2515},
		{"a", 15495},
		{"", 0},
	}
	for _, tt := range tests {
		if got := keys.Slot([]byte(tt.key)); got != tt.want {
			t.Errorf("Slot(%q) = %d, want %d", tt.key, got, tt.want)
		}
		if got := refSlot([]byte(tt.key)); got != tt.want {
			t.Errorf("reference Slot(%q) = %d, want %d (test helper broken)", tt.key, got, tt.want)
		}
	}
}

func TestHashTag(t *testing.T) {
	tests := []struct {
		key, tag string
	}{
		{"{user1000}.following", "user1000"},
		{"{user1000}.followers", "user1000"},
		{"foo{}{bar}", "foo{}{bar}"}, // empty first tag: whole key
		{"foo{{bar}}zap", "{bar"},    // first '{' to next '}'
		{"foo{bar}{zap}", "bar"},     // only the first tag counts
		{"", ""},
		{"{", "{"},
		{"}", "}"},
		{"{}", "{}"},
		{"}{", "}{"},
		{"}{a}", "a"},
		{"{a", "{a"},
		{"a}", "a}"},
		{"a{b", "a{b"},
		{"{a}", "a"},
		{"x{\x00}y", "\x00"},
		{"{{}}", "{"},
	}
	for _, tt := range tests {
		if got := keys.HashTag([]byte(tt.key)); string(got) != tt.tag {
			t.Errorf("HashTag(%q) = %q, want %q", tt.key, got, tt.tag)
		}
		if got := refHashTag([]byte(tt.key)); string(got) != tt.tag {
			t.Errorf("refHashTag(%q) = %q, want %q (test helper broken)", tt.key, got, tt.tag)
		}
		want := keys.CRC16([]byte(tt.tag)) % keys.SlotCount
		if got := keys.Slot([]byte(tt.key)); got != want {
			t.Errorf("Slot(%q) = %d, want CRC16(%q)%%16384 = %d", tt.key, got, tt.tag, want)
		}
	}
}

func TestSlotHashTagsShareSlot(t *testing.T) {
	groups := [][]string{
		{"{user1000}.following", "{user1000}.followers", "user1000", "x{user1000}", "{user1000}{other}"},
		{"foo{bar}{zap}", "bar", "{bar}", "a{bar}b"},
		{"foo{{bar}}zap", "{bar", "x{{bar}"},
	}
	for _, g := range groups {
		want := keys.Slot([]byte(g[0]))
		for _, k := range g[1:] {
			if got := keys.Slot([]byte(k)); got != want {
				t.Errorf("Slot(%q) = %d, want %d (same as %q)", k, got, want, g[0])
			}
		}
	}
	// "foo{}{bar}" hashes the whole key, not "bar".
	if keys.Slot([]byte("foo{}{bar}")) != refCRC16([]byte("foo{}{bar}"))%16384 {
		t.Errorf("Slot(foo{}{bar}) does not hash the whole key")
	}
	if keys.Slot([]byte("foo{}{bar}")) == keys.Slot([]byte("bar")) {
		t.Errorf("Slot(foo{}{bar}) equals Slot(bar); an empty tag must not fall through to the next one")
	}
}

func TestSlotMatchesReferenceRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("{}ab\x00\xff")
	for i := range 20000 {
		n := rng.IntN(24)
		k := make([]byte, n)
		for j := range k {
			if i%2 == 0 {
				k[j] = byte(rng.Uint32()) // any byte
			} else {
				k[j] = alphabet[rng.IntN(len(alphabet))] // dense in braces
			}
		}
		if got, want := keys.CRC16(k), refCRC16(k); got != want {
			t.Fatalf("CRC16(%q) = %#04x, reference %#04x", k, got, want)
		}
		if got, want := keys.Slot(k), refSlot(k); got != want {
			t.Fatalf("Slot(%q) = %d, reference %d", k, got, want)
		}
		if s := keys.Slot(k); s >= keys.SlotCount {
			t.Fatalf("Slot(%q) = %d out of range", k, s)
		}
	}
}

func TestSlotDistribution(t *testing.T) {
	// Every slot is reachable: Redis clients rely on keys like "{tag}" to
	// aim at any slot, so the mapping must be onto [0, 16384).
	seen := make([]bool, keys.SlotCount)
	n := 0
	for i := 0; n < keys.SlotCount && i < 1_000_000; i++ {
		s := keys.Slot(fmt.Appendf(nil, "k%d", i))
		if !seen[s] {
			seen[s] = true
			n++
		}
	}
	if n != keys.SlotCount {
		t.Fatalf("only %d of %d slots reached", n, keys.SlotCount)
	}
}

func TestShardSlots(t *testing.T) {
	for n := 1; n <= keys.SlotCount; n *= 2 {
		var next uint32
		for i := range n {
			start, end := keys.ShardSlots(i, n)
			if uint32(start) != next {
				t.Fatalf("n=%d shard %d starts at %d, want %d (ranges not contiguous/disjoint)", n, i, start, next)
			}
			if end <= start {
				t.Fatalf("n=%d shard %d: empty range [%d, %d)", n, i, start, end)
			}
			if int(end-start) != keys.SlotCount/n {
				t.Fatalf("n=%d shard %d owns %d slots, want %d", n, i, end-start, keys.SlotCount/n)
			}
			next = uint32(end)
		}
		if next != keys.SlotCount {
			t.Fatalf("n=%d: ranges end at %d, want %d", n, next, keys.SlotCount)
		}
	}
	// Spot values from the design: shard i of S owns [i*16384/S, (i+1)*16384/S).
	for _, tt := range []struct {
		i, n       int
		start, end uint16
	}{
		{0, 1, 0, 16384},
		{0, 64, 0, 256},
		{63, 64, 16128, 16384},
		{16383, 16384, 16383, 16384},
		{1, 2, 8192, 16384},
	} {
		s, e := keys.ShardSlots(tt.i, tt.n)
		if s != tt.start || e != tt.end {
			t.Errorf("ShardSlots(%d, %d) = [%d, %d), want [%d, %d)", tt.i, tt.n, s, e, tt.start, tt.end)
		}
	}
}
