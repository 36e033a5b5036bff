//go:build shoal_bug_early_ack

package kv

import (
	"context"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// THIS BUILD IS BROKEN ON PURPOSE (see plantedbug_off.go): a write is
// acknowledged as applied a moment after it is proposed, whether or not a
// majority ever logs it.

// proposeCmd is the planted bug: it proposes in
// the background and, unless the store answers within a millisecond (a
// refusal, typically NotLeader), reports every op applied without waiting
// for the commit.
func (d *DB) proposeCmd(ctx context.Context, shard uint64, data []byte, ops int) (any, error) {
	type answer struct {
		v   any
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		v, err := d.store.Propose(pctx, shard, data)
		ch <- answer{v, err}
	}()
	t := time.NewTimer(time.Millisecond)
	defer t.Stop()
	select {
	case a := <-ch:
		return a.v, a.err
	case <-t.C:
		res := &shoalpb.KVCommandResult{}
		for range ops {
			res.Results = append(res.Results, &shoalpb.KVOpResult{Applied: true})
		}
		return res, nil
	}
}
