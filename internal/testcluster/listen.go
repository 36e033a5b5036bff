package testcluster

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// Loopback is the address the cluster's servers listen on. Outgoing
// connections on this machine take their ephemeral source ports on
// 127.0.0.1 (the source address of the loopback route), so a port that a
// stopped server gives up on Loopback cannot be taken by somebody's
// client connection before the server restarts on it. On 127.0.0.1 that
// happened: a connection of a test running in parallel held the port and
// the restart failed with "address already in use".
const Loopback = "127.0.0.2"

// rebindTimeout bounds how long listen waits for a port that is still
// held to be given up (a closing connection, a listener that has not
// finished shutting down).
const rebindTimeout = 10 * time.Second

// listen listens on addr, or on a fresh port of Loopback when addr is
// empty. A port still in use is retried until rebindTimeout: a server
// restarting on its old address must get it back, as peers and masters
// know it by that address.
func listen(addr string) (net.Listener, error) {
	if addr == "" {
		addr = net.JoinHostPort(Loopback, "0")
	}
	deadline := time.Now().Add(rebindTimeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		lis, err := net.Listen("tcp", addr)
		if err == nil {
			return lis, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		time.Sleep(delay)
	}
}
