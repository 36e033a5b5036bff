package kv

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
)

const (
	errInvalid    = shoalpb.KVErrorCode_KV_ERROR_INVALID
	errNotInteger = shoalpb.KVErrorCode_KV_ERROR_NOT_INTEGER
	errOverflow   = shoalpb.KVErrorCode_KV_ERROR_OVERFLOW
	errTooLarge   = shoalpb.KVErrorCode_KV_ERROR_TOO_LARGE
	errStale      = shoalpb.KVErrorCode_KV_ERROR_STALE_SEQUENCE

	condNX = shoalpb.Condition_CONDITION_NOT_EXISTS
	condXX = shoalpb.Condition_CONDITION_EXISTS
)

// opCase applies setup commands, then cmd, and checks cmd's result and the
// whole stored state afterwards: every data record (expired or not) and
// every expiry-index entry.
type opCase struct {
	name      string
	setup     []*shoalpb.KVCommand
	cmd       *shoalpb.KVCommand
	want      *shoalpb.KVCommandResult
	wantData  map[string]stored
	wantIndex []indexEntry
}

func runOpCases(t *testing.T, cases []opCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, allSlots())
			for i, c := range tc.setup {
				if r := h.one(c); r.Error != shoalpb.KVErrorCode_KV_ERROR_NONE {
					t.Fatalf("setup %d failed: %v", i, r)
				}
			}
			got := h.one(tc.cmd)
			if !proto.Equal(got, tc.want) {
				t.Errorf("result:\n got  %v\n want %v", got, tc.want)
			}
			data := dumpData(t, h.eng.Reader())
			if tc.wantData == nil {
				tc.wantData = map[string]stored{}
			}
			if !maps.Equal(data, tc.wantData) {
				t.Errorf("data:\n got  %v\n want %v", data, tc.wantData)
			}
			if idx := dumpIndex(t, h.eng.Reader()); !slices.Equal(idx, tc.wantIndex) {
				t.Errorf("expiry index:\n got  %v\n want %v", idx, tc.wantIndex)
			}
		})
	}
}

