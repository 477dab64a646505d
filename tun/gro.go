package tun

import (
	"bytes"
	"encoding/binary"
)

// maxGROSegments caps how many packets one coalesced super-packet holds. The
// kernel segments UDP GSO packets of at most UDP_MAX_SEGMENTS (64 on older
// kernels) and a 64 KiB TCP super-packet at MSS >= 1024 needs fewer.
const maxGROSegments = 64

// maxHdrLen is the longest IP + L4 header the coalescer handles: IPv6 (40)
// plus a TCP header with options (60).
const maxHdrLen = 40 + 60

// groKind is what a packet is to the coalescer.
type groKind uint8

const (
	groNone groKind = iota // not coalescable
	groTCP4
	groTCP6
	groUDP4
	groUDP6
)

func (k groKind) isTCP() bool { return k == groTCP4 || k == groTCP6 }
func (k groKind) isV4() bool  { return k == groTCP4 || k == groUDP4 }

// groItem is one write to the kernel: a lone packet, or a group of packets
// of one flow that build coalesces into its head's buffer.
type groItem struct {
	head, last int // indexes in bufs of the first and last member
	count      int // members
	total      int // bytes of the coalesced packet: headers + all payloads
	gsoSize    int // payload bytes of the head; every member but the last has as many
	l4, hdrLen int
	kind       groKind
	closed     bool // accepts no more members
	checked    bool // the head's checksums were verified
	nextSeq    uint32
	nextID     uint16
	lastFlags  uint8 // TCP flags of the last member
	built      bool  // the head's buffer holds the coalesced packet
	saved      [maxHdrLen]byte
}

// groSlot is one entry of the open-addressing flow table: the flow's latest
// item, valid when gen matches the table's.
type groSlot struct {
	gen  uint32
	hash uint32
	item int32
}

// coalescer groups a Write batch into items (GRO). Its tables grow to the
// largest batch seen and are reused, so steady state allocates nothing. It
// is not safe for concurrent use; the owner serializes calls.
type coalescer struct {
	items []groItem
	next  []int32 // next[i]: the member after packet i in its item, or -1
	slots []groSlot
	gen   uint32
}

// pktInfo is what classify learns about one packet.
type pktInfo struct {
	kind     groKind
	l4       int
	hdrLen   int
	payload  int
	hash     uint32
	hasFlow  bool // TCP/UDP with readable ports: a flow to keep in order
	resetAll bool // may belong to any flow (fragment, extension header)
}

// classify parses pkt. kind is groNone unless the packet could join a
// coalesced group: plain IPv4 (no options, not a fragment) or IPv6 (no
// extension headers) carrying TCP with only ACK/PSH flags and a payload, or
// UDP with a payload and a non-zero checksum; with exact IP lengths.
func classify(pkt []byte, tcp, udp bool) pktInfo {
	var in pktInfo
	if len(pkt) < 20 {
		return in
	}
	var proto uint8
	var v4 bool
	switch pkt[0] >> 4 {
	case 4:
		v4 = true
		ihl := int(pkt[0]&0xf) * 4
		proto = pkt[9]
		if proto != ipProtoTCP && proto != ipProtoUDP {
			return in
		}
		if binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 { // MF or fragment offset
			in.resetAll = true
			return in
		}
		if ihl < 20 || len(pkt) < ihl+8 {
			return in
		}
		in.l4 = ihl
		in.hasFlow = true
		in.hash = flowHash(pkt[12:20], pkt[ihl:ihl+4], proto)
		if ihl != 20 || int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) {
			return in
		}
	case 6:
		if len(pkt) < 48 {
			if len(pkt) >= 40 && isIPv6ExtHeader(pkt[6]) {
				in.resetAll = true
			}
			return in
		}
		proto = pkt[6]
		if proto != ipProtoTCP && proto != ipProtoUDP {
			in.resetAll = isIPv6ExtHeader(proto)
			return in
		}
		in.l4 = 40
		in.hasFlow = true
		in.hash = flowHash(pkt[8:40], pkt[40:44], proto)
		if int(binary.BigEndian.Uint16(pkt[4:]))+40 != len(pkt) {
			return in
		}
	default:
		return in
	}
	l4 := in.l4
	if proto == ipProtoTCP {
		if !tcp || len(pkt) < l4+20 {
			return in
		}
		hl := l4 + int(pkt[l4+12]>>4)*4
		if hl < l4+20 || hl > len(pkt) || hl > maxHdrLen || hl == len(pkt) {
			return in
		}
		if f := pkt[l4+13]; f&tcpFlagACK == 0 || f&^(tcpFlagACK|tcpFlagPSH) != 0 {
			return in
		}
		in.hdrLen = hl
		in.kind = groTCP6
		if v4 {
			in.kind = groTCP4
		}
	} else {
		if !udp {
			return in
		}
		hl := l4 + 8
		if hl >= len(pkt) || int(binary.BigEndian.Uint16(pkt[l4+4:])) != len(pkt)-l4 ||
			binary.BigEndian.Uint16(pkt[l4+6:]) == 0 {
			return in
		}
		in.hdrLen = hl
		in.kind = groUDP6
		if v4 {
			in.kind = groUDP4
		}
	}
	in.payload = len(pkt) - in.hdrLen
	return in
}

