package raftlog

import (
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// entryCache holds the most recent contiguous entries of a log, bounded in
// bytes. It always ends at the log's last index when non-empty, because
// every append goes through it.
type entryCache struct {
	ents     []*raftpb.Entry
	sizes    []int
	bytes    int
	maxBytes int
}

func (c *entryCache) first() uint64 {
	if len(c.ents) == 0 {
		return 0
	}
	return c.ents[0].GetIndex()
}

func (c *entryCache) get(i uint64) *raftpb.Entry {
	f := c.first()
	if f == 0 || i < f || i >= f+uint64(len(c.ents)) {
		return nil
	}
	return c.ents[i-f]
}

// append adds ents, whose first index is at most one past the cached end,
// dropping any cached entries they replace, then evicts from the front to
// stay within maxBytes (always keeping the newest entry).
func (c *entryCache) append(ents []*raftpb.Entry) {
	first := ents[0].GetIndex()
	if f := c.first(); f != 0 {
		switch {
		case first < f:
			c.reset()
		case first <= f+uint64(len(c.ents)):
			keep := int(first - f)
			for _, s := range c.sizes[keep:] {
				c.bytes -= s
			}
			clear(c.ents[keep:])
			c.ents, c.sizes = c.ents[:keep], c.sizes[:keep]
		default:
			c.reset()
		}
	}
	for _, e := range ents {
		s := proto.Size(e)
		c.ents = append(c.ents, e)
		c.sizes = append(c.sizes, s)
		c.bytes += s
	}
	n := 0
	for c.bytes > c.maxBytes && n < len(c.ents)-1 {
		c.bytes -= c.sizes[n]
		n++
	}
	c.drop(n)
}

// truncateFront drops cached entries below index.
func (c *entryCache) truncateFront(index uint64) {
	f := c.first()
	if f == 0 || index <= f {
		return
	}
	n := min(int(index-f), len(c.ents))
	for _, s := range c.sizes[:n] {
		c.bytes -= s
	}
	c.drop(n)
}

func (c *entryCache) drop(n int) {
	if n == 0 {
		return
	}
	clear(c.ents[:n])
	c.ents, c.sizes = c.ents[n:], c.sizes[n:]
	if len(c.ents) == 0 {
		c.reset()
	}
}

func (c *entryCache) reset() {
	c.ents, c.sizes, c.bytes = nil, nil, 0
}
