package kv

import (
	"bytes"
	"errors"
	"math"
	"strconv"
	"testing"

	"github.com/shoaldb/shoal/api/shoalpb"
)

func TestValueRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		value []byte
		at    int64
		enc   []byte
	}{
		{nil, 0, []byte{0}},
		{[]byte("v"), 0, []byte{0, 'v'}},
		{[]byte("v"), 1, []byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 'v'}},
		{[]byte{}, 0x0102030405060708, []byte{1, 1, 2, 3, 4, 5, 6, 7, 8}},
		{[]byte("xyz"), math.MaxInt64, []byte{1, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 'x', 'y', 'z'}},
	} {
		enc := AppendValue(nil, tc.value, tc.at)
		if !bytes.Equal(enc, tc.enc) {
			t.Errorf("AppendValue(%q, %d) = %x, want %x", tc.value, tc.at, enc, tc.enc)
		}
		v, at, err := DecodeValue(enc)
		if err != nil || !bytes.Equal(v, tc.value) || at != tc.at {
			t.Errorf("DecodeValue(%x) = %q, %d, %v; want %q, %d", enc, v, at, err, tc.value, tc.at)
		}
	}
	// AppendValue appends.
	if got := AppendValue([]byte("pre"), []byte("v"), 0); string(got) != "pre\x00v" {
		t.Errorf("AppendValue did not append: %q", got)
	}
}

func TestDecodeValueMalformed(t *testing.T) {
	for _, b := range [][]byte{
		nil,
		{},
		{0x02},                                 // reserved flag
		{0x80, 'v'},                            // reserved flag
		{0x01},                                 // expiry missing
		{0x01, 0, 0, 0, 0, 0, 0, 0},            // expiry truncated
		{0x01, 0, 0, 0, 0, 0, 0, 0, 0},         // expiry 0 with the flag
		{0x01, 0x80, 0, 0, 0, 0, 0, 0, 0, 'v'}, // negative expiry
		{0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // -1
	} {
		if _, _, err := DecodeValue(b); !errors.Is(err, ErrCorruptValue) {
			t.Errorf("DecodeValue(%x): err %v, want ErrCorruptValue", b, err)
		}
	}
}

// FuzzDecodeValue checks that decoding never panics and that whatever
// decodes is canonical: encoding it again gives the same bytes.
func FuzzDecodeValue(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{0, 'v'})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 'v'})
	f.Add([]byte{1, 0xff})
	f.Add([]byte{3})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, at, err := DecodeValue(b)
		if err != nil {
			if !errors.Is(err, ErrCorruptValue) {
				t.Fatalf("error %v does not wrap ErrCorruptValue", err)
			}
			return
		}
		if at < 0 {
			t.Fatalf("negative expiry %d", at)
		}
		if enc := AppendValue(nil, v, at); !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding %x gave %x", b, enc)
		}
	})
}

// FuzzParseInt checks parseInt against its definition: Redis's string2ll
// accepts exactly the canonical decimal form of an int64.
func FuzzParseInt(f *testing.F) {
	for _, s := range []string{"0", "-0", "007", "+1", " 1", "9223372036854775807", "-9223372036854775808",
		"9223372036854775808", "123456789012345678901", "-", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseInt([]byte(s))
		want, err := strconv.ParseInt(s, 10, 64)
		canonical := err == nil && strconv.FormatInt(want, 10) == s
		if ok != canonical || (ok && got != want) {
			t.Fatalf("parseInt(%q) = %d, %v; canonical %v (%d)", s, got, ok, canonical, want)
		}
	})
}

// TestExpireAllowed: the EXPIRE conditions, with a key without an expiry
// (cur 0) counting as expiring never, and a condition this build does not
// know never met (so replicas of one build agree whatever a newer
// proposer sends).
func TestExpireAllowed(t *testing.T) {
	for _, tt := range []struct {
		c         shoalpb.ExpireCondition
		cur, next int64
		want      bool
	}{
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_NONE, 0, 5, true},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_NO_TTL, 0, 5, true},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_NO_TTL, 9, 5, false},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_HAS_TTL, 0, 5, false},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_GREATER, 0, 5, false},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_GREATER, 4, 5, true},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS, 0, 5, true},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS, 4, 5, false},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS_HAS_TTL, 0, 5, false},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS_HAS_TTL, 9, 5, true},
		{shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS_HAS_TTL, 4, 5, false},
		{shoalpb.ExpireCondition(99), 0, 5, false},
	} {
		if got := expireAllowed(tt.c, tt.cur, tt.next); got != tt.want {
			t.Errorf("expireAllowed(%v, %d, %d) = %v, want %v", tt.c, tt.cur, tt.next, got, tt.want)
		}
	}
}
