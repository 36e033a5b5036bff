//go:build !shoal_bug_early_ack

package kv

// plantedEarlyAck is true only in a build with the shoal_bug_early_ack tag,
// which the fault-tolerance suite (internal/chaos) uses to prove its checker
// catches writes acknowledged before a majority has them. Never set in a
// release.
const plantedEarlyAck = false
