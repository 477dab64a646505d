package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

const sentinel = 0xa5

var sentinelBlock = bytes.Repeat([]byte{sentinel}, 2*MaxSegmentSize)

func untouched(b []byte) bool { return bytes.Equal(b, sentinelBlock[:len(b)]) }

// FuzzVirtioRead feeds arbitrary bytes, as one read of the TUN file, into
// the read path with a varying number of buffers. It checks: no panic; a
// drop or an error places no packet; outputs fit the buffers and the
// super-packet (each segment's IP length is its size, it carries at most
// gso_size payload bytes, so is at most MTU-sized when the kernel's
// gso_size fits the MTU, and the payloads add up to the input's); split
// segments have valid checksums; nothing outside each output packet's
// bytes is written.
func FuzzVirtioRead(f *testing.F) {
	f.Add(flow4(1, false).super(1, 2, 3, tcpFlagACK|tcpFlagPSH, payloadBytes(3000, 1), 1000), uint8(10))
	f.Add(flow6(1, false).super(1, 2, 3, tcpFlagACK|tcpFlagFIN, payloadBytes(5000, 1), 1400), uint8(3))
	f.Add(flow4(1, true).super(1, 0, 0, 0, payloadBytes(2000, 1), 100), uint8(30))
	f.Add(flow6(1, true).super(1, 0, 0, 0, payloadBytes(999, 1), 500), uint8(1))
	nc := flow4(1, true).super(1, 0, 0, 0, payloadBytes(99, 1), 500)
	nc[1] = 0
	f.Add(nc, uint8(1))
	f.Add(append(make([]byte, 10), flow4(1, false).packet(1, 2, 3, tcpFlagACK, nil)...), uint8(0))
	f.Add([]byte{1, 1, 0, 0, 1, 0, 20, 0, 16, 0, 0x45}, uint8(5))
	f.Add([]byte{}, uint8(0))
	f.Fuzz(fuzzVirtioReadOne)
}

