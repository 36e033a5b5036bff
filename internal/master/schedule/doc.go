// Package schedule holds the master's placement and scheduling decisions as
// pure functions: a snapshot of the cluster in, descriptors or operators
// out. Nothing here does I/O, reads a clock or starts a goroutine, so every
// decision can be tested from a table.
//
// PlaceInitial places a new cluster's shards. Invariants of every placement
// it returns: no node holds two replicas of a shard; when there are at
// least as many zones as replicas, a shard's replicas are in different
// zones, and otherwise as evenly spread over zones as they can be; replicas
// per node, and leaders per node, follow the nodes' weights within about
// one replica.
//
// Schedule looks at a Snapshot of a running cluster (nodes with their
// states, shards with their descriptors and leaders, operators in flight)
// and returns the operators to start, in priority order: repair, placement
// rules, drain, replica balance, leader balance, hot shards (see Schedule).
// An operator is a list of steps the master runs one after another through
// the shard's leader; ApplyStep says what each step does to a descriptor.
// Obsolete names the operators in flight that can no longer finish.
//
// Invariants of every result of Schedule:
//
//   - a shard gets at most one operator, and none while one is in flight;
//   - every step is valid on the descriptor the previous steps leave, and
//     no descriptor along the way has two replicas on one node;
//   - new replicas and new leaders go only to up nodes;
//   - every change of voters keeps a majority of the voters, before and
//     after, on live (up or draining) nodes; a shard without such a
//     majority gets no membership change at all;
//   - outside repair and drain, no zone gets more of a shard's replicas
//     than the zone limit (the fewest that lets RF replicas fit over the
//     zones of the nodes that hold replicas for good); repair and drain
//     break it only when no node keeps it;
//   - at most Config.MaxOperators operators in flight, and at most
//     Config.MaxOperatorsPerNode data moves touching a live node, counting
//     the ones in flight;
//   - operator and replica IDs are taken in order from the snapshot's
//     allocators;
//   - the same snapshot gives the same operators.
//
// What it deliberately does not do: run or time out operators, roll them
// back, or decide when a node is down; those belong to the master's loop
// around it. It does not wait for learners to catch up (the executor
// promotes them when they have) and it does not look at disk usage:
// weights stand for capacity.
package schedule
