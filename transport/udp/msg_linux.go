package udp

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// sockaddrSize holds either a sockaddr_in or a sockaddr_in6.
const sockaddrSize = unix.SizeofSockaddrInet6

// oobSize is the control buffer of one received message: room for the GRO
// segment size (an int), a receive timestamp (a timespec) and the packet
// info (an in_pktinfo or in6_pktinfo), with some to spare.
const oobSize = 128

// gsoCmsgSpace is the control buffer of one segmented send: the
// UDP_SEGMENT size (a uint16).
var gsoCmsgSpace = unix.CmsgSpace(2)

// gsoCmsgMax is a compile-time upper bound of gsoCmsgSpace for array sizes.
const gsoCmsgMax = 32

// pktinfoCmsgMax is a compile-time upper bound of the control message that
// carries a send's source: an in_pktinfo (12 bytes) or in6_pktinfo (20).
const pktinfoCmsgMax = 48

// txOOBSize is the control buffer of one sent message: its source, then
// its segment size.
const txOOBSize = pktinfoCmsgMax + gsoCmsgMax

// putSockaddr writes ep as a sockaddr_in (v6 false) or sockaddr_in6 into b
// and returns its length. ep must be an IPv4 address for v6 false.
func putSockaddr(b *[sockaddrSize]byte, ep netip.AddrPort, v6 bool) uint32 {
	*b = [sockaddrSize]byte{}
	binary.BigEndian.PutUint16(b[2:4], ep.Port())
	if !v6 {
		binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET)
		a := ep.Addr().As4()
		copy(b[4:8], a[:])
		return unix.SizeofSockaddrInet4
	}
	binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET6)
	a := ep.Addr().As16()
	copy(b[8:24], a[:])
	return unix.SizeofSockaddrInet6
}

// parseSockaddr reads a sockaddr_in or sockaddr_in6 the kernel wrote. The
// address comes back unmapped and without zone; ok is false for anything
// else or a short buffer.
func parseSockaddr(b []byte) (ep netip.AddrPort, ok bool) {
	if len(b) < 2 {
		return netip.AddrPort{}, false
	}
	switch binary.NativeEndian.Uint16(b[0:2]) {
	case unix.AF_INET:
		if len(b) < 8 {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])), true
	case unix.AF_INET6:
		if len(b) < 24 {
			return netip.AddrPort{}, false
		}
		a := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[2:4])), true
	}
	return netip.AddrPort{}, false
}

// cmsgAlign rounds n up to the control-message alignment (a word).
func cmsgAlign(n int) int { return (n + unix.SizeofPtr - 1) &^ (unix.SizeofPtr - 1) }

// cmsgHeader reads one control-message header at the start of b.
func cmsgHeader(b []byte) (length, level, typ int, ok bool) {
	if len(b) < unix.SizeofCmsghdr {
		return 0, 0, 0, false
	}
	if unix.SizeofPtr == 8 {
		l := binary.NativeEndian.Uint64(b[0:8])
		if l > uint64(len(b)) {
			return 0, 0, 0, false
		}
		length = int(l)
	} else {
		length = int(binary.NativeEndian.Uint32(b[0:4]))
	}
	level = int(int32(binary.NativeEndian.Uint32(b[unix.SizeofPtr:])))
	typ = int(int32(binary.NativeEndian.Uint32(b[unix.SizeofPtr+4:])))
	return length, level, typ, length >= unix.SizeofCmsghdr && length <= len(b)
}

// groSize returns the segment size from a UDP_GRO control message in oob,
// or 0 when there is none (the message is one datagram).
func groSize(oob []byte) int {
	data := cmsgData(oob, unix.SOL_UDP, unix.UDP_GRO)
	if len(data) < 4 {
		return 0
	}
	if v := int32(binary.NativeEndian.Uint32(data)); v > 0 {
		return int(v)
	}
	return 0
}

// rxTimestamp returns the kernel's receive time (Unix nanoseconds) from an
// SCM_TIMESTAMPNS control message in oob.
func rxTimestamp(oob []byte) (int64, bool) {
	// The (old) timespec holds two words: time_t and long.
	const w = unix.SizeofPtr
	data := cmsgData(oob, unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS)
	if len(data) < 2*w {
		return 0, false
	}
	word := func(b []byte) int64 {
		if w == 8 {
			return int64(binary.NativeEndian.Uint64(b))
		}
		return int64(int32(binary.NativeEndian.Uint32(b)))
	}
	sec, nsec := word(data[0:w]), word(data[w:2*w])
	if sec <= 0 || nsec < 0 || nsec >= 1e9 {
		return 0, false
	}
	return sec*1e9 + nsec, true
}