// isIPv6ExtHeader reports whether an IPv6 next-header value is an extension
// header (so the L4 header, and the flow, is further in).
func isIPv6ExtHeader(nh uint8) bool {
	switch nh {
	case 0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254:
		return true
	}
	return false
}

// flowHash mixes addresses (8 or 32 bytes), ports (4 bytes) and protocol.
func flowHash(addrs, ports []byte, proto uint8) uint32 {
	h := uint64(binary.LittleEndian.Uint32(ports)) | uint64(proto)<<32 | uint64(len(addrs))<<40
	for len(addrs) >= 8 {
		h ^= binary.LittleEndian.Uint64(addrs)
		h *= 0x9e3779b97f4a7c15
		h ^= h >> 29
		addrs = addrs[8:]
	}
	h *= 0xbf58476d1ce4e5b9
	return uint32(h >> 32)
}

// sameFlow reports whether a and b, with ports readable at aL4 and bL4,
// have the same IP version, addresses, protocol and ports.
func sameFlow(a []byte, aL4 int, b []byte, bL4 int) bool {
	if a[0]>>4 != b[0]>>4 {
		return false
	}
	if a[0]>>4 == 4 {
		return a[9] == b[9] && bytes.Equal(a[12:20], b[12:20]) && bytes.Equal(a[aL4:aL4+4], b[bL4:bL4+4])
	}
	return a[6] == b[6] && bytes.Equal(a[8:44], b[8:44])
}

// reset prepares the tables for a batch of n packets.
func (c *coalescer) reset(n int) {
	if cap(c.next) < n {
		c.next = make([]int32, n)
		c.items = make([]groItem, 0, n)
	}
	c.next = c.next[:n]
	c.items = c.items[:0]
	size := 16
	for size < 2*n {
		size *= 2
	}
	if len(c.slots) < size {
		c.slots = make([]groSlot, size)
		c.gen = 0
	}
	c.closeAll()
}

// closeAll forgets every open flow.
func (c *coalescer) closeAll() {
	c.gen++
	if c.gen == 0 {
		clear(c.slots)
		c.gen = 1
	}
}

// lookup returns the slot holding pkt's flow, or the empty slot where it
// would go, and whether it was found.
func (c *coalescer) lookup(bufs [][]byte, offset int, pkt []byte, in *pktInfo) (*groSlot, bool) {
	mask := uint32(len(c.slots) - 1)
	for i := in.hash & mask; ; i = (i + 1) & mask {
		s := &c.slots[i]
		if s.gen != c.gen {
			return s, false
		}
		if s.hash == in.hash {
			it := &c.items[s.item]
			if sameFlow(bufs[it.head][offset:], it.l4, pkt, in.l4) {
				return s, true
			}
		}
	}
}