func TestApplyPut(t *testing.T) {
	runOpCases(t, []opCase{{
		name:     "new key",
		cmd:      cmdAt(t0, putOp("k", "v")),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v", 0}},
	}, {
		name:     "overwrite returns old",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1"))},
		cmd:      cmdAt(t0, putOp("k", "v2", returnOld)),
		want:     ok(opRes(true, true, "v1", 0)),
		wantData: map[string]stored{"k": {"v2", 0}},
	}, {
		// A plain SET does not read the key, so it does not report it
		// found either.
		name:     "plain put reports neither old value nor found",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1"))},
		cmd:      cmdAt(t0, putOp("k", "v2")),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v2", 0}},
	}, {
		name:     "old value when asked",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1"))},
		cmd:      cmdAt(t0, putOp("k", "v2", returnOld)),
		want:     ok(opRes(true, true, "v1", 0)),
		wantData: map[string]stored{"k": {"v2", 0}},
	}, {
		name:     "NX on absent key",
		cmd:      cmdAt(t0, putOp("k", "v", withCond(condNX))),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v", 0}},
	}, {
		name:      "NX on existing key writes nothing",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+50)))},
		cmd:       cmdAt(t0, putOp("k", "v2", withCond(condNX), returnOld)),
		want:      ok(opRes(false, true, "v1", 0)),
		wantData:  map[string]stored{"k": {"v1", t0 + 50}},
		wantIndex: []indexEntry{{"k", t0 + 50}},
	}, {
		name: "XX on absent key writes nothing",
		cmd:  cmdAt(t0, putOp("k", "v", withCond(condXX))),
		want: ok(opRes(false, false, "", 0)),
	}, {
		name:     "XX on existing key",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1"))},
		cmd:      cmdAt(t0, putOp("k", "v2", withCond(condXX))),
		want:     ok(opRes(true, true, "", 0)),
		wantData: map[string]stored{"k": {"v2", 0}},
	}, {
		name:     "NX on expired key replaces it and its index entry",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+10)))},
		cmd:      cmdAt(t0+10, putOp("k", "v2", withCond(condNX), returnOld)),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v2", 0}},
	}, {
		name:     "XX on expired key writes nothing",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+10)))},
		cmd:      cmdAt(t0+11, putOp("k", "v2", withCond(condXX))),
		want:     ok(opRes(false, false, "", 0)),
		wantData: map[string]stored{"k": {"v1", t0 + 10}}, wantIndex: []indexEntry{{"k", t0 + 10}},
	}, {
		name:      "TTL",
		cmd:       cmdAt(t0, putOp("k", "v", withTTLAt(t0+100))),
		want:      ok(opRes(true, false, "", 0)),
		wantData:  map[string]stored{"k": {"v", t0 + 100}},
		wantIndex: []indexEntry{{"k", t0 + 100}},
	}, {
		name:      "new TTL replaces the index entry",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+100)))},
		cmd:       cmdAt(t0, putOp("k", "v2", withTTLAt(t0+200))),
		want:      ok(opRes(true, true, "", 0)),
		wantData:  map[string]stored{"k": {"v2", t0 + 200}},
		wantIndex: []indexEntry{{"k", t0 + 200}},
	}, {
		// The plain put does not read the key, so the old expiry's index
		// entry stays, an orphan for the sweeper (TestApplyDeleteExpired).
		name:      "plain put clears the TTL",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+100)))},
		cmd:       cmdAt(t0, putOp("k", "v2")),
		want:      ok(opRes(true, false, "", 0)),
		wantData:  map[string]stored{"k": {"v2", 0}},
		wantIndex: []indexEntry{{"k", t0 + 100}},
	}, {
		name:      "KEEPTTL",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+100)))},
		cmd:       cmdAt(t0+1, putOp("k", "v2", keepTTL)),
		want:      ok(opRes(true, true, "", 0)),
		wantData:  map[string]stored{"k": {"v2", t0 + 100}},
		wantIndex: []indexEntry{{"k", t0 + 100}},
	}, {
		name:     "KEEPTTL on absent key",
		cmd:      cmdAt(t0, putOp("k", "v", keepTTL)),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v", 0}},
	}, {
		name:     "KEEPTTL over an expired key does not revive its TTL",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+10)))},
		cmd:      cmdAt(t0+20, putOp("k", "v2", keepTTL)),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v2", 0}},
	}, {
		name:  "expiry not after now leaves the key absent",
		setup: []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+100)))},
		cmd:   cmdAt(t0, putOp("k", "v2", withTTLAt(t0))),
		want:  ok(opRes(true, true, "", 0)),
	}, {
		name:     "return_old of an expired key",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v1", withTTLAt(t0+10)))},
		cmd:      cmdAt(t0+10, putOp("k", "v2", returnOld)),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v2", 0}},
	}, {
		name: "KEEPTTL with an expiry is invalid",
		cmd:  cmdAt(t0, putOp("k", "v", keepTTL, withTTLAt(t0+5))),
		want: fail(errInvalid, "ERR syntax error: KEEPTTL with an expiry", 0),
	}, {
		name: "unknown condition is invalid",
		cmd:  cmdAt(t0, putOp("k", "v", withCond(7))),
		want: fail(errInvalid, "ERR malformed command: unknown condition 7", 0),
	}, {
		name: "value above max_value_bytes",
		cmd:  &shoalpb.KVCommand{NowMs: t0, MaxValueBytes: 3, Ops: []*shoalpb.KVOp{putOp("k", "four")}},
		want: fail(errTooLarge, "ERR string exceeds maximum allowed size", 0),
	}, {
		name:     "empty key and value",
		cmd:      cmdAt(t0, putOp("", "")),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"": {"", 0}},
	}})
}

func TestApplyDelete(t *testing.T) {
	runOpCases(t, []opCase{{
		name:  "existing key with TTL",
		setup: []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v", withTTLAt(t0+100)), putOp("other", "o"))},
		cmd:   cmdAt(t0, delOp("k", true)),
		want:  ok(opRes(true, true, "v", 0)), wantData: map[string]stored{"other": {"o", 0}},
	}, {
		name:  "old value only when asked",
		setup: []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v"))},
		cmd:   cmdAt(t0, delOp("k", false)),
		want:  ok(opRes(true, true, "", 0)),
	}, {
		name: "absent key",
		cmd:  cmdAt(t0, delOp("k", true)),
		want: ok(opRes(false, false, "", 0)),
	}, {
		name:  "expired key is reported absent and its record removed",
		setup: []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v", withTTLAt(t0+10)))},
		cmd:   cmdAt(t0+10, delOp("k", true)),
		want:  ok(opRes(false, false, "", 0)),
	}})
}

