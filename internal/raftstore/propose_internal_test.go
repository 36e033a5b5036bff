package raftstore

import (
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// TestFitting checks how proposals are grouped into one MsgProp: as many
// as fit the uncommitted log's budget, and never none.
func TestFitting(t *testing.T) {
	ents := func(sizes ...int) []*raftpb.Entry {
		es := make([]*raftpb.Entry, len(sizes))
		for i, n := range sizes {
			es[i] = &raftpb.Entry{Data: make([]byte, n)}
		}
		return es
	}
	for _, tt := range []struct {
		sizes  []int
		budget uint64
		want   int
	}{
		{[]int{10, 10, 10}, 100, 3},
		{[]int{10, 10, 10}, 30, 3},
		{[]int{10, 10, 10}, 29, 2},
		{[]int{10, 10, 10}, 10, 1},
		{[]int{50, 1}, 10, 1},    // one always goes, whatever its size
		{[]int{5, 50, 1}, 10, 1}, // a group stops at the first that does not fit
		{[]int{0, 0, 7}, 7, 3},
	} {
		if got := fitting(ents(tt.sizes...), tt.budget); got != tt.want {
			t.Errorf("fitting(%v, %d) = %d, want %d", tt.sizes, tt.budget, got, tt.want)
		}
	}
}
