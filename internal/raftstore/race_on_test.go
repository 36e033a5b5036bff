//go:build race

package raftstore_test

// raceEnabled: the race detector slows Pebble and the CRC of big shards
// several times over; the tests that move large shards move smaller ones
// under it (the full sizes run without -race).
const raceEnabled = true