func TestApplyCompareAndSet(t *testing.T) {
	runOpCases(t, []opCase{{
		name:     "expect absent on absent key",
		cmd:      cmdAt(t0, casOp("k", nil, "v", 0)),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v", 0}},
	}, {
		name:     "expect absent on existing key",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "cur"))},
		cmd:      cmdAt(t0, casOp("k", nil, "v", 0)),
		want:     ok(opRes(false, true, "cur", 0)),
		wantData: map[string]stored{"k": {"cur", 0}},
	}, {
		name:     "expect absent on expired key",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "cur", withTTLAt(t0+1)))},
		cmd:      cmdAt(t0+1, casOp("k", nil, "v", 0)),
		want:     ok(opRes(true, false, "", 0)),
		wantData: map[string]stored{"k": {"v", 0}},
	}, {
		name:      "match sets value and TTL",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "cur", withTTLAt(t0+100)))},
		cmd:       cmdAt(t0, casOp("k", []byte("cur"), "v", t0+300)),
		want:      ok(opRes(true, true, "", 0)),
		wantData:  map[string]stored{"k": {"v", t0 + 300}},
		wantIndex: []indexEntry{{"k", t0 + 300}},
	}, {
		name:     "mismatch reports current value",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "cur"))},
		cmd:      cmdAt(t0, casOp("k", []byte("cu"), "v", 0)),
		want:     ok(opRes(false, true, "cur", 0)),
		wantData: map[string]stored{"k": {"cur", 0}},
	}, {
		name: "compare on absent key",
		cmd:  cmdAt(t0, casOp("k", []byte("x"), "v", 0)),
		want: ok(opRes(false, false, "", 0)),
	}, {
		name:     "empty expected matches empty value",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", ""))},
		cmd:      cmdAt(t0, casOp("k", []byte{}, "v", 0)),
		want:     ok(opRes(true, true, "", 0)),
		wantData: map[string]stored{"k": {"v", 0}},
	}, {
		name: "expect absent and a value is invalid",
		cmd: cmdAt(t0, &shoalpb.KVOp{Op: &shoalpb.KVOp_CompareAndSet{CompareAndSet: &shoalpb.CompareAndSetOp{
			Key: []byte("k"), ExpectAbsent: true, Expected: []byte("x"),
		}}}),
		want: fail(errInvalid, "ERR malformed command: compare-and-set expects both absence and a value", 0),
	}})
}

func TestApplyIncrBy(t *testing.T) {
	runOpCases(t, []opCase{{
		name:     "absent key counts as zero",
		cmd:      cmdAt(t0, incrOp("n", 5)),
		want:     ok(opRes(true, false, "", 5)),
		wantData: map[string]stored{"n": {"5", 0}},
	}, {
		name:     "negative delta",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("n", "10"))},
		cmd:      cmdAt(t0, incrOp("n", -13)),
		want:     ok(opRes(true, true, "", -3)),
		wantData: map[string]stored{"n": {"-3", 0}},
	}, {
		name:      "keeps TTL",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("n", "1", withTTLAt(t0+100)))},
		cmd:       cmdAt(t0+50, incrOp("n", 1)),
		want:      ok(opRes(true, true, "", 2)),
		wantData:  map[string]stored{"n": {"2", t0 + 100}},
		wantIndex: []indexEntry{{"n", t0 + 100}},
	}, {
		name:     "expired key counts as zero and loses its TTL",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("n", "41", withTTLAt(t0+100)))},
		cmd:      cmdAt(t0+100, incrOp("n", 1)),
		want:     ok(opRes(true, false, "", 1)),
		wantData: map[string]stored{"n": {"1", 0}},
	}, {
		name:     "max int64 plus zero",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("n", "9223372036854775807"))},
		cmd:      cmdAt(t0, incrOp("n", 0)),
		want:     ok(opRes(true, true, "", 9223372036854775807)),
		wantData: map[string]stored{"n": {"9223372036854775807", 0}},
	}, {
		name:     "min int64 reached",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("n", "-9223372036854775807"))},
		cmd:      cmdAt(t0, incrOp("n", -1)),
		want:     ok(opRes(true, true, "", -9223372036854775808)),
		wantData: map[string]stored{"n": {"-9223372036854775808", 0}},
	}, {
		name:     "overflow up",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("n", "9223372036854775807"))},
		cmd:      cmdAt(t0, incrOp("n", 1)),
		want:     fail(errOverflow, "ERR increment or decrement would overflow", 0),
		wantData: map[string]stored{"n": {"9223372036854775807", 0}},
	}, {
		name:     "overflow down",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("n", "-9223372036854775808"))},
		cmd:      cmdAt(t0, incrOp("n", -1)),
		want:     fail(errOverflow, "ERR increment or decrement would overflow", 0),
		wantData: map[string]stored{"n": {"-9223372036854775808", 0}},
	}, {
		name:     "not an integer",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("n", "007"))},
		cmd:      cmdAt(t0, incrOp("n", 1)),
		want:     fail(errNotInteger, "ERR value is not an integer or out of range", 0),
		wantData: map[string]stored{"n": {"007", 0}},
	}})
}

