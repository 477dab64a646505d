//go:build !linux

package udp

import (
	"net"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport"
)

// Conn is a placeholder off Linux: NewConn fails.
type Conn struct{}

// NewConn fails: batched I/O needs Linux.
func NewConn(*net.UDPConn, Options) (*Conn, error) { return nil, errUnsupported }

// Receive fails.
func (c *Conn) Receive([][]byte, []int, []transport.Endpoint) (int, error) {
	return 0, errUnsupported
}

// Send fails.
func (c *Conn) Send([][]byte, transport.Endpoint) error { return errUnsupported }

// LocalAddr is nil.
func (c *Conn) LocalAddr() net.Addr { return nil }

// Offloads reports no offloads.
func (c *Conn) Offloads() (gso, gro bool) { return false, false }

// Stats is empty.
func (c *Conn) Stats() []metrics.Counter { return nil }

// Close does nothing.
func (c *Conn) Close() error { return nil }
