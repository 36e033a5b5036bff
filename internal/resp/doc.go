// Package resp is Shoal's Redis protocol front end: it lets Redis Cluster
// clients (go-redis, redis-cli -c, redis-benchmark --cluster, ...) use a
// Shoal cluster unchanged.
//
// It owns the wire protocol (RESP2 and RESP3: a parser with hard limits and
// a writer), connections (pipelining, AUTH, HELLO, READONLY), the command
// table, and the mapping of Shoal's shards onto Redis Cluster's view: each
// shard is a slot range whose master is the shard's Raft leader and whose
// replicas are its followers. Keys are executed through the node's KV
// service (a Backend); a key whose shard this node does not lead is
// answered -MOVED to the leader, or -TRYAGAIN while the shard elects one,
// unless the server is a proxy, which forwards instead.
//
// Limits protect the node from its clients: a command has at most MaxArgs
// arguments and MaxQueryBytes in all, an argument at most MaxBulkBytes, an
// inline command at most MaxInlineBytes; an unauthenticated client on a
// server with a password gets far smaller limits. The parser never
// allocates more than it has received plus one small read buffer, so a
// client that declares a huge length and sends nothing costs nothing.
// Malformed input gets an error reply and the connection is closed.
package resp