func TestApplyIncrByParsing(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  int64
		ok    bool
	}{
		{"0", 0, true},
		{"1", 1, true},
		{"-1", -1, true},
		{"10", 10, true},
		{"9223372036854775807", 9223372036854775807, true},
		{"-9223372036854775808", -9223372036854775808, true},
		{"", 0, false},
		{"007", 0, false},
		{"00", 0, false},
		{"-0", 0, false},
		{"-01", 0, false},
		{"+1", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"1\n", 0, false},
		{"-", 0, false},
		{"1.5", 0, false},
		{"1e3", 0, false},
		{"0x10", 0, false},
		{"abc", 0, false},
		{"9223372036854775808", 0, false},
		{"-9223372036854775809", 0, false},
		{"18446744073709551616", 0, false},
		{"100000000000000000000", 0, false}, // 21 digits
		{"-10000000000000000000", 0, false}, // 20 bytes, below int64
		{"123456789012345678901", 0, false}, // 21 digits
	} {
		got, ok := parseInt([]byte(tc.value))
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseInt(%q) = %d, %v; want %d, %v", tc.value, got, ok, tc.want, tc.ok)
		}
		// Through the state machine: INCRBY 0 returns the value or fails.
		h := newHarness(t, allSlots())
		h.one(cmdAt(t0, putOp("n", tc.value)))
		res := h.one(cmdAt(t0, incrOp("n", 0)))
		if tc.ok && (res.Error != 0 || res.Results[0].IntValue != tc.want) {
			t.Errorf("INCRBY 0 on %q: %v, want %d", tc.value, res, tc.want)
		}
		if !tc.ok && res.Error != errNotInteger {
			t.Errorf("INCRBY 0 on %q: %v, want NOT_INTEGER", tc.value, res)
		}
	}
}

func TestApplyAppend(t *testing.T) {
	limited := func(max int64, ops ...*shoalpb.KVOp) *shoalpb.KVCommand {
		return &shoalpb.KVCommand{NowMs: t0, MaxValueBytes: max, Ops: ops}
	}
	runOpCases(t, []opCase{{
		name:     "creates absent key",
		cmd:      cmdAt(t0, appendOp("k", "abc")),
		want:     ok(opRes(true, false, "", 3)),
		wantData: map[string]stored{"k": {"abc", 0}},
	}, {
		name:      "appends and keeps TTL",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "ab", withTTLAt(t0+100)))},
		cmd:       cmdAt(t0, appendOp("k", "cd")),
		want:      ok(opRes(true, true, "", 4)),
		wantData:  map[string]stored{"k": {"abcd", t0 + 100}},
		wantIndex: []indexEntry{{"k", t0 + 100}},
	}, {
		name:     "to an expired key starts afresh",
		setup:    []*shoalpb.KVCommand{cmdAt(t0-10, putOp("k", "old", withTTLAt(t0)))},
		cmd:      cmdAt(t0, appendOp("k", "new")),
		want:     ok(opRes(true, false, "", 3)),
		wantData: map[string]stored{"k": {"new", 0}},
	}, {
		name:     "up to the limit",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "abc"))},
		cmd:      limited(5, appendOp("k", "de")),
		want:     ok(opRes(true, true, "", 5)),
		wantData: map[string]stored{"k": {"abcde", 0}},
	}, {
		name:     "beyond the limit",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "abc"))},
		cmd:      limited(5, appendOp("k", "def")),
		want:     fail(errTooLarge, "ERR string exceeds maximum allowed size", 0),
		wantData: map[string]stored{"k": {"abc", 0}},
	}})
}

