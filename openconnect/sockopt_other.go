//go:build !linux

package openconnect

import "net"

func tuneCSTP(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
}
