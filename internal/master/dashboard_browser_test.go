//go:build browser

package master_test

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestDashboardInBrowser loads the master's dashboard in headless Chromium
// (make browser-test; Debian's chromium): it shows every node and every
// shard, and it changes when a node is killed: the node turns down and its
// leaderships go to others.
func TestDashboardInBrowser(t *testing.T) {
	const shards = 16
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: shards, Replicas: 3})
	ctx := ctxFor(t, 120*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := c.MasterLeader()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m.Server().HTTPHandler())
	defer srv.Close()

	actx, cancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:], chromedp.NoSandbox, chromedp.Headless)...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	if err := chromedp.Do(bctx, chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(`body[data-ready="1"]`)); err != nil {
		t.Fatalf("load the dashboard: %v", err)
	}
	count := func(sel string) (int, error) {
		return chromedp.Run(bctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, sel)))
	}
	if err := tc.WaitFor(ctx, func() error {
		s, err := count("#ring path.shard")
		if err != nil {
			return err
		}
		n, err := count("#nodes tr.node")
		if err != nil {
			return err
		}
		if s != shards || n != 3 {
			return fmt.Errorf("the page shows %d shards and %d nodes", s, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	victim := c.Nodes[2]
	led, err := count(fmt.Sprintf(`#ring path.shard[data-leader="%d"]`, victim.ID))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node %d leads %d shards on the page; killing it", victim.ID, led)
	victim.Stop()
	if err := tc.WaitFor(ctx, func() error {
		st, err := chromedp.Run(bctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector('#nodes tr[data-node="%d"]')||{}).dataset?.state || ""`, victim.ID)))
		if err != nil {
			return err
		}
		if st != "down" {
			return fmt.Errorf("node %d shows %q", victim.ID, st)
		}
		n, err := count(fmt.Sprintf(`#ring path.shard[data-leader="%d"]`, victim.ID))
		if err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("the ring still shows node %d leading %d shards", victim.ID, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
