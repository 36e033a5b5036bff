package metrics

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// series returns the gathered metrics of family name by their label values
// joined with ",".
func series(t *testing.T, reg *prometheus.Registry, name string) map[string]*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.Metric{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			k := ""
			for i, l := range m.GetLabel() {
				if i > 0 {
					k += ","
				}
				k += l.GetValue()
			}
			out[k] = m
		}
	}
	return out
}

// Observations are counted by command and result and timed by command,
// from many goroutines at once, including the first observation of a
// label pair (which fills the cache of children).
func TestCommandsCountAndTime(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := NewCommands(reg)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				c.Observe("set", "ok", time.Millisecond)
				c.Observe("get", "ok", 2*time.Millisecond)
			}
			c.Observe("set", "ERR", time.Millisecond)
		}()
	}
	wg.Wait()
	counts := series(t, reg, "shoal_resp_commands_total")
	want := map[string]float64{"set,ok": 800, "get,ok": 800, "set,ERR": 8}
	if len(counts) != len(want) {
		t.Errorf("%d count series, want %d: %v", len(counts), len(want), counts)
	}
	for k, n := range want {
		if got := counts[k].GetCounter().GetValue(); got != n {
			t.Errorf("shoal_resp_commands_total{%s} = %v, want %v", k, got, n)
		}
	}
	lat := series(t, reg, "shoal_resp_commands_seconds")
	for k, n := range map[string]uint64{"set": 808, "get": 800} {
		if got := lat[k].GetHistogram().GetSampleCount(); got != n {
			t.Errorf("shoal_resp_commands_seconds{%s} count = %d, want %d", k, got, n)
		}
	}
	if got, want := lat["get"].GetHistogram().GetSampleSum(), 800*0.002; got < want*0.999 || got > want*1.001 {
		t.Errorf("shoal_resp_commands_seconds{get} sum = %v, want %v", got, want)
	}
}

// BenchmarkCommandsObserve is the cost the Redis front end pays per
// command for its metrics.
//
//	go test -run '^$' -bench CommandsObserve ./internal/metrics/
func BenchmarkCommandsObserve(b *testing.B) {
	c := NewCommands(prometheus.NewRegistry())
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Observe("set", "ok", time.Millisecond)
		}
	})
}
