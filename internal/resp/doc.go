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
// answered -MOVED to the leader, or -TRYAGAIN while the shard elects one
// (after the Backend waited for the election, node.Config.LeaderWait),
// unless the server is a proxy, which forwards instead.
//
// A connection's commands take effect in order, with one relaxation for
// pipelines: the key commands of a pipeline run at the same time, except
// that a command waits for the connection's running command on the same
// shard (Backend.ShardOf). So commands on one shard keep their order, as on
// one Redis master, while commands on different shards may take effect in
// any order, as on different Redis Cluster masters; replies are always
// written in order. Every other command waits for all before it. A
// connection goes on reading commands while its client is not reading
// replies, up to Options.MaxReplyBacklog of them queued (outbox), so that
// a client may send a whole pipeline before it reads.
//
// Limits protect the node from its clients: a command has at most MaxArgs
// arguments and MaxQueryBytes in all, an argument at most MaxBulkBytes, an
// inline command at most MaxInlineBytes; an unauthenticated client on a
// server with a password gets far smaller limits. The parser checks a
// length before it allocates, and grows an argument's buffer with what
// arrives (to at most twice what was received, at least a 64 KiB chunk),
// so a client that declares a huge length and sends little costs little.
// Malformed input gets an "ERR Protocol error: ..." reply and the
// connection is closed (after a half-close and a bounded drain, so that
// the reply is not lost to a reset). The parser is fuzzed:
//
//	go test -run '^$' -fuzz FuzzReadCommand -fuzztime 3m ./internal/resp/
package resp