func TestApplyExpire(t *testing.T) {
	runOpCases(t, []opCase{{
		name: "absent key",
		cmd:  cmdAt(t0, expireOp("k", t0+100)),
		want: ok(opRes(false, false, "", 0)),
	}, {
		name:      "sets TTL",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v"))},
		cmd:       cmdAt(t0, expireOp("k", t0+100)),
		want:      ok(opRes(true, true, "", 0)),
		wantData:  map[string]stored{"k": {"v", t0 + 100}},
		wantIndex: []indexEntry{{"k", t0 + 100}},
	}, {
		name:      "changes TTL and its index entry",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v", withTTLAt(t0+100)))},
		cmd:       cmdAt(t0, expireOp("k", t0+50)),
		want:      ok(opRes(true, true, "", 0)),
		wantData:  map[string]stored{"k": {"v", t0 + 50}},
		wantIndex: []indexEntry{{"k", t0 + 50}},
	}, {
		name:     "persist removes TTL",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v", withTTLAt(t0+100)))},
		cmd:      cmdAt(t0, expireOp("k", 0)),
		want:     ok(opRes(true, true, "", 0)),
		wantData: map[string]stored{"k": {"v", 0}},
	}, {
		name:     "persist without TTL changes nothing",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v"))},
		cmd:      cmdAt(t0, expireOp("k", 0)),
		want:     ok(opRes(false, true, "", 0)),
		wantData: map[string]stored{"k": {"v", 0}},
	}, {
		name:  "time not after now deletes",
		setup: []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v", withTTLAt(t0+100)))},
		cmd:   cmdAt(t0, expireOp("k", t0)),
		want:  ok(opRes(true, true, "", 0)),
	}, {
		name:  "negative time deletes",
		setup: []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v"))},
		cmd:   cmdAt(t0, expireOp("k", -1)),
		want:  ok(opRes(true, true, "", 0)),
	}, {
		name:      "expired key is absent",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("k", "v", withTTLAt(t0+10)))},
		cmd:       cmdAt(t0+10, expireOp("k", t0+100)),
		want:      ok(opRes(false, false, "", 0)),
		wantData:  map[string]stored{"k": {"v", t0 + 10}},
		wantIndex: []indexEntry{{"k", t0 + 10}},
	}})
}