// cmsgData returns the data of the first control message of the given
// level and type in oob, or nil.
func cmsgData(oob []byte, level, typ int) []byte {
	for len(oob) >= unix.SizeofCmsghdr {
		length, lvl, t, ok := cmsgHeader(oob)
		if !ok {
			return nil
		}
		if lvl == level && t == typ {
			if start := cmsgAlign(unix.SizeofCmsghdr); length > start {
				return oob[start:length]
			}
			return nil
		}
		next := cmsgAlign(length)
		if next >= len(oob) {
			return nil
		}
		oob = oob[next:]
	}
	return nil
}

// The layouts of struct in_pktinfo {ifindex int32; spec_dst, addr [4]byte}
// and struct in6_pktinfo {addr [16]byte; ifindex int32}.
const (
	sizeofInet4Pktinfo = 12
	sizeofInet6Pktinfo = 20
)

// pktinfo returns the local address and interface of a received datagram
// from its IP_PKTINFO (v6 false) or IPV6_PKTINFO control message in oob.
// For IPv4 the address is ipi_spec_dst, the one the kernel would answer
// from, which differs from the header's destination for broadcasts. local
// is the zero Addr when there is no such message or the address cannot be
// a source (unspecified, multicast, limited broadcast).
func pktinfo(oob []byte, v6 bool) (local netip.Addr, ifindex uint32) {
	if !v6 {
		data := cmsgData(oob, unix.IPPROTO_IP, unix.IP_PKTINFO)
		if len(data) < sizeofInet4Pktinfo {
			return netip.Addr{}, 0
		}
		ifindex = binary.NativeEndian.Uint32(data[0:4])
		local = netip.AddrFrom4([4]byte(data[4:8]))
		if local.IsUnspecified() {
			local = netip.AddrFrom4([4]byte(data[8:12]))
		}
		if !usableSource(local) {
			return netip.Addr{}, ifindex
		}
		return local, ifindex
	}
	data := cmsgData(oob, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO)
	if len(data) < sizeofInet6Pktinfo {
		return netip.Addr{}, 0
	}
	local = netip.AddrFrom16([16]byte(data[0:16]))
	ifindex = binary.NativeEndian.Uint32(data[16:20])
	if local.Is4In6() || !usableSource(local) {
		return netip.Addr{}, ifindex
	}
	return local, ifindex
}

// usableSource reports whether a can be the source of a unicast datagram.
func usableSource(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// putPktinfo writes the control message that makes a send leave from local
// into b and returns its length: IP_PKTINFO with ipi_spec_dst for IPv4 (v6
// false), IPV6_PKTINFO for IPv6. The interface index goes into the IPv6
// message only for a link-local local address, which needs it; otherwise
// the route alone picks the interface. local must be of the socket's
// family and b at least pktinfoCmsgMax long.
func putPktinfo(b []byte, local netip.Addr, ifindex uint32, v6 bool) int {
	level, typ, size := unix.IPPROTO_IP, unix.IP_PKTINFO, sizeofInet4Pktinfo
	if v6 {
		level, typ, size = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, sizeofInet6Pktinfo
	}
	space := unix.CmsgSpace(size)
	b = b[:space]
	clear(b)
	putCmsgHeader(b, level, typ, size)
	data := b[cmsgAlign(unix.SizeofCmsghdr):]
	if !v6 {
		a := local.As4()
		copy(data[4:8], a[:]) // ipi_spec_dst; ipi_ifindex and ipi_addr stay 0
		return space
	}
	a := local.As16()
	copy(data[0:16], a[:])
	if local.IsLinkLocalUnicast() {
		binary.NativeEndian.PutUint32(data[16:20], ifindex)
	}
	return space
}

// putCmsgHeader writes a control-message header for size bytes of data.
func putCmsgHeader(b []byte, level, typ, size int) {
	if unix.SizeofPtr == 8 {
		binary.NativeEndian.PutUint64(b[0:8], uint64(unix.CmsgLen(size)))
	} else {
		binary.NativeEndian.PutUint32(b[0:4], uint32(unix.CmsgLen(size)))
	}
	binary.NativeEndian.PutUint32(b[unix.SizeofPtr:], uint32(level))
	binary.NativeEndian.PutUint32(b[unix.SizeofPtr+4:], uint32(typ))
}

// putGSOSize writes a UDP_SEGMENT control message for segments of seg bytes
// into b and returns its length.
func putGSOSize(b []byte, seg int) int {
	b = b[:gsoCmsgSpace]
	clear(b)
	putCmsgHeader(b, unix.SOL_UDP, unix.UDP_SEGMENT, 2)
	binary.NativeEndian.PutUint16(b[cmsgAlign(unix.SizeofCmsghdr):], uint16(seg))
	return gsoCmsgSpace
}
