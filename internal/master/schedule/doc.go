// Package schedule holds the master's placement and scheduling decisions as
// pure functions: a snapshot of the cluster in, descriptors or operators
// out. Nothing here does I/O or reads a clock, so every decision can be
// tested from a table.
//
// Invariants of every placement it returns: no node holds two replicas of a
// shard; when there are at least as many zones as replicas, a shard's
// replicas are in different zones, and otherwise as evenly spread over
// zones as they can be; replicas per node, and leaders per node, follow the
// nodes' weights within about one replica.
package schedule
