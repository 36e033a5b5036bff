package bench

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramQuantilesWithinError(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var all []time.Duration
	for range 100000 {
		d := time.Duration(rng.ExpFloat64()*2e6) + 10*time.Microsecond // mean ~2ms
		h.Record(d)
		all = append(all, d)
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := all[int(q*float64(len(all)))-1]
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/60+float64(time.Microsecond) {
			t.Errorf("p%v = %v, exact %v: below it, or above by more than 1/64", q*100, got, exact)
		}
	}
	if h.Count() != 100000 || h.Max() != all[len(all)-1] {
		t.Errorf("count %d max %v", h.Count(), h.Max())
	}
}

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for us := uint64(0); us < 1<<24; us = us*17/16 + 1 {
		b := bucketOf(us)
		if b < prev {
			t.Fatalf("bucket of %dµs is %d, below %d", us, b, prev)
		}
		if lo := lowOf(b); lo > us || float64(us-lo) > float64(us)/64+1 {
			t.Fatalf("%dµs in bucket %d starting at %d", us, b, lo)
		}
		prev = b
	}
	var h, o Histogram
	h.Record(time.Millisecond)
	o.Record(3 * time.Millisecond)
	h.Merge(&o)
	if h.Count() != 2 || h.Max() != 3*time.Millisecond || h.Mean() != 2*time.Millisecond {
		t.Fatalf("merge: count %d max %v mean %v", h.Count(), h.Max(), h.Mean())
	}
}
