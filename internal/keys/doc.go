// Package keys owns Shoal's key space: how a user key maps to one of the
// 16384 slots, and how every record a node stores is encoded as a Pebble key.
//
// Slot hashing is exactly Redis Cluster's: CRC-16/XMODEM of the key (or of its
// hash tag, the bytes between the first '{' and the next '}' when non-empty),
// modulo 16384. Any Redis Cluster client therefore routes a key to the right
// slot by itself.
//
// Key families (first byte), all integers big-endian so that byte order is
// numeric order:
//
//	d | slot(2) | user key                  user data (value header + value)
//	x | slot(2) | expire-at ms(8) | user key expiry index of keys with a TTL
//	r | shard(4) | 'l' | index(8)          Raft log entry
//	r | shard(4) | 'h'                     Raft HardState
//	r | shard(4) | 'a'                     applied state (applied index, ConfState)
//	r | shard(4) | 't'                     truncated state (first index - 1, its term)
//	r | shard(4) | 'c' | session(8)        client session record (exactly-once writes)
//	m | shard(4)                           local replica state (descriptor or tombstone)
//	s | name                               node identity (cluster ID, node ID)
//
// Invariants: the data and expiry records of a slot range [start, end) are one
// contiguous Pebble range per family (DataSpan, ExpirySpan), and every record
// of one shard's replica under 'r' is one contiguous range (ShardRaftSpan), so
// a shard can be copied, snapshotted or deleted with range operations. The
// encodings are stable on disk: changing one is a storage format change.
package keys