func TestApplyDeleteExpired(t *testing.T) {
	runOpCases(t, []opCase{{
		name: "deletes expired keys with the listed expiry",
		setup: []*shoalpb.KVCommand{cmdAt(t0,
			putOp("a", "1", withTTLAt(t0+10)), putOp("b", "2", withTTLAt(t0+20)), putOp("c", "3", withTTLAt(t0+30)))},
		cmd:       cmdAt(t0+20, deleteExpiredOp(indexEntry{"a", t0 + 10}, indexEntry{"b", t0 + 20})),
		want:      ok(opRes(true, false, "", 2)),
		wantData:  map[string]stored{"c": {"3", t0 + 30}},
		wantIndex: []indexEntry{{"c", t0 + 30}},
	}, {
		name: "keeps a key rewritten since the sweep",
		setup: []*shoalpb.KVCommand{
			cmdAt(t0, putOp("a", "1", withTTLAt(t0+10))),
			cmdAt(t0+5, putOp("a", "2", withTTLAt(t0+15))),
		},
		cmd:       cmdAt(t0+20, deleteExpiredOp(indexEntry{"a", t0 + 10})),
		want:      ok(opRes(false, false, "", 0)),
		wantData:  map[string]stored{"a": {"2", t0 + 15}},
		wantIndex: []indexEntry{{"a", t0 + 15}},
	}, {
		// A plain SET left the old expiry's index entry (overlay.blind):
		// the sweep removes the entry and keeps the key.
		name: "removes the orphan a plain SET left, keeps the key",
		setup: []*shoalpb.KVCommand{
			cmdAt(t0, putOp("a", "1", withTTLAt(t0+10))),
			cmdAt(t0+5, putOp("a", "2")),
		},
		cmd:      cmdAt(t0+20, deleteExpiredOp(indexEntry{"a", t0 + 10})),
		want:     ok(opRes(false, false, "", 0)),
		wantData: map[string]stored{"a": {"2", 0}},
	}, {
		name:      "keeps a key not yet expired at the command's time",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("a", "1", withTTLAt(t0+10)))},
		cmd:       cmdAt(t0+9, deleteExpiredOp(indexEntry{"a", t0 + 10})),
		want:      ok(opRes(false, false, "", 0)),
		wantData:  map[string]stored{"a": {"1", t0 + 10}},
		wantIndex: []indexEntry{{"a", t0 + 10}},
	}, {
		name:     "keeps a key without TTL",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("a", "1"))},
		cmd:      cmdAt(t0+9, deleteExpiredOp(indexEntry{"a", t0})),
		want:     ok(opRes(false, false, "", 0)),
		wantData: map[string]stored{"a": {"1", 0}},
	}})
}

func TestApplyDeleteExpiredRemovesOrphanedIndexEntry(t *testing.T) {
	h := newHarness(t, allSlots())
	orphan := keys.ExpiryKey(keys.Slot([]byte("ghost")), uint64(t0), []byte("ghost"))
	if err := h.eng.Write(orphan, nil); err != nil {
		t.Fatal(err)
	}
	res := h.one(cmdAt(t0+1, deleteExpiredOp(indexEntry{"ghost", t0})))
	if !proto.Equal(res, ok(opRes(false, false, "", 0))) {
		t.Fatalf("result %v", res)
	}
	if _, found, err := h.eng.Get(orphan); err != nil || found {
		t.Fatalf("orphaned index entry still present (err %v)", err)
	}
}

func TestApplyAtomicCommand(t *testing.T) {
	big6 := strings.Repeat("v", 6<<20)
	runOpCases(t, []opCase{{
		name:     "a failed op discards earlier ops",
		setup:    []*shoalpb.KVCommand{cmdAt(t0, putOp("s", "text"))},
		cmd:      cmdAt(t0, putOp("a", "1", withTTLAt(t0+5)), incrOp("s", 1), putOp("b", "2")),
		want:     fail(errNotInteger, "ERR value is not an integer or out of range", 1),
		wantData: map[string]stored{"s": {"text", 0}},
	}, {
		name:     "later ops see earlier ones",
		cmd:      cmdAt(t0, putOp("a", "1"), appendOp("a", "2"), incrOp("a", 1), casOp("a", []byte("13"), "x", 0)),
		want:     ok(opRes(true, false, "", 0), opRes(true, true, "", 2), opRes(true, true, "", 13), opRes(true, true, "", 0)),
		wantData: map[string]stored{"a": {"x", 0}},
	}, {
		name:     "a key set with TTL and deleted leaves nothing",
		cmd:      cmdAt(t0, putOp("a", "1", withTTLAt(t0+5)), delOp("a", true)),
		want:     ok(opRes(true, false, "", 0), opRes(true, true, "1", 0)),
		wantData: nil,
	}, {
		name:      "TTL changed twice in one command leaves one index entry",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("a", "1", withTTLAt(t0+5)))},
		cmd:       cmdAt(t0, expireOp("a", t0+6), expireOp("a", t0+7), putOp("a", "2", keepTTL)),
		want:      ok(opRes(true, true, "", 0), opRes(true, true, "", 0), opRes(true, true, "", 0)),
		wantData:  map[string]stored{"a": {"2", t0 + 7}},
		wantIndex: []indexEntry{{"a", t0 + 7}},
	}, {
		// Three GETEX of a 6 MiB value return 18 MiB: the command fails at
		// the third, and none of their expiries is applied.
		name:  "results past 16 MiB fail the command",
		setup: []*shoalpb.KVCommand{cmdAt(t0, putOp("big", big6))},
		cmd: cmdAt(t0, getexOp("big", t0+5), putOp("a", "1"), getexOp("big", t0+6), getexOp("big", t0+7),
			getexOp("big", t0+8)),
		want:     fail(errTooLarge, msgResultsTooLarge, 3),
		wantData: map[string]stored{"big": {big6, 0}},
	}, {
		name:      "results up to 16 MiB are returned",
		setup:     []*shoalpb.KVCommand{cmdAt(t0, putOp("big", big6))},
		cmd:       cmdAt(t0, getexOp("big", t0+5), getexOp("big", t0+6)),
		want:      ok(opRes(true, true, big6, 0), opRes(true, true, big6, 0)),
		wantData:  map[string]stored{"big": {big6, t0 + 6}},
		wantIndex: []indexEntry{{"big", t0 + 6}},
	}, {
		name:     "an empty op fails the command",
		cmd:      cmdAt(t0, putOp("a", "1"), &shoalpb.KVOp{}),
		want:     fail(errInvalid, "ERR malformed command: empty or unknown op", 1),
		wantData: nil,
	}})
}

