package resp_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/resp"
)

// TestWritesThroughLeaderTransfers: go-redis's cluster client, with its
// default of three redirections and no pause between them, writes and
// reads back while the leaderships of every shard move from node to node
// (as the master's scheduler moves them to balance load), and no command
// fails. While a
// leader hands over, the new leader still names the old one until it has
// won; the old one must not name the new one before then, or the client
// is sent back and forth until it gives up.
func TestWritesThroughLeaderTransfers(t *testing.T) {
	c := startClusterShards(t, 4, resp.Options{})
	ctx := ctxFor(t, 2*time.Minute)
	st, err := c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	rc := clusterClient(t, c, nil)

	const writers = 16
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
		failed   int
		acked    = make([]int, writers)
	)
	stop := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("transfer-%d", w)
			for n := 1; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := rc.Set(ctx, key, n, 0).Err(); err != nil {
					mu.Lock()
					failed++
					if len(failures) < 5 {
						failures = append(failures, fmt.Sprintf("%s=%d: %v", key, n, err))
					}
					mu.Unlock()
					continue
				}
				acked[w] = n
				// A read of the key after its write is acknowledged sees
				// it, whichever node leads by then.
				got, err := rc.Get(ctx, key).Int()
				if err != nil || got < n {
					mu.Lock()
					failed++
					if len(failures) < 5 {
						failures = append(failures, fmt.Sprintf("get %s after %d: %d, %v", key, n, got, err))
					}
					mu.Unlock()
				}
			}
		}()
	}

	transfers, abandoned := 0, 0
	for round := range 8 {
		for _, rt := range st.Routes.Shards {
			shard := rt.Shard.ShardId
			leader, err := c.Leader(shard)
			if err != nil {
				t.Fatal(err)
			}
			// The next node round the ring takes over.
			var to uint64
			for i, r := range rt.Shard.Replicas {
				if r.NodeId == leader.ID {
					to = rt.Shard.Replicas[(i+1+round%2)%len(rt.Shard.Replicas)].ReplicaId
				}
			}
			err = leader.Store().TransferLeader(ctx, shard, to)
			switch {
			case err == nil:
				transfers++
			case errors.Is(err, raftstore.ErrTransferFailed):
				abandoned++
			default:
				t.Fatalf("transfer of shard %d to replica %d: %v", shard, to, err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if failed > 0 {
		t.Fatalf("%d commands failed during %d leader transfers, for instance %v", failed, transfers, failures)
	}
	if transfers < 16 {
		t.Fatalf("only %d of %d transfers completed (%d abandoned): the test moved too few leaders", transfers, transfers+abandoned, abandoned)
	}
	total := 0
	for w, n := range acked {
		total += n
		if n == 0 {
			t.Fatalf("writer %d had no write acknowledged", w)
		}
		got, err := rc.Get(ctx, fmt.Sprintf("transfer-%d", w)).Int()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		if got < n {
			t.Fatalf("writer %d: read %d after write %d was acknowledged", w, got, n)
		}
	}
	t.Logf("%d writes through %d leader transfers (%d abandoned)", total, transfers, abandoned)
}