// plan groups bufs[i][offset:] into items, in the order of each item's
// first packet; a flow's items keep the flow's packet order. It does not
// change bufs. tcp and udp enable coalescing of each protocol.
func (c *coalescer) plan(bufs [][]byte, offset int, tcp, udp bool) []groItem {
	c.reset(len(bufs))
	for i := range bufs {
		c.next[i] = -1
		pkt := bufs[i][offset:]
		in := classify(pkt, tcp, udp)
		if in.resetAll {
			c.closeAll()
		}
		if !in.hasFlow {
			c.addItem(i, &in, pkt, true)
			continue
		}
		slot, found := c.lookup(bufs, offset, pkt, &in)
		if in.kind != groNone {
			if found && c.tryAppend(bufs, offset, int(slot.item), i, pkt, &in) {
				continue
			}
			// A new item for the flow; it replaces the flow's older item,
			// which can then take no more packets.
			slot.gen, slot.hash, slot.item = c.gen, in.hash, int32(len(c.items))
			c.addItem(i, &in, pkt, false)
			continue
		}
		// Not coalescable but of a flow we track: nothing of the flow
		// that comes later may join an item before this packet.
		if found {
			c.items[slot.item].closed = true
		}
		c.addItem(i, &in, pkt, true)
	}
	return c.items
}

func (c *coalescer) addItem(i int, in *pktInfo, pkt []byte, closed bool) {
	it := groItem{head: i, last: i, count: 1, total: len(pkt), closed: closed || in.kind == groNone}
	if in.kind != groNone {
		it.kind = in.kind
		it.l4, it.hdrLen = in.l4, in.hdrLen
		it.gsoSize = in.payload
		if in.kind.isV4() {
			it.nextID = binary.BigEndian.Uint16(pkt[4:]) + 1
		}
		if in.kind.isTCP() {
			it.nextSeq = binary.BigEndian.Uint32(pkt[in.l4+4:]) + uint32(in.payload)
			it.lastFlags = pkt[in.l4+13]
			if it.lastFlags&tcpFlagPSH != 0 {
				it.closed = true // PSH may only be on a group's last packet
			}
		}
	} else {
		it.l4 = in.l4
	}
	c.items = append(c.items, it)
}

// tryAppend adds packet i to item k if it continues the item exactly:
// same headers but lengths, IDs, sequence numbers and checksums; the next
// IPv4 ID; for TCP the next sequence number and the same ACK, window and
// options; a payload no bigger than the head's; valid checksums on both;
// and room in the head's buffer.
func (c *coalescer) tryAppend(bufs [][]byte, offset, k, i int, pkt []byte, in *pktInfo) bool {
	it := &c.items[k]
	if it.closed || it.kind != in.kind || it.hdrLen != in.hdrLen || it.count >= maxGROSegments ||
		in.payload > it.gsoSize || it.total+in.payload > MaxSegmentSize ||
		cap(bufs[it.head])-offset < it.total+in.payload {
		return false
	}
	head := bufs[it.head][offset:]
	l4 := it.l4
	if in.kind.isV4() {
		// TOS, flags/fragment, TTL; and the ID that follows.
		if head[1] != pkt[1] || head[6] != pkt[6] || head[7] != pkt[7] || head[8] != pkt[8] ||
			binary.BigEndian.Uint16(pkt[4:]) != it.nextID {
			return false
		}
	} else {
		// Version, traffic class, flow label; hop limit.
		if !bytes.Equal(head[0:4], pkt[0:4]) || head[7] != pkt[7] {
			return false
		}
	}
	if in.kind.isTCP() {
		if binary.BigEndian.Uint32(pkt[l4+4:]) != it.nextSeq ||
			!bytes.Equal(head[l4+8:l4+13], pkt[l4+8:l4+13]) || // ack, data offset
			!bytes.Equal(head[l4+14:l4+16], pkt[l4+14:l4+16]) || // window
			!bytes.Equal(head[l4+18:it.hdrLen], pkt[l4+18:it.hdrLen]) { // urgent pointer, options
			return false
		}
	}
	if !it.checked {
		if !validChecksums(head[:it.total], it.kind, l4) {
			it.closed = true
			return false
		}
		it.checked = true
	}
	if !validChecksums(pkt, in.kind, l4) {
		return false
	}
	c.next[it.last] = int32(i)
	it.last = i
	it.count++
	it.total += in.payload
	it.nextID++
	if in.kind.isTCP() {
		it.nextSeq += uint32(in.payload)
		it.lastFlags = pkt[l4+13]
		if it.lastFlags&tcpFlagPSH != 0 {
			it.closed = true
		}
	}
	if in.payload < it.gsoSize {
		it.closed = true
	}
	return true
}

