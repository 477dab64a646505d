package udp

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// controlOf is the control buffer a message header points to.
func controlOf(h *unix.Msghdr) []byte {
	if h.Control == nil || h.Controllen == 0 {
		return nil
	}
	return unsafe.Slice(h.Control, h.Controllen)
}

// hasSource reports whether a message header carries an IPv4 or IPv6
// packet-info (source) control message.
func hasSource(h *unix.Msghdr) bool {
	c := controlOf(h)
	return cmsgData(c, unix.IPPROTO_IP, unix.IP_PKTINFO) != nil || cmsgData(c, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO) != nil
}