// getexOp is GETEX key PXAT at: the value returned, the expiry set.
func getexOp(key string, at int64) *shoalpb.KVOp {
	return &shoalpb.KVOp{Op: &shoalpb.KVOp_Expire{Expire: &shoalpb.ExpireOp{Key: []byte(key), ExpireAtMs: at, ReturnValue: true}}}
}

func TestApplyCommandsShareTheBatch(t *testing.T) {
	h := newHarness(t, allSlots())
	res := h.apply(
		cmdAt(t0, incrOp("n", 1)),
		cmdAt(t0, incrOp("n", 1), putOp("m", "x", withTTLAt(t0+9))),
		cmdAt(t0, incrOp("n", 1), expireOp("m", t0+8)),
		cmdAt(t0+8, incrOp("n", 1), delOp("m", false)),
	)
	if got := res[3].Results[0].IntValue; got != 4 {
		t.Fatalf("fourth INCR returned %d, want 4 (commands of one batch must see each other)", got)
	}
	if res[3].Results[1].Found {
		t.Fatalf("m should have expired at %d: %v", t0+8, res[3])
	}
	if data := dumpData(t, h.eng.Reader()); !maps.Equal(data, map[string]stored{"n": {"4", 0}}) {
		t.Fatalf("data %v", data)
	}
}

func TestApplyMalformed(t *testing.T) {
	h := newHarness(t, allSlots())
	garbage := [][]byte{
		{0xff, 0xff, 0xff},
		{0x0a}, // truncated field
		[]byte("not a protobuf at all"),
	}
	for _, g := range garbage {
		r := h.applyRaw(g)[0]
		if r.Error != errInvalid || r.ErrorMessage != "ERR malformed command" {
			t.Errorf("%q: %v, want INVALID", g, r)
		}
	}
	if r := h.one(cmdAt(-1, putOp("k", "v"))); r.Error != errInvalid {
		t.Errorf("negative now: %v", r)
	}
	// An empty command is valid and does nothing.
	if r := h.one(cmdAt(t0)); r.Error != 0 || len(r.Results) != 0 {
		t.Errorf("empty command: %v", r)
	}
	if data := dumpData(t, h.eng.Reader()); len(data) != 0 {
		t.Fatalf("malformed commands wrote %v", data)
	}
}

func TestApplyKeyOutsideShard(t *testing.T) {
	// The shard owns the lower half of the slots.
	desc := &shoalpb.ShardDescriptor{ShardId: 3, StartSlot: 0, EndSlot: keys.SlotCount / 2}
	var in, out string
	for i := 0; in == "" || out == ""; i++ {
		k := "key" + strings.Repeat("x", i)
		if keys.Slot([]byte(k)) < keys.SlotCount/2 {
			in = k
		} else {
			out = k
		}
	}
	h := newHarness(t, desc)
	r := h.one(cmdAt(t0, putOp(in, "1"), putOp(out, "2")))
	if r.Error != errInvalid || r.FailedOp != 1 || !strings.Contains(r.ErrorMessage, "not served by this shard") {
		t.Fatalf("result %v, want INVALID at op 1", r)
	}
	r = h.one(cmdAt(t0, deleteExpiredOp(indexEntry{out, 1})))
	if r.Error != errInvalid {
		t.Fatalf("sweep of a foreign key: %v, want INVALID", r)
	}
	if data := dumpData(t, h.eng.Reader()); len(data) != 0 {
		t.Fatalf("wrote %v", data)
	}
	if r := h.one(cmdAt(t0, putOp(in, "1"))); r.Error != 0 {
		t.Fatalf("key in the shard: %v", r)
	}
}

