package master_test

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/node"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// wildcardListener is a loopback listener that reports the wildcard host
// a node bound with --resp 0.0.0.0:PORT would see (tests listen on
// loopback only).
type wildcardListener struct {
	net.Listener
	host string
}

func (l wildcardListener) Addr() net.Addr {
	a := *l.Listener.Addr().(*net.TCPAddr)
	a.IP = net.ParseIP(l.host)
	return &a
}

func loopbackListener(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(tc.Loopback, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	return lis
}

func portOf(t *testing.T, lis net.Listener) string {
	t.Helper()
	return strconv.Itoa(lis.Addr().(*net.TCPAddr).Port)
}

// TestNodeAdvertisesReachableAddresses: a node bound to wildcard addresses
// registers, and sends Redis clients to, addresses they can dial: its RESP
// and HTTP ports on its advertised host, or the RESP address it is told
// to advertise. Without an advertised gRPC address it refuses to start
// rather than give its peers 0.0.0.0.
func TestNodeAdvertisesReachableAddresses(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 0, Shards: 4, Replicas: 1})
	ctx := ctxFor(t, 60*time.Second)
	waitBootstrapped(t, ctx, c)
	masters := []string{c.Masters[0].Addr}

	_, err := node.Start(ctx, node.Config{Masters: masters, DataDir: t.TempDir(),
		Listener: wildcardListener{loopbackListener(t), "0.0.0.0"}})
	if err == nil || !strings.Contains(err.Error(), "wildcard") || !strings.Contains(err.Error(), "--advertise") {
		t.Fatalf("a node listening on 0.0.0.0 with nothing to advertise started or said %v; want an error naming --advertise", err)
	}

	grpcLis, respLis, httpLis := loopbackListener(t), loopbackListener(t), loopbackListener(t)
	n, err := node.Start(ctx, node.Config{Masters: masters, DataDir: t.TempDir(), HeartbeatInterval: 100 * time.Millisecond,
		Listener:      wildcardListener{grpcLis, "::"},
		AdvertiseAddr: grpcLis.Addr().String(),
		RESPListener:  wildcardListener{respLis, "0.0.0.0"},
		HTTPListener:  wildcardListener{httpLis, "::"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop() })
	wantRESP := net.JoinHostPort(tc.Loopback, portOf(t, respLis))
	wantHTTP := net.JoinHostPort(tc.Loopback, portOf(t, httpLis))
	registered := func(id uint64) (*shoalpb.NodeInfo, error) {
		st, err := c.Masters[0].Server().GetCluster(ctx, &shoalpb.GetClusterRequest{})
		if err != nil {
			return nil, err
		}
		for _, ni := range st.Nodes {
			if ni.Id == id {
				return ni, nil
			}
		}
		return nil, fmt.Errorf("node %d not registered", id)
	}
	ni, err := registered(n.ID())
	if err != nil {
		t.Fatal(err)
	}
	if ni.RespAddr != wantRESP || ni.HttpAddr != wantHTTP {
		t.Fatalf("registered RESP %q and HTTP %q; want %q and %q", ni.RespAddr, ni.HttpAddr, wantRESP, wantHTTP)
	}

	// Redis clients are sent there: CLUSTER SLOTS (older clients) and
	// CLUSTER SHARDS (Redis 7 clients) name it for every slot once the
	// node leads the shards.
	rc := redis.NewClient(&redis.Options{Addr: respLis.Addr().String(), Protocol: 2})
	t.Cleanup(func() { rc.Close() })
	if err := tc.WaitFor(ctx, func() error {
		//lint:ignore SA1019 CLUSTER SLOTS is what older clients send; it must advertise the address too.
		slots, err := rc.ClusterSlots(ctx).Result()
		if err != nil {
			return err
		}
		covered := 0
		for _, s := range slots {
			if len(s.Nodes) == 0 || s.Nodes[0].Addr != wantRESP {
				return fmt.Errorf("slots %d-%d served by %v; want %s", s.Start, s.End, s.Nodes, wantRESP)
			}
			covered += s.End - s.Start + 1
		}
		if covered != 16384 {
			return fmt.Errorf("CLUSTER SLOTS covers %d slots", covered)
		}
		shards, err := rc.ClusterShards(ctx).Result()
		if err != nil {
			return err
		}
		if len(shards) == 0 {
			return fmt.Errorf("CLUSTER SHARDS lists no shard")
		}
		for _, sh := range shards {
			for _, nd := range sh.Nodes {
				if got := net.JoinHostPort(nd.Endpoint, strconv.FormatInt(nd.Port, 10)); got != wantRESP {
					return fmt.Errorf("CLUSTER SHARDS names %s for slots %v; want %s", got, sh.Slots, wantRESP)
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// An explicit RESP address to advertise wins (NAT, a published port);
	// INFO still reports the port the node listens on, as Redis does.
	const announced = "192.0.2.7:16379"
	grpc2, resp2 := loopbackListener(t), loopbackListener(t)
	n2, err := node.Start(ctx, node.Config{Masters: masters, DataDir: t.TempDir(),
		Listener: grpc2, RESPListener: wildcardListener{resp2, "0.0.0.0"}, RESPAdvertiseAddr: announced})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n2.Stop() })
	if ni, err := registered(n2.ID()); err != nil {
		t.Fatal(err)
	} else if ni.RespAddr != announced || ni.Addr != grpc2.Addr().String() {
		t.Fatalf("second node registered gRPC %q, RESP %q; want %q, %q", ni.Addr, ni.RespAddr, grpc2.Addr(), announced)
	}
	rc2 := redis.NewClient(&redis.Options{Addr: resp2.Addr().String(), Protocol: 2})
	t.Cleanup(func() { rc2.Close() })
	info, err := rc2.Info(ctx, "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := "tcp_port:" + portOf(t, resp2) + "\r\n"; !strings.Contains(info, want) {
		t.Fatalf("INFO server of a node advertising %s lacks %q:\n%s", announced, want, info)
	}

	// Addresses that cannot be dialed are refused before the node starts.
	for _, c := range []struct{ cfg node.Config }{
		{node.Config{AdvertiseAddr: "10.0.0.5"}},
		{node.Config{AdvertiseAddr: ":7100"}},
		{node.Config{RESPAdvertiseAddr: "[::]:6379"}},
	} {
		cfg := c.cfg
		cfg.Masters, cfg.DataDir, cfg.Listener = masters, t.TempDir(), loopbackListener(t)
		if n, err := node.Start(ctx, cfg); err == nil {
			_ = n.Stop()
			t.Errorf("a node advertising gRPC %q, RESP %q started", cfg.AdvertiseAddr, cfg.RESPAdvertiseAddr)
		} else if !strings.Contains(err.Error(), "AdvertiseAddr") {
			t.Errorf("advertising gRPC %q, RESP %q: %v; want an error naming the setting", cfg.AdvertiseAddr, cfg.RESPAdvertiseAddr, err)
		}
	}
}
