package client_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/master"
	"github.com/shoaldb/shoal/internal/node"
)

// exampleCluster starts a master and three nodes on loopback, as
// `shoal playground` does, and returns the master's address.
func exampleCluster() (string, func()) {
	dir, err := os.MkdirTemp("", "shoal-example")
	if err != nil {
		panic(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	m, err := master.Start(ctx, master.Config{
		ID: 1, Peers: map[uint64]string{1: lis.Addr().String()}, Listener: lis, DataDir: filepath.Join(dir, "master"),
		Bootstrap: true, Shards: 8, Replicas: 3, PlacementDelay: 200 * time.Millisecond,
	})
	if err != nil {
		panic(err)
	}
	var nodes []*node.Node
	for i := range 3 {
		n, err := node.Start(ctx, node.Config{
			Masters: []string{m.Addr()}, DataDir: filepath.Join(dir, fmt.Sprint("node", i)), ListenAddr: "127.0.0.1:0",
			HeartbeatInterval: 100 * time.Millisecond,
		})
		if err != nil {
			panic(err)
		}
		nodes = append(nodes, n)
	}
	return m.Addr(), func() {
		for _, n := range nodes {
			n.Stop()
		}
		m.Stop()
		os.RemoveAll(dir)
	}
}

func Example() {
	masterAddr, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Open waits until the cluster has placed its shards.
	c, err := client.Open(ctx, []string{masterAddr})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	if _, err := c.Put(ctx, []byte("greeting"), []byte("hello, shoal")); err != nil {
		fmt.Println(err)
		return
	}
	item, found, err := c.Get(ctx, []byte("greeting"))
	fmt.Println(string(item.Value), found, err)

	n, err := c.Incr(ctx, []byte("visits"), 1)
	fmt.Println(n, err)
	// Output:
	// hello, shoal true <nil>
	// 1 <nil>
}

func ExampleClient_Batch() {
	masterAddr, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Open(ctx, []string{masterAddr})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	// Keys with the same hash tag ({user42}) are in the same shard, so a
	// batch of them applies atomically.
	res, err := c.Batch(ctx,
		client.PutOp([]byte("{user42}:name"), []byte("Ada")),
		client.IncrOp([]byte("{user42}:logins"), 1),
	)
	fmt.Println(len(res), res[1].IntValue, err)

	_, err = c.Batch(ctx, client.PutOp([]byte("a"), nil), client.PutOp([]byte("b"), nil))
	fmt.Println(err != nil)
	// Output:
	// 2 1 <nil>
	// true
}

func ExampleClient_CompareAndSet() {
	masterAddr, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Open(ctx, []string{masterAddr})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	// nil expects the key to be absent: a lock taken once.
	first, _ := c.CompareAndSet(ctx, []byte("lock"), nil, []byte("owner-1"))
	second, _ := c.CompareAndSet(ctx, []byte("lock"), nil, []byte("owner-2"))
	fmt.Println(first, second)
	// Output:
	// true false
}
