package openconnect

import (
	"net"

	"golang.org/x/sys/unix"
)

// pathMTU returns the path MTU the kernel knows for a TCP connection
// (TCP_INFO), as openconnect sends it in X-CSTP-Base-MTU: at least 1280,
// and 1406 (openconnect's fallback) when it cannot tell.
func pathMTU(c net.Conn) int {
	const fallback = 1406
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return fallback
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return fallback
	}
	mtu := 0
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			mtu = int(info.Pmtu)
		}
	})
	if mtu <= 0 {
		return fallback
	}
	return max(mtu, 1280)
}
