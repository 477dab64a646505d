package tun

import (
	"encoding/binary"
	"net/netip"
)

// refSum is a plain RFC 1071 sum, 16 bits at a time, to check onesSum.
func refSum(b []byte) uint16 {
	var s uint32
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// testFlow names one TCP or UDP flow for building test packets.
type testFlow struct {
	v6, udp    bool
	src, dst   netip.Addr
	sport      uint16
	dport      uint16
	tos, ttl   uint8
	df         bool
	tcpOptions []byte // multiple of 4
}

func flow4(sport uint16, udp bool) testFlow {
	return testFlow{udp: udp, src: netip.MustParseAddr("198.18.77.2"), dst: netip.MustParseAddr("198.18.77.1"),
		sport: sport, dport: 5201, ttl: 64, df: true}
}

func flow6(sport uint16, udp bool) testFlow {
	return testFlow{v6: true, udp: udp, src: netip.MustParseAddr("2001:db8::2"), dst: netip.MustParseAddr("2001:db8::1"),
		sport: sport, dport: 5201, ttl: 64}
}

func (f testFlow) l3Len() int {
	if f.v6 {
		return 40
	}
	return 20
}

func (f testFlow) l4HdrLen() int {
	if f.udp {
		return 8
	}
	return 20 + len(f.tcpOptions)
}

// packet builds one packet of f with correct lengths and checksums (computed
// with refSum, independently of the code under test).
func (f testFlow) packet(id uint16, seq, ack uint32, flags uint8, payload []byte) []byte {
	l3, l4h := f.l3Len(), f.l4HdrLen()
	p := make([]byte, l3+l4h+len(payload))
	f.fillHeaders(p, id, seq, ack, flags)
	copy(p[l3+l4h:], payload)
	f.fixChecksums(p)
	return p
}

func (f testFlow) fillHeaders(p []byte, id uint16, seq, ack uint32, flags uint8) {
	l3 := f.l3Len()
	proto := uint8(ipProtoTCP)
	if f.udp {
		proto = ipProtoUDP
	}
	if f.v6 {
		p[0] = 0x60 | f.tos>>4
		p[1] = f.tos<<4 | 0x1 // part of a flow label
		p[2], p[3] = 0x23, 0x45
		binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
		p[6] = proto
		p[7] = f.ttl
		s, d := f.src.As16(), f.dst.As16()
		copy(p[8:], s[:])
		copy(p[24:], d[:])
	} else {
		p[0] = 0x45
		p[1] = f.tos
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		binary.BigEndian.PutUint16(p[4:], id)
		if f.df {
			p[6] = 0x40
		}
		p[8] = f.ttl
		p[9] = proto
		s, d := f.src.As4(), f.dst.As4()
		copy(p[12:], s[:])
		copy(p[16:], d[:])
	}
	binary.BigEndian.PutUint16(p[l3:], f.sport)
	binary.BigEndian.PutUint16(p[l3+2:], f.dport)
	if f.udp {
		binary.BigEndian.PutUint16(p[l3+4:], uint16(len(p)-l3))
	} else {
		binary.BigEndian.PutUint32(p[l3+4:], seq)
		binary.BigEndian.PutUint32(p[l3+8:], ack)
		p[l3+12] = uint8(f.l4HdrLen()/4) << 4
		p[l3+13] = flags
		binary.BigEndian.PutUint16(p[l3+14:], 502)
		copy(p[l3+20:], f.tcpOptions)
	}
}

// pseudo returns the reference pseudo-header sum for an L4 length.
func (f testFlow) pseudo(p []byte, l4Len int) uint32 {
	var s uint32
	if f.v6 {
		s = uint32(refSum(p[8:40]))
	} else {
		s = uint32(refSum(p[12:20]))
	}
	proto := uint32(ipProtoTCP)
	if f.udp {
		proto = ipProtoUDP
	}
	return s + proto + uint32(l4Len)
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func (f testFlow) csumOff() int {
	if f.udp {
		return 6
	}
	return 16
}

func (f testFlow) fixChecksums(p []byte) {
	l3 := f.l3Len()
	if !f.v6 {
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:], ^refSum(p[:20]))
	}
	o := l3 + f.csumOff()
	p[o], p[o+1] = 0, 0
	c := ^fold(f.pseudo(p, len(p)-l3) + uint32(refSum(p[l3:])))
	if f.udp && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(p[o:], c)
}

// super builds a GSO super-packet as the kernel hands it over: IP lengths
// for the whole, the L4 checksum field holding the folded pseudo-header sum,
// preceded by a virtio-net header.
func (f testFlow) super(id uint16, seq, ack uint32, flags uint8, payload []byte, gsoSize int) []byte {
	l3, l4h := f.l3Len(), f.l4HdrLen()
	b := make([]byte, virtioNetHdrLen+l3+l4h+len(payload))
	p := b[virtioNetHdrLen:]
	f.fillHeaders(p, id, seq, ack, flags)
	copy(p[l3+l4h:], payload)
	if !f.v6 {
		binary.BigEndian.PutUint16(p[10:], ^refSum(p[:20]))
	}
	binary.BigEndian.PutUint16(p[l3+f.csumOff():], fold(f.pseudo(p, len(p)-l3)))
	h := virtioNetHdr{flags: virtioFlagNeedsCsum, hdrLen: uint16(l3 + l4h), gsoSize: uint16(gsoSize),
		csumStart: uint16(l3), csumOffset: uint16(f.csumOff())}
	switch {
	case f.udp:
		h.gsoType = virtioGSOUDPL4
	case f.v6:
		h.gsoType = virtioGSOTCPv6
	default:
		h.gsoType = virtioGSOTCPv4
	}
	h.encode(b)
	return b
}

func payloadBytes(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

// readBufs returns n buffers of the size the Device contract asks for.
func readBufs(n, offset int) ([][]byte, []int) {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, offset+MaxSegmentSize)
	}
	return b, make([]int, n)
}

// loadRead copies what a read of the TUN file would produce into bufs[0].
func loadRead(bufs [][]byte, offset int, raw []byte) int {
	return copy(bufs[0][offset-virtioNetHdrLen:], raw)
}

// writeBufs puts each packet at offset in a buffer with the capacity Write
// requires.
func writeBufs(offset int, pkts ...[]byte) [][]byte {
	b := make([][]byte, len(pkts))
	for i, p := range pkts {
		buf := make([]byte, offset+len(p), offset+MaxSegmentSize)
		copy(buf[offset:], p)
		b[i] = buf
	}
	return b
}
