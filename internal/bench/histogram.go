// Package bench owns Shoal's load generator (`shoal bench`): YCSB-style
// workloads over a key-value target, a latency histogram with bounded
// relative error, and the results. It holds no global state: a Run is
// self-contained and safe to run several at once.
package bench

import (
	"math"
	"math/bits"
	"time"
)

// Histogram records durations with a relative error below 1/64 (about
// 1.6%), from 1µs to about 4 years, in fixed memory, like an HDR
// histogram with two significant digits. The zero value is ready to use.
// It is not safe for concurrent use; merge per-worker histograms.
type Histogram struct {
	counts   [histBuckets]uint64
	total    uint64
	sum, max time.Duration
}

const (
	subBits     = 6 // 64 sub-buckets per power of two
	subCount    = 1 << subBits
	histBuckets = 42 * subCount
)

// bucketOf maps microseconds to a bucket: values below 64µs exactly, above
// that by power of two and the next 6 bits.
func bucketOf(us uint64) int {
	if us < subCount {
		return int(us)
	}
	exp := bits.Len64(us) - 1 - subBits // >= 0
	b := (exp+1)*subCount + int(us>>uint(exp)) - subCount
	return min(b, histBuckets-1)
}

// lowOf is the smallest value (µs) of bucket b.
func lowOf(b int) uint64 {
	if b < subCount {
		return uint64(b)
	}
	exp := b/subCount - 1
	return uint64(b%subCount+subCount) << uint(exp)
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	us := uint64(max(d, 0) / time.Microsecond)
	h.counts[bucketOf(us)]++
	h.total++
	h.sum += d
	h.max = max(h.max, d)
}

// Merge adds o's samples to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.total }

// Max is the largest sample.
func (h *Histogram) Max() time.Duration { return h.max }

// Mean is the average sample, 0 without samples.
func (h *Histogram) Mean() time.Duration {
	if h.total == 0 {
		return 0
	}
	return h.sum / time.Duration(h.total)
}

// Quantile returns the q-quantile (0 < q <= 1): the high end of the
// bucket holding it (at most the largest sample), so never below the exact
// value and within 1.6% above it, as HdrHistogram reports.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	rank = max(rank, 1)
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(time.Duration(lowOf(b+1))*time.Microsecond-1, h.max)
		}
	}
	return h.max
}
