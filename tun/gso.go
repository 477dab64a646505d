package tun

import (
	"encoding/binary"
	"io"
)

// TCP flag bits (byte 13 of the TCP header).
const (
	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10
	tcpFlagURG = 0x20
	tcpFlagECE = 0x40
	tcpFlagCWR = 0x80
)

// dropReason says why the read path dropped what the kernel handed it.
type dropReason uint8

const (
	dropNone            dropReason = iota
	dropReadShort                  // shorter than a virtio-net header
	dropReadBadGSOType             // unknown or unsupported gso_type
	dropReadBadCsum                // csum_start/csum_offset outside the packet
	dropReadMalformed              // GSO packet whose IP/L4 headers do not parse
	dropReadTooManySegs            // more segments than the caller's buffers
	numDropReasons
)

// readResult is the outcome of processRead.
type readResult struct {
	n      int        // packets placed in bufs
	drop   dropReason // != dropNone: nothing placed, count and read again
	split  bool       // the packet was a GSO super-packet
	csumed bool       // a partial checksum was completed
}

// processRead turns what one read of the TUN file produced into packets.
//
// The read filled bufs[0][offset-virtioNetHdrLen : offset-virtioNetHdrLen+n]
// with a virtio-net header and a packet (n includes the header). On return
// sizes[i] holds the length of the packet at bufs[i][offset:] for i <
// result.n. A GSO super-packet is split into bufs[0..]; the first segment
// stays where it was read. Only bytes at bufs[i][offset:offset+sizes[i]] are
// written (and, for bufs[0], the rest of the super-packet may keep stale
// data). It returns io.ErrShortBuffer if a caller buffer is shorter than the
// Device contract requires; that breaks the contract and is not counted.
func processRead(bufs [][]byte, sizes []int, offset, n int) (readResult, error) {
	var h virtioNetHdr
	if n < virtioNetHdrLen || offset < virtioNetHdrLen {
		return readResult{drop: dropReadShort}, nil
	}
	if err := h.decode(bufs[0][offset-virtioNetHdrLen:]); err != nil {
		return readResult{drop: dropReadShort}, nil
	}
	pkt := bufs[0][offset : offset-virtioNetHdrLen+n]
	switch h.gsoType &^ virtioGSOECN {
	case virtioGSONone:
		if h.flags&virtioFlagNeedsCsum != 0 {
			if !completeChecksum(pkt, h.csumStart, h.csumOffset) {
				return readResult{drop: dropReadBadCsum}, nil
			}
			sizes[0] = len(pkt)
			return readResult{n: 1, csumed: true}, nil
		}
		sizes[0] = len(pkt)
		return readResult{n: 1}, nil
	case virtioGSOTCPv4, virtioGSOTCPv6, virtioGSOUDPL4:
		cnt, drop, err := gsoSplit(pkt, &h, bufs, sizes, offset)
		if err != nil || drop != dropNone {
			return readResult{drop: drop}, err
		}
		return readResult{n: cnt, split: true}, nil
	default:
		return readResult{drop: dropReadBadGSOType}, nil
	}
}

// completeChecksum finishes a partial checksum: the field at
// start+off holds the folded pseudo-header sum and the checksum covers
// pkt[start:]. It reports false if the offsets do not fit the packet.
func completeChecksum(pkt []byte, start, off uint16) bool {
	s, o := int(start), int(start)+int(off)
	if o+2 > len(pkt) {
		return false
	}
	c := ^onesSum(pkt[s:])
	if c == 0 && o == s+6 && isUDP(pkt, s) {
		c = 0xffff // zero means "no checksum" for UDP
	}
	binary.BigEndian.PutUint16(pkt[o:], c)
	return true
}

// isUDP reports whether the IP packet pkt carries UDP directly after its
// fixed header at l4 (no IPv6 extension headers).
func isUDP(pkt []byte, l4 int) bool {
	if len(pkt) < 1 {
		return false
	}
	switch pkt[0] >> 4 {
	case 4:
		return len(pkt) >= 20 && pkt[9] == ipProtoUDP && l4 == int(pkt[0]&0xf)*4
	case 6:
		return len(pkt) >= 40 && pkt[6] == ipProtoUDP && l4 == 40
	}
	return false
}

