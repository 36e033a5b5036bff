package kv

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/storage"
)

// randomCommands returns a reproducible mix of every op over a few keys,
// with sessions, retries and a clock that moves so that keys expire.
func randomCommands(seed uint64, n int) []*shoalpb.KVCommand {
	rng := rand.New(rand.NewPCG(seed, seed))
	key := func() string { return fmt.Sprintf("k%d", rng.IntN(12)) }
	at := func(now int64) int64 {
		if rng.IntN(3) == 0 {
			return 0
		}
		return now + int64(rng.IntN(40)) - 5
	}
	now := t0
	var cmds []*shoalpb.KVCommand
	seqs := map[uint64]uint64{}
	for range n {
		now += int64(rng.IntN(4))
		if len(cmds) > 0 && rng.IntN(10) == 0 {
			// A retry of an earlier command, possibly in a session.
			c := proto.Clone(cmds[rng.IntN(len(cmds))]).(*shoalpb.KVCommand)
			c.NowMs = now
			cmds = append(cmds, c)
			continue
		}
		c := &shoalpb.KVCommand{NowMs: now, MaxValueBytes: 24}
		for range 1 + rng.IntN(3) {
			var op *shoalpb.KVOp
			switch rng.IntN(8) {
			case 0:
				op = putOp(key(), fmt.Sprint(rng.IntN(100)), withTTLAt(at(now)),
					withCond(shoalpb.Condition(rng.IntN(3))), func(p *shoalpb.PutOp) { p.ReturnOld = rng.IntN(2) == 0 })
			case 1:
				op = putOp(key(), "v", keepTTL)
			case 2:
				op = delOp(key(), rng.IntN(2) == 0)
			case 3:
				var exp []byte
				if rng.IntN(2) == 0 {
					exp = []byte(fmt.Sprint(rng.IntN(100)))
				}
				op = casOp(key(), exp, fmt.Sprint(rng.IntN(100)), at(now))
			case 4:
				op = incrOp(key(), int64(rng.IntN(7))-3)
			case 5:
				op = appendOp(key(), "ab")
			case 6:
				op = expireOp(key(), at(now))
			case 7:
				var es []indexEntry
				for range 3 {
					es = append(es, indexEntry{key(), now - int64(rng.IntN(30))})
				}
				op = deleteExpiredOp(es...)
				op.GetDeleteExpired().IdleSessions = []uint64{1, 2, 3}
				op.GetDeleteExpired().SessionsIdleBeforeMs = now - 50
			}
			c.Ops = append(c.Ops, op)
		}
		if id := uint64(rng.IntN(4)); id != 0 {
			c.SessionId = id
			c.Seq = seqs[id]
			seqs[id]++
			if d := uint64(rng.IntN(8)); c.Seq >= d {
				c.AckedBelow = c.Seq - d
			}
		}
		cmds = append(cmds, c)
	}
	return cmds
}

// applyInBatches applies cmds to h, cutting them into batches of random
// sizes drawn from rng.
func applyInBatches(h *harness, cmds []*shoalpb.KVCommand, rng *rand.Rand) [][]byte {
	var results [][]byte
	for len(cmds) > 0 {
		n := min(len(cmds), 1+rng.IntN(6))
		for _, r := range h.apply(cmds[:n]...) {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				h.t.Fatal(err)
			}
			results = append(results, b)
		}
		cmds = cmds[n:]
	}
	return results
}

func dumpAll(t *testing.T, eng *storage.Engine) [][2][]byte {
	t.Helper()
	it, err := eng.Reader().NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out [][2][]byte
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, [2][]byte{bytes.Clone(it.Key()), bytes.Clone(v)})
	}
	return out
}

// TestDeterministicApply applies one command sequence on two engines, cut
// into different batches, and requires identical results and identical
// stored bytes, record for record.
func TestDeterministicApply(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			cmds := randomCommands(seed, 600)
			a, b := newHarness(t, allSlots()), newHarness(t, allSlots())
			ra := applyInBatches(a, cmds, rand.New(rand.NewPCG(1, seed)))
			rb := applyInBatches(b, cmds, rand.New(rand.NewPCG(2, seed)))
			for i := range ra {
				if !bytes.Equal(ra[i], rb[i]) {
					t.Fatalf("command %d: results differ", i)
				}
			}
			da, db := dumpAll(t, a.eng), dumpAll(t, b.eng)
			if len(da) != len(db) {
				t.Fatalf("%d records vs %d", len(da), len(db))
			}
			if len(da) < 5 {
				t.Fatalf("only %d records: the sequence exercises too little", len(da))
			}
			for i := range da {
				if !bytes.Equal(da[i][0], db[i][0]) || !bytes.Equal(da[i][1], db[i][1]) {
					t.Fatalf("record %d: %q=%x vs %q=%x", i, da[i][0], da[i][1], db[i][0], db[i][1])
				}
			}
		})
	}
}
