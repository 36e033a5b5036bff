//go:build shoal_bug_stale_reads

package raftstore

// plantedStaleReads: see plantedbug_off.go. THIS BUILD IS BROKEN ON
// PURPOSE: a replica that thinks it leads answers reads from its own state.
const plantedStaleReads = true
