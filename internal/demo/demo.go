// Package demo is `ptun demo`: two hosts in network namespaces joined by a
// veth "underlay", a ptun tunnel between them, and a side-by-side report of
// ping and TCP throughput through the tunnel and on the raw link.
//
// Its parts are meant for reuse by `ptun bench` and end-to-end tests:
// NewTestbed builds the two hosts and the underlay, (*Testbed).StartPtun runs
// and configures ptun in both, and Ping and TCPThroughput measure between
// any two namespaces.
package demo

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/probe"
	"github.com/ptun-vpn/ptun/internal/tunnelproc"
)

var (
	// ErrNotRoot is returned when the process is not root: namespaces,
	// veths and TUN devices need it. Run the demo with sudo.
	ErrNotRoot = errors.New("demo: must run as root (network namespaces and TUN devices need it)")

	// ErrNoTUN is returned when /dev/net/tun is missing or unusable: load
	// the tun module (modprobe tun) or, in a container, pass the device in.
	ErrNoTUN = errors.New("demo: /dev/net/tun is not available")

	// ErrDaemonExited is wrapped by the error returned when a ptun daemon
	// exits while the testbed still needs it; the error's text ends with
	// the last lines the daemon wrote.
	ErrDaemonExited = tunnelproc.ErrExited
)

// Ping sends count ICMP echoes from inside from to dst, one every 200ms,
// each waiting at most 2s for its reply, and returns the round-trip times
// of those answered (see probe.Ping).
func Ping(from *netns.NS, dst netip.Addr, count int) ([]time.Duration, error) {
	return probe.Ping(context.Background(), from, dst, count, 200*time.Millisecond, 2*time.Second)
}
