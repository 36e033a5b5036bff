// Package testcluster runs in-process Shoal storage clusters for tests:
// several stores, each with its own Pebble engine (in a temporary directory,
// or on a crashable in-memory filesystem), talking real gRPC over loopback
// through a fault-injecting network, with shards placed statically.
//
// Nodes can be stopped, crashed (losing unsynced writes), restarted from
// their data, partitioned and delayed. Helpers wait for conditions with
// deadlines; nothing here sleeps to order events.
//
// It is test-only infrastructure: production code never imports it.
package testcluster
