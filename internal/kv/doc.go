// Package kv owns Shoal's key-value semantics: the state machine that every
// replica of a shard runs over the commands of its Raft log, the encoding of
// stored values, the read path that honours expiry, and DB, the node-local
// facade that turns calls such as Put and IncrBy into proposed commands.
//
// # Deterministic apply
//
// A command (shoalpb.KVCommand) is applied by every replica of its shard, on
// different machines and at different times. The state machine is therefore
// a pure function of the command bytes and the state it reads: every replica
// applies the same bytes to the same result, byte for byte. Time comes only
// from KVCommand.now_ms, which the proposing leader stamps from its clock;
// size limits come only from KVCommand.max_value_bytes; relative TTLs are
// turned into absolute times by the proposer. Nothing on the apply path reads
// a clock, a random source, a map in iteration order or a node-local option.
//
// # All or nothing
//
// The ops of one command apply atomically. They are staged in an in-memory
// overlay (so later ops of a command see earlier ones) and written to the
// apply batch only if every op succeeded. A command that fails by its own
// rules (not an integer, overflow, too large, malformed, stale session
// sequence) writes nothing and reports why in its KVCommandResult, with
// Redis's error texts. Apply returns an error only for storage failures,
// which stop the node.
//
// # Records
//
// A key's value lives under keys.DataKey(slot, key) as
//
//	flags(1) | expire-at ms (8, big-endian, only if flags&1) | value
//
// (see AppendValue, DecodeValue). Every key with a TTL also has an entry
// keys.ExpiryKey(slot, expire-at, key) with an empty value, and the two are
// kept exactly in step: every change of a key's TTL, and every delete,
// updates its index entry in the same batch.
//
// # Expiry
//
// A key whose expire-at is non-zero and not after the command's now_ms is
// absent for every op and every read, although its record may still be
// stored. A write over such a key first removes its stale record and index
// entry. The leader's sweeper (DB) scans the expiry index and proposes
// DeleteExpiredOp commands, which delete a key only if it still has the
// expiry the sweeper saw and that expiry has passed, so a sweep racing with
// a rewrite never deletes the new value.
//
// # Sessions
//
// A command may carry a client session (session_id, seq), as in section 6.3
// of the Raft dissertation: the shard keeps, under keys.SessionKey, the
// results of the session's sequences that the client has not acknowledged,
// so a retried command returns its first result instead of applying twice.
// Sequences below the session's acknowledged mark are refused as stale. A
// session keeps at most 256 results; when a client never
// acknowledges, the oldest are dropped and the mark raised past them, so a
// late retry of one is refused rather than applied twice (the Go client
// sends a write refused so after attempts that were all refused unapplied
// again under a new sequence). A command's results carry at most 16 MiB of
// values (more fails it, TOO_LARGE, applying nothing). Past 4 MiB of
// results (old values returned by GETDEL and the like), the oldest but the
// one just applied are replaced by a small stale-sequence result, the mark
// left alone. The sweeper removes
// sessions idle for longer than Options.SessionTTL, looking for them every
// SessionTTL/16 and, while it finds full batches, at every sweep until it
// has read them all. The state machine keeps
// a few small session records decoded (session.go); a cached record is
// always exactly the one its apply batch holds.
//
// # Row cache
//
// DB.Get reads through the node's RowCache, if it has one: the stored
// records of recently read keys, so that a hot key costs a map lookup
// instead of a search of Pebble's memtables and levels. Reads through the
// cache are exactly as linearizable as reads of the engine: the state
// machines tell the cache of every data key they write before the apply
// batch is committed and again once it is (raftstore.Committer), and the
// store brackets every other change of a shard's data (snapshot ingest,
// replica removal) with RowCache.BlockSlots; rowcache.go states the
// invariant. MultiGet and Scan read an engine snapshot or iterator, not the
// cache.
package kv
