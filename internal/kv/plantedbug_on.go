//go:build shoal_bug_early_ack

package kv

// plantedEarlyAck: see plantedbug_off.go. THIS BUILD IS BROKEN ON PURPOSE:
// a write is acknowledged as applied a moment after it is proposed, whether
// or not a majority ever logs it.
const plantedEarlyAck = true