func TestGetHonoursExpiry(t *testing.T) {
	h := newHarness(t, allSlots())
	h.one(cmdAt(t0, putOp("k", "v", withTTLAt(t0+10)), putOp("p", "q")))
	slot := keys.Slot([]byte("k"))
	v, at, found, err := Get(h.eng.Reader(), slot, []byte("k"), t0+9)
	if err != nil || !found || string(v) != "v" || at != t0+10 {
		t.Fatalf("before expiry: %q %d %v %v", v, at, found, err)
	}
	if _, _, found, err := Get(h.eng.Reader(), slot, []byte("k"), t0+10); err != nil || found {
		t.Fatalf("at expiry: found %v, err %v", found, err)
	}
	if v, at, found, err := Get(h.eng.Reader(), keys.Slot([]byte("p")), []byte("p"), t0+1e9); err != nil || !found || string(v) != "q" || at != 0 {
		t.Fatalf("no TTL: %q %d %v %v", v, at, found, err)
	}
	if _, _, found, err := Get(h.eng.Reader(), 0, []byte("absent"), t0); err != nil || found {
		t.Fatalf("absent: found %v, err %v", found, err)
	}
	// A corrupt record is an error, not a panic or a silent miss.
	if err := h.eng.Write(keys.DataKey(5, []byte("bad")), []byte{0x80}); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := Get(h.eng.Reader(), 5, []byte("bad"), t0); err == nil {
		t.Fatal("corrupt record read without error")
	}
}

func TestApplyFailsOnCorruptRecord(t *testing.T) {
	h := newHarness(t, allSlots())
	k := []byte("k")
	if err := h.eng.Write(keys.DataKey(keys.Slot(k), k), []byte{0x01, 0x00}); err != nil {
		t.Fatal(err)
	}
	b := h.eng.NewIndexedBatch()
	defer b.Close()
	data, _ := proto.Marshal(cmdAt(t0, incrOp("k", 1)))
	if _, err := h.sm.Apply(b, []raftstore.Command{{Index: 1, Data: data}}); err == nil {
		t.Fatal("Apply over a corrupt record succeeded; it must report a storage failure")
	}
}

// BenchmarkApply measures applying single-op commands, as a leader's worker
// does for each write.
func BenchmarkApply(b *testing.B) {
	for _, bc := range []struct {
		name string
		op   func(i int) *shoalpb.KVOp
	}{
		{"put", func(i int) *shoalpb.KVOp { return putOp("key"+strconv.Itoa(i%1024), "value-of-some-bytes") }},
		{"put-ttl", func(i int) *shoalpb.KVOp {
			return putOp("key"+strconv.Itoa(i%1024), "value-of-some-bytes", withTTLAt(t0+int64(i)))
		}},
		{"incr", func(i int) *shoalpb.KVOp { return incrOp("key"+strconv.Itoa(i%1024), 1) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := newHarness(b, allSlots())
			data := make([][]byte, 1024)
			for i := range data {
				data[i], _ = proto.Marshal(cmdAt(t0, bc.op(i)))
			}
			batch := h.eng.NewIndexedBatch()
			defer func() { batch.Close() }()
			cmds := make([]raftstore.Command, 1)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				cmds[0] = raftstore.Command{Index: uint64(i + 1), Data: data[i%len(data)]}
				if _, err := h.sm.Apply(batch, cmds); err != nil {
					b.Fatal(err)
				}
				if i%256 == 255 {
					if err := batch.Commit(false); err != nil {
						b.Fatal(err)
					}
					batch.Close()
					batch = h.eng.NewIndexedBatch()
				}
			}
		})
	}
}
