package chaos

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Summary aggregates the reports of several runs: the figures of
// docs/reliability.md.
type Summary struct {
	Runs                    int
	Minutes                 float64
	RegisterOps, InsertOps  int
	Unknown                 int
	Violations, LostInserts int
	ByFault                 map[Fault]*FaultSummary
	FinalReplicationMax     time.Duration
}

// FaultSummary is what one kind of fault did over all runs.
type FaultSummary struct {
	Injected        int
	Seconds         float64
	OK, Attempted   int
	FirstWrites     []time.Duration // sorted
	FirstWriteFails int
	FullReplication []time.Duration // sorted
	Errors          int
}

// Summarize aggregates reports.
func Summarize(reps []*Report) *Summary {
	s := &Summary{ByFault: map[Fault]*FaultSummary{}}
	for _, r := range reps {
		s.Runs++
		s.Minutes += r.Elapsed.Minutes()
		s.RegisterOps += r.Linearizability.Ops
		s.Unknown += r.Linearizability.Unknown + r.UnknownInserts
		s.InsertOps += r.Inserts
		if !r.Linearizability.OK() {
			s.Violations++
		}
		s.LostInserts += len(r.Lost)
		s.FinalReplicationMax = max(s.FinalReplicationMax, r.FinalReplication)
		for _, f := range r.Faults {
			fs := s.ByFault[f.Fault]
			if fs == nil {
				fs = &FaultSummary{}
				s.ByFault[f.Fault] = fs
			}
			fs.Injected++
			fs.Seconds += (f.End - f.Start).Seconds()
			fs.OK += f.OK
			fs.Attempted += f.Attempted
			for _, p := range f.FirstWrite {
				if p.OK {
					fs.FirstWrites = append(fs.FirstWrites, p.After)
				} else {
					fs.FirstWriteFails++
				}
			}
			if f.FullReplication > 0 {
				fs.FullReplication = append(fs.FullReplication, f.FullReplication)
			}
			if f.Err != "" {
				fs.Errors++
			}
		}
	}
	for _, fs := range s.ByFault {
		slices.Sort(fs.FirstWrites)
		slices.Sort(fs.FullReplication)
	}
	return s
}

// quantile of sorted durations (nearest rank), 0 when empty.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(q*float64(len(d))+0.999999) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func ms(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// Markdown renders the summary as the tables of docs/reliability.md.
func (s *Summary) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d runs, %.1f minutes; %d register operations checked (%d with unknown outcome, writes and inserts), %d unique inserts; linearizability violations: %d; lost acknowledged inserts: %d; slowest return to full replication after a run: %s\n\n",
		s.Runs, s.Minutes, s.RegisterOps, s.Unknown, s.InsertOps, s.Violations, s.LostInserts, ms(s.FinalReplicationMax))
	b.WriteString("| fault | injected | fault time | ops ok / attempted during it | first write on the target's shards (partitions: on every shard) p50 / p99 / max (probes) | back to full replication p50 / max |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	var kinds []Fault
	for f := range s.ByFault {
		kinds = append(kinds, f)
	}
	slices.Sort(kinds)
	for _, f := range kinds {
		fs := s.ByFault[f]
		avail := "–"
		if fs.Attempted > 0 {
			avail = fmt.Sprintf("%.3f (%d / %d)", float64(fs.OK)/float64(fs.Attempted), fs.OK, fs.Attempted)
		}
		fw := "–"
		if len(fs.FirstWrites) > 0 || fs.FirstWriteFails > 0 {
			fw = fmt.Sprintf("%s / %s / %s (%d", ms(quantile(fs.FirstWrites, 0.5)), ms(quantile(fs.FirstWrites, 0.99)),
				ms(quantile(fs.FirstWrites, 1)), len(fs.FirstWrites))
			if fs.FirstWriteFails > 0 {
				fw += fmt.Sprintf(", %d without a write in 30 s", fs.FirstWriteFails)
			}
			fw += ")"
		}
		errs := ""
		if fs.Errors > 0 {
			errs = fmt.Sprintf(" (%d errors)", fs.Errors)
		}
		fmt.Fprintf(&b, "| %s%s | %d | %.0f s | %s | %s | %s / %s |\n", f, errs, fs.Injected, fs.Seconds, avail, fw,
			ms(quantile(fs.FullReplication, 0.5)), ms(quantile(fs.FullReplication, 1)))
	}
	return b.String()
}
