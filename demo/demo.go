// Package demo is `ptun demo`: two hosts in network namespaces joined by a
// veth "underlay", a ptun tunnel between them, and a side-by-side report of
// ping and TCP throughput through the tunnel and on the raw link.
//
// Its parts are meant for reuse by `ptun bench` and end-to-end tests:
// NewTestbed builds the two hosts and the underlay, (*Testbed).StartPtun runs
// and configures ptun in both, and Ping and TCPThroughput measure between
// any two namespaces.
package demo

import "errors"

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
	ErrDaemonExited = errors.New("ptun daemon exited")
)
