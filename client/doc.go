// Package client is Shoal's Go client.
//
// Open connects to the masters, fetches the shard table and keeps it
// current (a WatchRoutes stream). Each request goes straight to the node that
// leads the key's shard; the client follows NOT_LEADER answers to the leader
// they name at once, takes the current descriptor from EPOCH_MISMATCH
// answers, refreshes the table when a node no longer holds a shard, and,
// while a shard elects a leader, asks its other replicas with a short
// backoff (a node that knows no leader may be one cut off from its peers)
// — all within the caller's
// context, whose deadline bounds every call (DefaultTimeout applies when it
// has none). One attempt at one node is bounded too (DefaultAttemptTimeout):
// a leader that stops answering (frozen, cut off) is left for another
// replica, which names the new leader once there is one.
//
// Writes carry a client session (an ID and a sequence number per write), so
// a write retried after an ambiguous failure — a timeout, a leader that
// stopped — applies once. An error that reaches the caller says why: a
// sentinel to test with errors.Is (ErrNotInteger, ErrTimeout, ...), and
// ErrAmbiguous when a write's outcome could not be learned.
//
// A Client is safe for concurrent use and should be shared: it pools one
// gRPC connection per node, and the requests in flight to a node share one
// KV.BatchCommands stream, several to a message, which costs the client
// and the nodes less CPU than a unary call each (WithoutCommandBatching
// turns that off).
package client