// validChecksums reports whether pkt's IPv4 header checksum and L4 checksum
// are correct and canonical (what gsoSplit would compute), so coalescing and
// splitting again gives back the same bytes.
func validChecksums(pkt []byte, kind groKind, l4 int) bool {
	var addrs []byte
	if kind.isV4() {
		stored := binary.BigEndian.Uint16(pkt[10:])
		if ^onesAdd(onesSum(pkt[:l4]), ^stored) != stored {
			return false
		}
		addrs = pkt[12:20]
	} else {
		addrs = pkt[8:40]
	}
	proto, off := uint8(ipProtoUDP), 6
	if kind.isTCP() {
		proto, off = ipProtoTCP, 16
	}
	stored := binary.BigEndian.Uint16(pkt[l4+off:])
	// Sum with the checksum field taken out (adding its complement).
	want := ^onesAdd(onesAdd(onesSum(pkt[l4:]), ^stored), pseudoHeaderSum(addrs, proto, len(pkt)-l4))
	if proto == ipProtoUDP && want == 0 {
		want = 0xffff
	}
	return want == stored
}

// build writes item k's coalesced packet into its head's buffer and the
// virtio-net header before it, and returns
// bufs[head][offset-virtioNetHdrLen : offset+total]. Items of one packet
// are returned as they are with a zero header. restore undoes build.
func (c *coalescer) build(bufs [][]byte, offset, k int) []byte {
	it := &c.items[k]
	hb := bufs[it.head]
	if it.count == 1 {
		clearVirtioHdr(hb[offset-virtioNetHdrLen:])
		return hb[offset-virtioNetHdrLen:]
	}
	out := hb[:offset+it.total]
	pkt := out[offset:]
	copy(it.saved[:it.hdrLen], pkt[:it.hdrLen])
	it.built = true
	pos := it.hdrLen + it.gsoSize
	for m := c.next[it.head]; m >= 0; m = c.next[m] {
		pos += copy(pkt[pos:], bufs[m][offset+it.hdrLen:])
	}
	l4 := it.l4
	var addrs []byte
	if it.kind.isV4() {
		binary.BigEndian.PutUint16(pkt[2:], uint16(it.total))
		pkt[10], pkt[11] = 0, 0
		binary.BigEndian.PutUint16(pkt[10:], checksum(pkt[:l4], 0))
		addrs = pkt[12:20]
	} else {
		binary.BigEndian.PutUint16(pkt[4:], uint16(it.total-40))
		addrs = pkt[8:40]
	}
	h := virtioNetHdr{
		flags:     virtioFlagNeedsCsum,
		hdrLen:    uint16(it.hdrLen),
		gsoSize:   uint16(it.gsoSize),
		csumStart: uint16(l4),
	}
	l4Len := it.total - l4
	if it.kind.isTCP() {
		pkt[l4+13] |= it.lastFlags & tcpFlagPSH
		binary.BigEndian.PutUint16(pkt[l4+16:], pseudoHeaderSum(addrs, ipProtoTCP, l4Len))
		h.csumOffset = 16
		h.gsoType = virtioGSOTCPv6
		if it.kind.isV4() {
			h.gsoType = virtioGSOTCPv4
		}
	} else {
		binary.BigEndian.PutUint16(pkt[l4+4:], uint16(l4Len))
		binary.BigEndian.PutUint16(pkt[l4+6:], pseudoHeaderSum(addrs, ipProtoUDP, l4Len))
		h.csumOffset = 6
		h.gsoType = virtioGSOUDPL4
	}
	h.encode(hb[offset-virtioNetHdrLen:])
	return out[offset-virtioNetHdrLen:]
}

// restore puts back the head packet of a built item as it was before build,
// so the members can be written one by one.
func (c *coalescer) restore(bufs [][]byte, offset, k int) {
	it := &c.items[k]
	if !it.built {
		return
	}
	copy(bufs[it.head][offset:], it.saved[:it.hdrLen])
	it.built = false
}
