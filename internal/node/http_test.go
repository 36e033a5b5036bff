package node_test

import (
	"errors"
	"io"
	"net/http"
	"runtime/pprof"
	"testing"
	"time"

	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// A node stops promptly with a long HTTP request in flight: a 60-second
// CPU profile is cut short, answered (its context ends when the node
// stops), and not left to hold the stop.
func TestStopEndsHTTPRequests(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 1, Shards: 1, Replicas: 1, HTTP: true})
	ctx := ctxFor(t, 30*time.Second)
	n := c.Nodes[0]
	type answer struct {
		status int
		body   int
		err    error
	}
	// The profile runs in this process: once it has started, another
	// cannot, which is how the test knows the request is in flight. The
	// probe's own profile, started and stopped at once, can make the
	// node's fail to start (500 at once): then the request is sent again.
	var done chan answer
	for {
		done = make(chan answer, 1)
		go func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.HTTPAddr+"/debug/pprof/profile?seconds=60", nil)
			if err != nil {
				done <- answer{err: err}
				return
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			done <- answer{status: resp.StatusCode, body: len(b), err: err}
		}()
		var early *answer
		if err := tc.WaitFor(ctx, func() error {
			select {
			case a := <-done:
				early = &a
				return nil
			default:
			}
			if err := pprof.StartCPUProfile(io.Discard); err == nil {
				pprof.StopCPUProfile()
				return errors.New("no profile running yet")
			}
			return nil
		}); err != nil {
			t.Fatal("the node's CPU profile did not start")
		}
		if early == nil {
			break
		}
		if early.status != http.StatusInternalServerError {
			t.Fatalf("profile request ended before the stop: status %d, %v", early.status, early.err)
		}
	}
	start := time.Now()
	n.Stop()
	took := time.Since(start)
	a := <-done
	if a.err != nil || a.status != http.StatusOK || a.body == 0 {
		t.Fatalf("profile request: status %d, %d bytes, %v; want the profile cut short and answered", a.status, a.body, a.err)
	}
	if took > 10*time.Second {
		t.Fatalf("stop took %v with a 60 s profile in flight", took)
	}
}
