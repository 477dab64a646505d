package tun

import (
	"encoding/binary"
	"errors"
)

// virtioNetHdrLen is the size of struct virtio_net_hdr (without the
// num_buffers field), the header the kernel puts before every packet on a TUN
// file opened with IFF_VNET_HDR. It equals MinOffset.
const virtioNetHdrLen = 10

// virtio_net_hdr flags.
const (
	virtioFlagNeedsCsum = 1 // checksum from csumStart to the end is partial
	virtioFlagDataValid = 2 // checksum already verified
)

// virtio_net_hdr GSO types.
const (
	virtioGSONone  = 0
	virtioGSOTCPv4 = 1
	virtioGSOUDP   = 3 // UDP fragmentation offload: never accepted
	virtioGSOTCPv6 = 4
	virtioGSOUDPL4 = 5
	virtioGSOECN   = 0x80 // flag: the TCP stream uses ECN (CWR handling)
)

// virtioNetHdr is the decoded virtio-net header. On the wire it is
// little-endian (Create sets TUNSETVNETLE so this also holds on big-endian
// hosts).
type virtioNetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16 // hint only: the kernel may set it to the linear length
	gsoSize    uint16 // payload bytes per segment
	csumStart  uint16 // offset of the L4 header
	csumOffset uint16 // offset of the checksum field from csumStart
}

var errShortVirtioHdr = errors.New("tun: short virtio-net header")

// decode fills h from the first virtioNetHdrLen bytes of b.
func (h *virtioNetHdr) decode(b []byte) error {
	if len(b) < virtioNetHdrLen {
		return errShortVirtioHdr
	}
	h.flags = b[0]
	h.gsoType = b[1]
	h.hdrLen = binary.LittleEndian.Uint16(b[2:])
	h.gsoSize = binary.LittleEndian.Uint16(b[4:])
	h.csumStart = binary.LittleEndian.Uint16(b[6:])
	h.csumOffset = binary.LittleEndian.Uint16(b[8:])
	return nil
}

// encode writes h into the first virtioNetHdrLen bytes of b, which must be
// that long.
func (h *virtioNetHdr) encode(b []byte) {
	_ = b[virtioNetHdrLen-1]
	b[0] = h.flags
	b[1] = h.gsoType
	binary.LittleEndian.PutUint16(b[2:], h.hdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.gsoSize)
	binary.LittleEndian.PutUint16(b[6:], h.csumStart)
	binary.LittleEndian.PutUint16(b[8:], h.csumOffset)
}

// clearVirtioHdr writes an all-zero header (no GSO, no partial checksum).
func clearVirtioHdr(b []byte) {
	_ = b[virtioNetHdrLen-1]
	clear(b[:virtioNetHdrLen])
}
