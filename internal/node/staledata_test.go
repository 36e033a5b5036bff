package node_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/node"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestNodeWithOldDataIsRefused: a node that crashes comes back with what
// it synced and rejoins; a node whose data directory is replaced by a copy
// taken earlier (what was on its disk at that moment: CrashImage) is
// refused by the masters with ErrStaleData, although it stopped as by a
// crash too: its heartbeats since the copy carried higher data sequences.
// Its Raft state in that copy could forget entries it acknowledged since,
// or vote a second time in a term.
func TestNodeWithOldDataIsRefused(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: 8, CrashableFS: true})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	victim := c.Nodes[0]
	m, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	// waitBeats waits until the master has had a heartbeat from the victim
	// sent after now and another after that.
	waitBeats := func() {
		t.Helper()
		for range 2 {
			now := time.Now()
			if err := tc.WaitFor(ctx, func() error {
				if seen := m.Server().Heartbeats()[victim.ID]; !seen.After(now) {
					return fmt.Errorf("no heartbeat from node %d since %v", victim.ID, now.Format(time.StampMilli))
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// A crash loses nothing the node synced: it rejoins.
	waitBeats()
	victim.Crash()
	if err := victim.Restart(); err != nil {
		t.Fatalf("restart after a crash: %v", err)
	}

	// A copy of its disk, then more heartbeats; then it comes back on the
	// copy.
	waitBeats()
	old := victim.CrashImage()
	waitBeats()
	victim.CrashTo(old)
	err = victim.Restart()
	if !errors.Is(err, node.ErrStaleData) {
		t.Fatalf("restart on an older copy of its data: %v, want ErrStaleData", err)
	}
	t.Logf("refused: %v", err)
	if victim.Running() {
		t.Fatal("the node runs on stale data")
	}

	// A supervisor restarts it again and again. Each refused start
	// advanced the data sequence on disk, so without the refusal kept in
	// the directory the copy would climb past the heartbeats' sequences
	// (a few since the copy) and be let in.
	for i := range 10 {
		err := victim.Restart()
		if !errors.Is(err, node.ErrStaleData) || victim.Running() {
			t.Fatalf("restart %d on the refused copy: %v (running %v), want ErrStaleData", i+2, err, victim.Running())
		}
		if i == 0 {
			t.Logf("refused again: %v", err)
			if !strings.Contains(err.Error(), "refused as stale before") {
				t.Fatalf("refused again, but not by the record of the first refusal: %v", err)
			}
		}
	}
}