func fuzzVirtioReadOne(t *testing.T, data []byte, nbufs uint8) {
	{
		// Big inputs only slow the fuzzer down (every buffer is as long
		// as the input); the split logic does not depend on size, and
		// TestSplit covers 64 KiB.
		if len(data) > 8192 {
			data = data[:8192]
		}
		const offset = 12
		count := 1 + int(nbufs)%(defaultBatchSize+2)
		size := offset + len(data) + 8
		backing := make([]byte, count*size)
		copy(backing, sentinelBlock)
		for filled := min(len(sentinelBlock), len(backing)); filled < len(backing); filled *= 2 {
			copy(backing[filled:], backing[:filled])
		}
		bufs := make([][]byte, count)
		for i := range bufs {
			bufs[i] = backing[i*size : (i+1)*size : (i+1)*size]
		}
		sizes := make([]int, count)
		n := copy(bufs[0][offset-virtioNetHdrLen:], data)
		res, err := processRead(bufs, sizes, offset, n)
		if errors.Is(err, ErrTooManySegments) != (res.drop == dropReadTooManySegs) {
			t.Fatalf("ErrTooManySegments %v with drop %d", err, res.drop)
		}
		if err != nil && !errors.Is(err, ErrTooManySegments) && !errors.Is(err, io.ErrShortBuffer) {
			t.Fatalf("unexpected error %v", err)
		}
		if res.drop != dropNone || err != nil {
			if res.n != 0 {
				t.Fatalf("drop %d / err %v with %d packets", res.drop, err, res.n)
			}
			return
		}
		if res.n < 1 || res.n > count {
			t.Fatalf("%d packets from %d buffers", res.n, count)
		}
		var h virtioNetHdr
		h.decode(data)
		pktLen := n - virtioNetHdrLen
		payloadSum := 0
		for i := range res.n {
			if sizes[i] < 0 || offset+sizes[i] > len(bufs[i]) || sizes[i] > pktLen {
				t.Fatalf("packet %d: size %d of %d", i, sizes[i], pktLen)
			}
			if i > 0 && !untouched(bufs[i][offset+sizes[i]:]) {
				t.Fatalf("packet %d: bytes past the end written", i)
			}
			if i > 0 && !untouched(bufs[i][:offset]) {
				t.Fatalf("packet %d: headroom written", i)
			}
			if !res.split {
				continue
			}
			seg := bufs[i][offset : offset+sizes[i]]
			l4 := int(h.csumStart)
			var hdrLen int
			if h.gsoType&^virtioGSOECN == virtioGSOUDPL4 {
				hdrLen = l4 + 8
			} else {
				hdrLen = l4 + int(seg[l4+12]>>4)*4
			}
			payload := sizes[i] - hdrLen
			if payload < 0 || payload > int(h.gsoSize) {
				t.Fatalf("segment %d: payload %d, gso_size %d", i, payload, h.gsoSize)
			}
			payloadSum += payload
			var addrs []byte
			if seg[0]>>4 == 4 {
				if int(binary.BigEndian.Uint16(seg[2:])) != sizes[i] || refSum(seg[:l4]) != 0xffff {
					t.Fatalf("segment %d: bad IPv4 length or checksum", i)
				}
				addrs = seg[12:20]
			} else {
				if int(binary.BigEndian.Uint16(seg[4:]))+40 != sizes[i] {
					t.Fatalf("segment %d: bad IPv6 length", i)
				}
				addrs = seg[8:40]
			}
			proto := seg[9]
			if seg[0]>>4 == 6 {
				proto = seg[6]
			}
			s := uint32(refSum(addrs)) + uint32(proto) + uint32(sizes[i]-l4) + uint32(refSum(seg[l4:]))
			if fold(s) != 0xffff {
				t.Fatalf("segment %d: bad L4 checksum", i)
			}
		}
		for i := res.n; i < count; i++ {
			if i > 0 && !untouched(bufs[i]) {
				t.Fatalf("unused buffer %d written", i)
			}
		}
		if res.split {
			first := bufs[0][offset : offset+sizes[0]]
			l4 := int(h.csumStart)
			hl := l4 + 8
			if h.gsoType&^virtioGSOECN != virtioGSOUDPL4 {
				hl = l4 + int(first[l4+12]>>4)*4
			}
			if payloadSum != pktLen-hl {
				t.Fatalf("payloads add up to %d; input had %d", payloadSum, pktLen-hl)
			}
		}
	}
}

// fuzzBatch turns fuzz bytes into a batch of packets: raw packets, and
// packets of a few synthetic flows whose fields follow on (so they can be
// coalesced) unless the bytes say to disturb them.
func fuzzBatch(data []byte) [][]byte {
	flows := []testFlow{flow4(1, false), flow6(2, false), flow4(3, true), flow6(4, true)}
	var seq [4]uint32
	var id [4]uint16
	var pkts [][]byte
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	for len(data) > 0 && len(pkts) < 200 {
		op := next()
		if op%4 == 0 {
			l := int(next())
			l = min(l, len(data))
			pkts = append(pkts, append([]byte(nil), data[:l]...))
			data = data[l:]
			continue
		}
		fi := int(op>>2) % len(flows)
		f := flows[fi]
		size := int(next())<<3 | int(op>>4)
		size %= 1500
		var flags uint8 = tcpFlagACK
		mod := next()
		if mod&1 != 0 {
			flags |= tcpFlagPSH
		}
		if mod&2 != 0 {
			flags = mod >> 2 // arbitrary flags
		}
		if mod&0x40 != 0 {
			seq[fi] += uint32(next())
		}
		if mod&0x80 != 0 {
			id[fi] += uint16(next())
		}
		p := f.packet(id[fi], seq[fi], 1, flags, payloadBytes(size, op))
		seq[fi] += uint32(size)
		id[fi]++
		if c := next(); c != 0 && int(c) < len(p) && mod&0x20 != 0 {
			p[c] ^= next() | 1
		}
		pkts = append(pkts, p)
	}
	return pkts
}

