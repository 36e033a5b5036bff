package node

import (
	"context"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// AwaitLeader runs the KV service's wait for an election on shard (until
// is the request's end of waiting, zero before its first wait).
func AwaitLeader(ctx context.Context, n *Node, shard uint64, until *time.Time) bool {
	return n.kvsvc.awaitLeader(ctx, shard, until)
}

// SetRoutes gives the node's route cache t, as the master's watch would.
func SetRoutes(n *Node, t *shoalpb.RouteTable) { n.routes.update(t) }

// SetStreamCommandLimit sets how many commands of a BatchCommands stream
// run at once (maxStreamCommands).
func SetStreamCommandLimit(n *Node, limit int) { n.kvsvc.streamCommands = limit }
