// Package client is Shoal's public Go client.
//
// This first part is the connection to the masters (MasterConn): it keeps a
// gRPC connection to each master, sends calls that change state to the
// leader, follows NOT_LEADER answers to the leader they name, and tries the
// next master when one is unreachable, until the caller's context ends.
package client
