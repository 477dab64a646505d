//go:build !linux

package openconnect

import "net"

// pathMTU is openconnect's fallback where TCP_INFO is not read.
func pathMTU(net.Conn) int { return 1406 }