// FuzzGRO feeds arbitrary packet batches to the coalescer. It checks: no
// panic; every input packet is in exactly one item; items follow their
// first packets' order and packets of one flow keep their order; building
// then splitting each item gives its packets back byte for byte; restore
// gives back the head packet.
func FuzzGRO(f *testing.F) {
	f.Add([]byte{1, 100, 0, 0, 1, 100, 0, 0, 1, 100, 1, 0}, uint8(3))
	f.Add([]byte{3, 125, 0, 0, 3, 125, 0, 0, 2, 10, 0, 0, 3, 125, 0, 0}, uint8(3))
	f.Add([]byte{4, 10, 0x45, 0, 0, 10, 1, 2, 3, 4, 5, 6, 1, 50, 0, 0, 1, 50, 0x40, 9, 0}, uint8(1))
	f.Add([]byte{7, 90, 0, 0, 7, 90, 0, 0, 11, 90, 0x20, 30, 1, 7, 90, 0}, uint8(2))
	f.Add([]byte{1, 200, 0, 0, 1, 200, 0, 0, 1, 200, 1, 0, 5, 200, 0, 0, 5, 200, 0, 0}, uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		pkts := fuzzBatch(data)
		if len(pkts) == 0 {
			return
		}
		const offset = 10
		bufs := writeBufs(offset, pkts...)
		var c coalescer
		items := c.plan(bufs, offset, mode&1 != 0, mode&2 != 0)
		itemOf := make([]int, len(pkts))
		for i := range itemOf {
			itemOf[i] = -1
		}
		prevHead := -1
		for k, it := range items {
			if it.head <= prevHead {
				t.Fatalf("item %d head %d after %d", k, it.head, prevHead)
			}
			prevHead = it.head
			cnt, prev := 0, -1
			for m := int32(it.head); m >= 0; m = c.next[m] {
				if int(m) <= prev || int(m) >= len(pkts) {
					t.Fatalf("item %d: member %d after %d", k, m, prev)
				}
				if itemOf[m] != -1 {
					t.Fatalf("packet %d in items %d and %d", m, itemOf[m], k)
				}
				itemOf[m] = k
				prev = int(m)
				cnt++
			}
			if cnt != it.count || prev != it.last {
				t.Fatalf("item %d: count %d/%d, last %d/%d", k, cnt, it.count, prev, it.last)
			}
		}
		for i, k := range itemOf {
			if k == -1 {
				t.Fatalf("packet %d in no item", i)
			}
		}
		// Per-flow order.
		info := make([]pktInfo, len(pkts))
		for i, p := range pkts {
			info[i] = classify(p, true, true)
		}
		for i := range pkts {
			for j := i + 1; j < len(pkts); j++ {
				related := info[i].resetAll || info[j].resetAll ||
					info[i].hasFlow && info[j].hasFlow && sameFlow(pkts[i], info[i].l4, pkts[j], info[j].l4)
				if related && itemOf[i] > itemOf[j] {
					t.Fatalf("packets %d and %d of one flow reordered", i, j)
				}
			}
		}
		for k := range items {
			got := splitBuilt(t, &c, bufs, offset, k)
			i := 0
			for m := int32(items[k].head); m >= 0; m = c.next[m] {
				if i >= len(got) || !bytes.Equal(got[i], pkts[m]) {
					t.Fatalf("item %d: member %d differs after build+split", k, m)
				}
				i++
			}
			if i != len(got) {
				t.Fatalf("item %d split into %d; has %d", k, len(got), i)
			}
			c.restore(bufs, offset, k)
			if h := items[k].head; !bytes.Equal(bufs[h][offset:], pkts[h]) {
				t.Fatalf("item %d: head not restored", k)
			}
		}
	})
}
