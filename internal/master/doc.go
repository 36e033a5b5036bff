// Package master is Shoal's control server: the meta Raft group of 1, 3 or
// 5 masters that owns the cluster's identity, the storage nodes and their
// states, the shard table with its leader hints, and the ID allocators.
//
// The meta group reuses internal/raftstore: one shard (MetaShard) whose
// replicas are the masters (replica ID = master ID), with a state machine
// (metaState) that keeps the metadata in the master's own Pebble database
// and mirrors it in memory for reads. Every change is a MetaCommand through
// the meta group's log, so a new master leader has all of it.
//
// Only the leader changes state: it handles registrations and heartbeats,
// runs the failure detector and placement, and hands out work. Followers
// serve the shard table (GetRoutes, WatchRoutes, GetCluster) and answer
// writes with a NOT_LEADER error that names the leader. What only the
// leader keeps in memory — when each node last heartbeated, the freshest
// leader hints — is rebuilt by a new leader: heartbeat clocks restart (so
// no node is declared down for the failover itself) and hints come back with
// the next heartbeats.
package master
