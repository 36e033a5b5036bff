package master_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestRegisterRefusesStaleData: a node registers with a data sequence it
// synced before sending; a new start must come with one above what its
// previous registration (kept in the meta group) and its heartbeats to the
// leading master carried, or the node is refused with STALE_DATA: its data
// directory is an older copy. A retry of the same start, and a node that
// sends no sequence (an older build), are accepted.
func TestRegisterRefusesStaleData(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 0, Shards: 8, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	cl := waitBootstrapped(t, ctx, c)
	conn := dialMasters(t, c)
	first, err := registerFake(ctx, conn, &shoalpb.RegisterNodeRequest{Addr: "127.0.0.1:1", Weight: 1, RegistrationToken: "tok", DataSeq: 1, StartId: 10})
	if err != nil {
		t.Fatal(err)
	}
	id := first.Id
	reg := func(seq, start uint64) error {
		_, err := registerFake(ctx, conn, &shoalpb.RegisterNodeRequest{ClusterId: cl.ClusterId, NodeId: id,
			Addr: "127.0.0.1:1", Weight: 1, DataSeq: seq, StartId: start})
		return err
	}
	// regByToken registers as a directory that holds the token but not
	// yet the ID it was given.
	regByToken := func(seq, start uint64) error {
		_, err := registerFake(ctx, conn, &shoalpb.RegisterNodeRequest{ClusterId: cl.ClusterId, RegistrationToken: "tok",
			Addr: "127.0.0.1:1", Weight: 1, DataSeq: seq, StartId: start})
		return err
	}
	beat := func(seq uint64) {
		t.Helper()
		if err := conn.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
			_, err := mc.Heartbeat(ctx, &shoalpb.HeartbeatRequest{ClusterId: cl.ClusterId, NodeId: id, DataSeq: seq})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		what       string
		seq, start uint64
		beat       uint64 // a heartbeat carrying this sequence first, if not 0
		stale      string // what the refusal names, "" if accepted
		byToken    bool
	}{
		{what: "a restart", seq: 2, start: 20},
		{what: "a retry of that start", seq: 2, start: 20},
		{what: "another start with the same sequence", seq: 2, start: 21, stale: "its previous registration"},
		{what: "an older sequence", seq: 1, start: 22, stale: "its previous registration"},
		{what: "a start below its heartbeats", beat: 7, seq: 5, start: 23, stale: "carried by its heartbeats"},
		{what: "a start equal to its heartbeats", seq: 7, start: 24, stale: "carried by its heartbeats"},
		{what: "a start by token below its heartbeats (a copy from before it learned its ID)", seq: 3, start: 30,
			stale: "carried by its heartbeats", byToken: true},
		{what: "a start above its heartbeats", seq: 8, start: 25},
		{what: "an older build sending no sequence", seq: 0, start: 0},
		{what: "the next start", seq: 9, start: 26},
	} {
		if step.beat != 0 {
			beat(step.beat)
		}
		err := reg(step.seq, step.start)
		if step.byToken {
			err = regByToken(step.seq, step.start)
		}
		switch {
		case step.stale == "" && err != nil:
			t.Fatalf("%s (data sequence %d) refused: %v", step.what, step.seq, err)
		case step.stale != "" && (!errors.Is(err, client.ErrStaleData) || !strings.Contains(err.Error(), step.stale)):
			t.Fatalf("%s (data sequence %d): %v; want ErrStaleData naming %q", step.what, step.seq, err, step.stale)
		case err != nil:
			t.Logf("%s: %v", step.what, err)
		}
	}

	// The leading master forgets the heartbeats when it restarts; the meta
	// group keeps the last registration's sequence.
	c.Masters[0].Stop()
	if err := c.Masters[0].Restart(); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		err := reg(9, 27)
		if errors.Is(err, client.ErrStaleData) && strings.Contains(err.Error(), "its previous registration") {
			return nil
		}
		return errors.New("not refused yet: " + errString(err))
	}); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error { return reg(10, 28) }); err != nil {
		t.Fatalf("a start above the last registration after the master restarted: %v", err)
	}

	// The leader records the sequences heartbeats carried in the meta
	// group, so a master that leads later (here the same one restarted,
	// which forgot what it received) refuses a start at or below them,
	// though it is above the last registration: a copy of the data
	// directory taken while the node ran, restored after the masters'
	// leader changed.
	version := leaderState(t, ctx, c).Routes.Version
	beat(60)
	if err := tc.WaitFor(ctx, func() error {
		if got := leaderState(t, ctx, c).RecordedDataSeqs[id]; got < 60 {
			return fmt.Errorf("recorded data sequence %d, want 60", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Recording does not move the route table's version, which would wake
	// every node's and client's route watch each second.
	if got := leaderState(t, ctx, c).Routes.Version; got != version {
		t.Fatalf("route table version %d after the record, %d before", got, version)
	}
	c.Masters[0].Stop()
	if err := c.Masters[0].Restart(); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{30, 60} {
		// Retried only while no master answers (the restarted one is
		// electing itself): once accepted, a retry of the same start
		// would be accepted too.
		if err := tc.WaitFor(ctx, func() error {
			err := reg(seq, 29+seq)
			switch {
			case err == nil:
				t.Fatalf("a start at %d after heartbeats carried 60 was accepted under a new leadership", seq)
			case errors.Is(err, client.ErrStaleData):
				if !strings.Contains(err.Error(), "carried by its heartbeats") {
					t.Fatalf("a start at %d refused for another reason: %v", seq, err)
				}
				return nil
			}
			return err
		}); err != nil {
			t.Fatalf("a start at %d after heartbeats carried 60, under a new leadership: %v", seq, err)
		}
	}
	if err := reg(61, 100); err != nil {
		t.Fatalf("a start above the recorded heartbeats: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return "accepted"
	}
	return err.Error()
}
