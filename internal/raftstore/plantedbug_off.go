//go:build !shoal_bug_stale_reads

package raftstore

// plantedStaleReads is true only in a build with the shoal_bug_stale_reads
// tag, which the fault-tolerance suite (internal/chaos) uses to prove its
// checker catches a leader that serves reads without ReadIndex. Never set
// in a release.
const plantedStaleReads = false
