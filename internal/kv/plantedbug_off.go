//go:build !shoal_bug_early_ack

package kv

import "context"

// proposeCmd replicates a command and returns the state machine's result
// (for the ops count, see the planted bug). A build with the
// shoal_bug_early_ack tag replaces it with one that acknowledges writes
// before a majority has them, which the fault-tolerance suite
// (internal/chaos) must catch. Never built into a release.
func (d *DB) proposeCmd(ctx context.Context, shard uint64, data []byte, _ int) (any, error) {
	return d.store.Propose(ctx, shard, data)
}
