package openconnect

import (
	"net"

	"golang.org/x/sys/unix"
)

// notSentLowat bounds the bytes a CSTP connection's socket holds that TCP
// has not sent yet: the outer send buffer stays small (TCP-over-TCP), so
// a busy tunnel queues in the session's bounded, counted queue rather
// than in a socket buffer that autotuning would grow to megabytes.
const notSentLowat = 128 << 10

// tuneCSTP sets what a CSTP connection's socket needs: no Nagle delay
// for interactive packets, and the small unsent queue.
func tuneCSTP(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	tc.SetNoDelay(true)
	if sc, err := tc.SyscallConn(); err == nil {
		sc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat)
		})
	}
}
