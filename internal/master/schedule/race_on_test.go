//go:build race

package schedule

// raceEnabled: the race detector slows the random-cluster soak several
// times over; it checks fewer clusters under it.
const raceEnabled = true
