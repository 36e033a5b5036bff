package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/bench"
)

// clientTarget drives the cluster through the Go client.
type clientTarget struct{ c *client.Client }

func (t clientTarget) Get(ctx context.Context, key []byte) error {
	_, _, err := t.c.Get(ctx, key)
	return err
}

func (t clientTarget) Put(ctx context.Context, key, value []byte) error {
	_, err := t.c.Put(ctx, key, value)
	return err
}

func newBenchCmd() *cobra.Command {
	f := &clientFlags{}
	var (
		o        bench.Options
		workload string
		dist     string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load a cluster with a YCSB-style workload and measure it",
		Long: `Drive the cluster through the Go client with a YCSB-style workload and report
throughput and latency (p50, p99, p99.9, max from a histogram with 1.6%
resolution). Workloads: load (insert every record once), a (50% reads, 50%
updates), b (95/5), c (reads only), w (updates only). Run load first so that
reads find their keys.

  shoal bench --workload load --records 100000
  shoal bench --workload a --duration 30s --concurrency 64 --distribution zipfian

A progress line is printed every second on stderr; --json prints the result
for scripts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, err := bench.LookupWorkload(workload)
			if err != nil {
				return err
			}
			o.Workload = w
			switch dist {
			case "uniform":
			case "zipfian":
				o.Zipfian = true
			default:
				return fmt.Errorf("--distribution %q: want uniform or zipfian", dist)
			}
			octx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			c, err := client.Open(octx, f.addrs())
			cancel()
			if err != nil {
				return err
			}
			defer c.Close()
			o.Timeout = f.timeout
			errw := cmd.ErrOrStderr()
			o.Progress = func(p bench.Progress) {
				fmt.Fprintf(errw, "%6.0fs  %10d ops  %9.0f ops/s  %d errors\n", p.Elapsed.Seconds(), p.Ops, p.OpsPerSec, p.Errors)
			}
			res, err := bench.Run(cmd.Context(), clientTarget{c}, o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.json {
				if err := printJSON(out, res); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "workload %s: %d records, %d-byte values, %d clients, %s keys\n", res.Workload, res.Records, res.ValueSize,
					res.Concurrency, dist)
				fmt.Fprintf(out, "%d ops in %.1fs: %.0f ops/s, %d errors\n\n", res.Ops, res.Seconds, res.OpsPerSec, res.Errors)
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
				fmt.Fprintln(tw, "OP\tCOUNT\tMEAN ms\tP50 ms\tP99 ms\tP99.9 ms\tMAX ms\t")
				for _, row := range []struct {
					name string
					l    bench.Latency
				}{{"read", res.Read}, {"update", res.Update}, {"all", res.All}} {
					if row.l.Count == 0 {
						continue
					}
					fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", row.name, row.l.Count, row.l.Mean, row.l.P50, row.l.P99, row.l.P999, row.l.Max)
				}
				tw.Flush()
			}
			if res.Errors > 0 {
				return fmt.Errorf("%d operations failed; first: %s", res.Errors, res.FirstError)
			}
			return nil
		},
	}
	f.add(cmd)
	fl := cmd.Flags()
	fl.StringVar(&workload, "workload", "a", "load, a, b, c or w")
	fl.IntVar(&o.Records, "records", 100000, "number of keys")
	fl.IntVar(&o.ValueSize, "value-size", 100, "bytes per written value")
	fl.IntVar(&o.Concurrency, "concurrency", 64, "concurrent clients")
	fl.DurationVar(&o.Duration, "duration", 30*time.Second, "how long to run (not for load)")
	fl.IntVar(&o.Ops, "ops", 0, "stop after this many operations (0: run for --duration)")
	fl.StringVar(&dist, "distribution", "uniform", "key distribution: uniform or zipfian")
	return cmd
}
