//go:build race

package raftlog

// raceEnabled scales the randomized tests down under the race detector,
// which slows Pebble several times over.
const raceEnabled = true