// gsoSplit splits the super-packet pkt described by h into bufs[i][offset:],
// setting sizes. pkt may be bufs[0][offset:] itself: segments are built last
// to first so the super-packet's headers and payload are read before the
// first segment is written over them.
//
// Every segment gets the super-packet's headers with the IP length, IPv4 ID
// (+i), TCP sequence number (+i*gsoSize) or UDP length fixed, FIN and PSH
// kept only on the last segment, CWR only on the first, and full IPv4
// header and L4 checksums computed from scratch.
func gsoSplit(pkt []byte, h *virtioNetHdr, bufs [][]byte, sizes []int, offset int) (int, dropReason, error) {
	if len(pkt) < 20 || h.gsoSize == 0 {
		return 0, dropReadMalformed, nil
	}
	gsoType := h.gsoType &^ virtioGSOECN
	l4 := int(h.csumStart)
	var wantProto uint8 = ipProtoTCP
	if gsoType == virtioGSOUDPL4 {
		wantProto = ipProtoUDP
	}
	v4 := pkt[0]>>4 == 4
	switch {
	case v4:
		ihl := int(pkt[0]&0xf) * 4
		if gsoType == virtioGSOTCPv6 || ihl < 20 || l4 != ihl || pkt[9] != wantProto {
			return 0, dropReadMalformed, nil
		}
	case pkt[0]>>4 == 6:
		if gsoType == virtioGSOTCPv4 || len(pkt) < 40 || l4 != 40 || pkt[6] != wantProto {
			return 0, dropReadMalformed, nil
		}
	default:
		return 0, dropReadMalformed, nil
	}
	var hdrLen int
	if wantProto == ipProtoTCP {
		if len(pkt) < l4+20 {
			return 0, dropReadMalformed, nil
		}
		hdrLen = l4 + int(pkt[l4+12]>>4)*4
		if hdrLen < l4+20 {
			return 0, dropReadMalformed, nil
		}
	} else {
		hdrLen = l4 + 8
	}
	if hdrLen > len(pkt) {
		return 0, dropReadMalformed, nil
	}
	gsoSize := int(h.gsoSize)
	payload := len(pkt) - hdrLen
	count := (payload + gsoSize - 1) / gsoSize
	if count == 0 {
		count = 1
	}
	if count > len(bufs) || count > len(sizes) {
		return 0, dropReadTooManySegs, ErrTooManySegments
	}
	for i := range count {
		segLen := min(gsoSize, payload-i*gsoSize)
		if len(bufs[i]) < offset+hdrLen+segLen {
			return 0, dropNone, io.ErrShortBuffer
		}
	}

	var (
		addrs    []byte
		firstID  uint16
		firstSeq uint32
		flags    uint8
	)
	if v4 {
		addrs = pkt[12:20]
		firstID = binary.BigEndian.Uint16(pkt[4:])
	} else {
		addrs = pkt[8:40]
	}
	if wantProto == ipProtoTCP {
		firstSeq = binary.BigEndian.Uint32(pkt[l4+4:])
		flags = pkt[l4+13]
	}
	// The address sum is the same for every segment.
	addrSum := onesSum(addrs)

	for i := count - 1; i >= 0; i-- {
		start := hdrLen + i*gsoSize
		segPayload := min(gsoSize, payload-i*gsoSize)
		segLen := hdrLen + segPayload
		seg := bufs[i][offset : offset+segLen]
		// For i == 0 when pkt aliases bufs[0][offset:], these copies are
		// onto themselves.
		copy(seg[hdrLen:], pkt[start:start+segPayload])
		copy(seg[:hdrLen], pkt[:hdrLen])

		if v4 {
			binary.BigEndian.PutUint16(seg[2:], uint16(segLen))
			binary.BigEndian.PutUint16(seg[4:], firstID+uint16(i))
			seg[10], seg[11] = 0, 0
			binary.BigEndian.PutUint16(seg[10:], checksum(seg[:l4], 0))
		} else {
			binary.BigEndian.PutUint16(seg[4:], uint16(segLen-40))
		}
		l4Len := segLen - l4
		psum := onesAdd(onesAdd(addrSum, uint16(wantProto)), uint16(l4Len))
		if wantProto == ipProtoTCP {
			binary.BigEndian.PutUint32(seg[l4+4:], firstSeq+uint32(i*gsoSize))
			f := flags
			if i != count-1 {
				f &^= tcpFlagFIN | tcpFlagPSH
			}
			if i != 0 {
				f &^= tcpFlagCWR
			}
			seg[l4+13] = f
			seg[l4+16], seg[l4+17] = 0, 0
			binary.BigEndian.PutUint16(seg[l4+16:], checksum(seg[l4:], psum))
		} else {
			binary.BigEndian.PutUint16(seg[l4+4:], uint16(l4Len))
			seg[l4+6], seg[l4+7] = 0, 0
			c := checksum(seg[l4:], psum)
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(seg[l4+6:], c)
		}
		sizes[i] = segLen
	}
	return count, dropNone, nil
}
