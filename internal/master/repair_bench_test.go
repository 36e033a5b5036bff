package master_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/master"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// BenchmarkRepair measures how long a cluster of 4 nodes (32 shards, 3
// replicas, default operator limits) takes to get back to full
// replication after losing a node, for several amounts of data per node.
// It reports the rebuild time (from the first repair operator to the last
// shard back at 3 voters on live nodes; leader balancing afterwards is not
// counted) and the whole outage of redundancy (from the
// kill, including the failure detector's 3 s and repair-after 1 s).
//
//	go test -run '^$' -bench BenchmarkRepair -benchtime 1x ./internal/master/
func BenchmarkRepair(b *testing.B) {
	for _, mib := range []int{64, 256} {
		b.Run(fmt.Sprintf("per-node=%dMiB", mib), func(b *testing.B) {
			for range b.N {
				benchRepair(b, mib)
			}
		})
	}
}

func benchRepair(b *testing.B, perNodeMiB int) {
	b.StopTimer()
	const nodes, shards, rf, valueSize = 4, 32, 3, 64 << 10
	opts := tc.Options{Masters: 1, Nodes: nodes, Shards: shards, Replicas: rf,
		Master: func(cfg *master.Config) { cfg.RepairAfter = time.Second }}
	// SHOAL_BENCH_LOG names a file for the cluster's logs (info level).
	if path := os.Getenv("SHOAL_BENCH_LOG"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		opts.Logger = slog.New(slog.NewTextHandler(f, nil))
	}
	c := tc.Start(b, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := c.WaitPlaced(ctx); err != nil {
		b.Fatal(err)
	}
	cl, err := client.Open(ctx, c.MasterAddrs())
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	// Each node holds rf/nodes of the logical data.
	keys := perNodeMiB << 20 * nodes / rf / valueSize
	value := make([]byte, valueSize)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < keys; i += 16 {
				if _, err := cl.Put(ctx, fmt.Appendf(nil, "bench-%08d", i), value); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return settled(c, rf) }); err != nil {
		b.Fatal(err)
	}
	victim := c.Nodes[nodes-1]
	st, _ := c.ClusterState()
	lost := 0
	for _, rt := range st.Routes.Shards {
		for _, r := range rt.Shard.Replicas {
			if r.NodeId == victim.ID {
				lost++
			}
		}
	}
	b.StartTimer()
	killed := time.Now()
	victim.Stop()
	var firstRepair int64
	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		for _, op := range append(st.Operators, st.Finished...) {
			if op.Kind == shoalpb.OperatorKind_OPERATOR_KIND_REPAIR && (firstRepair == 0 || op.CreatedMs < firstRepair) {
				firstRepair = op.CreatedMs
			}
		}
		for _, rt := range st.Routes.Shards {
			voters := 0
			for _, r := range rt.Shard.Replicas {
				if r.NodeId == victim.ID {
					return fmt.Errorf("shard %d still on the lost node", rt.Shard.ShardId)
				}
				if r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
					voters++
				}
			}
			if voters < rf {
				return fmt.Errorf("shard %d has %d voters", rt.Shard.ShardId, voters)
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	done := time.Now()
	b.StopTimer()
	rebuild := done.Sub(time.UnixMilli(firstRepair))
	mb := float64(perNodeMiB) * (1 << 20) / 1e6
	b.ReportMetric(done.Sub(killed).Seconds(), "s-degraded")
	b.ReportMetric(rebuild.Seconds(), "s-rebuild")
	b.ReportMetric(mb/rebuild.Seconds(), "MB/s-rebuilt")
	b.Logf("%d MiB per node, %d replicas lost: degraded %v, rebuild %v (%.0f MB/s)", perNodeMiB, lost,
		done.Sub(killed).Round(time.Millisecond), rebuild.Round(time.Millisecond), mb/rebuild.Seconds())
}
