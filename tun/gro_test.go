package tun

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// tcpStream returns n consecutive segments of f with the given payload size
// (the last one lastLen bytes if lastLen > 0), IDs and sequence numbers
// following on.
func tcpStream(f testFlow, id uint16, seq uint32, n, size, lastLen int, lastFlags uint8) [][]byte {
	var pkts [][]byte
	for i := range n {
		sz, flags := size, uint8(tcpFlagACK)
		if i == n-1 {
			flags |= lastFlags
			if lastLen > 0 {
				sz = lastLen
			}
		}
		pkts = append(pkts, f.packet(id+uint16(i), seq, 1, flags, payloadBytes(sz, byte(i))))
		seq += uint32(sz)
	}
	return pkts
}

func udpStream(f testFlow, id uint16, n, size, lastLen int) [][]byte {
	var pkts [][]byte
	for i := range n {
		sz := size
		if i == n-1 && lastLen > 0 {
			sz = lastLen
		}
		pkts = append(pkts, f.packet(id+uint16(i), 0, 0, 0, payloadBytes(sz, byte(i))))
	}
	return pkts
}

func cat(groups ...[][]byte) [][]byte {
	var out [][]byte
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// groupsOf returns the member indexes of each planned item.
func groupsOf(c *coalescer) [][]int {
	var out [][]int
	for _, it := range c.items {
		var g []int
		for m := int32(it.head); m >= 0; m = c.next[m] {
			g = append(g, int(m))
		}
		out = append(out, g)
	}
	return out
}

var (
	splitScratch [][]byte
	splitSizes   []int
)

// splitBuilt builds item k and splits the result back into packets.
func splitBuilt(t *testing.T, c *coalescer, bufs [][]byte, offset, k int) [][]byte {
	t.Helper()
	wire := c.build(bufs, offset, k)
	if c.items[k].count == 1 {
		if h := wire[:virtioNetHdrLen]; !bytes.Equal(h, make([]byte, virtioNetHdrLen)) {
			t.Fatalf("lone packet with virtio header %x", h)
		}
		return [][]byte{append([]byte(nil), wire[virtioNetHdrLen:]...)}
	}
	if splitScratch == nil {
		splitScratch, splitSizes = readBufs(maxGROSegments+1, testOffset)
	}
	out, sizes := splitScratch, splitSizes
	res, err := processRead(out, sizes, testOffset, loadRead(out, testOffset, wire))
	if err != nil || res.drop != dropNone {
		t.Fatalf("split of item %d: %+v, %v", k, res, err)
	}
	var pkts [][]byte
	for i := range res.n {
		pkts = append(pkts, append([]byte(nil), out[i][testOffset:testOffset+sizes[i]]...))
	}
	return pkts
}

func TestCoalescePlan(t *testing.T) {
	a4, b4, a6 := flow4(1000, false), flow4(2000, false), flow6(1000, false)
	u4, u6 := flow4(3000, true), flow6(3000, true)
	opt := flow4(1001, false)
	opt.tcpOptions = []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	withOpts := func(ts byte) []byte {
		f := opt
		f.tcpOptions = append([]byte(nil), opt.tcpOptions...)
		f.tcpOptions[7] = ts
		return f.packet(5, 100, 1, tcpFlagACK, payloadBytes(100, 0))
	}
	badCsum := tcpStream(a4, 1, 0, 3, 1000, 0, 0)
	badCsum[1][40] ^= 0xff
	gapped := tcpStream(a4, 1, 0, 3, 1000, 0, 0)
	gapped[2] = a4.packet(3, 2500, 1, tcpFlagACK, payloadBytes(1000, 0))
	otherAck := tcpStream(a4, 1, 0, 3, 1000, 0, 0)
	otherAck[2] = a4.packet(3, 2000, 2, tcpFlagACK, payloadBytes(1000, 0))
	idJump := tcpStream(a4, 1, 0, 3, 1000, 0, 0)
	idJump[2] = a4.packet(9, 2000, 1, tcpFlagACK, payloadBytes(1000, 0))
	ttl := tcpStream(a4, 1, 0, 2, 1000, 0, 0)
	ttl[1][8] = 63
	a4.fixChecksums(ttl[1])
	udpZero := udpStream(u4, 1, 2, 500, 0)
	udpZero[1][26], udpZero[1][27] = 0, 0
	synMid := cat(tcpStream(a4, 1, 0, 2, 1000, 0, 0),
		[][]byte{a4.packet(3, 2000, 1, tcpFlagACK|tcpFlagFIN, nil)},
		[][]byte{a4.packet(4, 2000, 1, tcpFlagACK, payloadBytes(1000, 0))})
	frag := cat(udpStream(u4, 1, 1, 500, 0), [][]byte{func() []byte {
		p := u4.packet(2, 0, 0, 0, payloadBytes(500, 0))
		p[6] |= 0x20 // MF
		return p
	}()}, udpStream(u4, 2, 1, 500, 0))
	long := tcpStream(a4, 1, 0, 50, 1400, 0, 0) // 50*1400 > 64 KiB

	tests := []struct {
		name     string
		pkts     [][]byte
		tcp, udp bool
		want     [][]int
	}{
		{"tcp4 stream", tcpStream(a4, 1, 0, 5, 1000, 0, tcpFlagPSH), true, true, [][]int{{0, 1, 2, 3, 4}}},
		{"tcp4 short last", tcpStream(a4, 1, 0, 3, 1000, 10, 0), true, true, [][]int{{0, 1, 2}}},
		{"tcp6 stream", tcpStream(a6, 1, 0, 4, 1200, 0, 0), true, true, [][]int{{0, 1, 2, 3}}},
		{"gro off", tcpStream(a4, 1, 0, 3, 1000, 0, 0), false, false, [][]int{{0}, {1}, {2}}},
		{"interleaved flows", [][]byte{
			a4.packet(1, 0, 1, tcpFlagACK, payloadBytes(1000, 0)),
			b4.packet(1, 0, 1, tcpFlagACK, payloadBytes(1000, 0)),
			a4.packet(2, 1000, 1, tcpFlagACK, payloadBytes(1000, 0)),
			b4.packet(2, 1000, 1, tcpFlagACK, payloadBytes(1000, 0)),
		}, true, true, [][]int{{0, 2}, {1, 3}}},
		{"PSH ends group", cat(tcpStream(a4, 1, 0, 2, 1000, 0, tcpFlagPSH), tcpStream(a4, 3, 2000, 2, 1000, 0, 0)), true, true, [][]int{{0, 1}, {2, 3}}},
		{"PSH on head", cat(tcpStream(a4, 1, 0, 1, 1000, 0, tcpFlagPSH), tcpStream(a4, 2, 1000, 2, 1000, 0, 0)), true, true, [][]int{{0}, {1, 2}}},
		{"smaller segment ends group", cat(tcpStream(a4, 1, 0, 2, 1000, 500, 0), tcpStream(a4, 3, 1500, 2, 1000, 0, 0)), true, true, [][]int{{0, 1}, {2, 3}}},
		{"bigger segment starts group", cat(tcpStream(a4, 1, 0, 2, 500, 0, 0), tcpStream(a4, 3, 1000, 2, 1000, 0, 0)), true, true, [][]int{{0, 1}, {2, 3}}},
		{"bad checksum alone", badCsum, true, true, [][]int{{0}, {1}, {2}}},
		{"sequence gap", gapped, true, true, [][]int{{0, 1}, {2}}},
		{"different ack", otherAck, true, true, [][]int{{0, 1}, {2}}},
		{"IPv4 ID jump", idJump, true, true, [][]int{{0, 1}, {2}}},
		{"different TTL", ttl, true, true, [][]int{{0}, {1}}},
		{"same options coalesce", [][]byte{withOpts(1), opt.packet(6, 200, 1, tcpFlagACK, payloadBytes(100, 1))}, true, true, nil},
		{"different options", [][]byte{withOpts(1), func() []byte {
			p := withOpts(2)
			binary.BigEndian.PutUint16(p[4:], 6)
			binary.BigEndian.PutUint32(p[24:], 200)
			opt.fixChecksums(p)
			return p
		}()}, true, true, [][]int{{0}, {1}}},
		{"FIN keeps order", synMid, true, true, [][]int{{0, 1}, {2}, {3}}},
		{"udp4 with USO", udpStream(u4, 1, 20, 1000, 0), true, true, [][]int{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}}},
		{"udp6 short last", udpStream(u6, 1, 3, 1000, 7), true, true, [][]int{{0, 1, 2}}},
		{"udp without USO", udpStream(u4, 1, 2, 1000, 0), true, false, [][]int{{0}, {1}}},
		{"udp zero checksum", udpZero, true, true, [][]int{{0}, {1}}},
		{"fragment closes flows", frag, true, true, [][]int{{0}, {1}, {2}}},
		{"64 KiB limit", long, true, true, nil},
		{"junk", [][]byte{{}, {0x45}, {0x60, 1, 2}, make([]byte, 60)}, true, true, [][]int{{0}, {1}, {2}, {3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c coalescer
			bufs := writeBufs(testOffset, tt.pkts...)
			c.plan(bufs, testOffset, tt.tcp, tt.udp)
			got := groupsOf(&c)
			switch tt.name {
			case "same options coalesce":
				if len(got) != 1 {
					t.Fatalf("groups = %v; want one", got)
				}
			case "64 KiB limit":
				if len(got) != 2 || len(got[0]) != 46 || c.items[0].total > MaxSegmentSize {
					t.Fatalf("groups = %v (total %d); want 46 + 4", got, c.items[0].total)
				}
			default:
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Fatalf("groups = %v; want %v", got, tt.want)
				}
			}
			// Whatever the grouping, building and splitting each item
			// gives back its packets.
			var out [][]byte
			for k := range c.items {
				out = append(out, splitBuilt(t, &c, bufs, testOffset, k)...)
			}
			var want [][]byte
			for _, g := range got {
				for _, i := range g {
					want = append(want, tt.pkts[i])
				}
			}
			if len(out) != len(want) {
				t.Fatalf("%d packets out; want %d", len(out), len(want))
			}
			for i := range out {
				if !bytes.Equal(out[i], want[i]) {
					t.Fatalf("packet %d differs after build+split", i)
				}
			}
		})
	}
}

func TestCoalesceBuildRestore(t *testing.T) {
	f := flow4(1, false)
	pkts := tcpStream(f, 1, 0, 3, 1000, 0, tcpFlagPSH)
	bufs := writeBufs(testOffset, pkts...)
	var c coalescer
	c.plan(bufs, testOffset, true, true)
	wire := c.build(bufs, testOffset, 0)
	var h virtioNetHdr
	h.decode(wire)
	want := virtioNetHdr{flags: virtioFlagNeedsCsum, gsoType: virtioGSOTCPv4, hdrLen: 40, gsoSize: 1000, csumStart: 20, csumOffset: 16}
	if h != want {
		t.Fatalf("virtio header %+v; want %+v", h, want)
	}
	if len(wire) != virtioNetHdrLen+40+3000 {
		t.Fatalf("super-packet length %d", len(wire))
	}
	if wire[virtioNetHdrLen+33]&tcpFlagPSH == 0 {
		t.Fatal("PSH of the last member not on the super-packet")
	}
	c.restore(bufs, testOffset, 0)
	for i, p := range pkts {
		if !bytes.Equal(bufs[i][testOffset:], p) {
			t.Fatalf("packet %d not restored", i)
		}
	}
}

// TestCoalesceSplitRoundTrip is the property: for random batches of
// interleaved TCP and UDP flows (IPv4 and IPv6), coalescing and then
// splitting each item gives the original packets byte for byte, every
// packet is in exactly one item, each flow's packets keep their order,
// and streams do get coalesced.
func TestCoalesceSplitRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	var c coalescer
	for iter := range 300 {
		var streams [][][]byte
		nflows := 1 + r.IntN(4)
		for fi := range nflows {
			var f testFlow
			udp := r.IntN(3) == 0
			if r.IntN(2) == 0 {
				f = flow6(uint16(1000+fi), udp)
			} else {
				f = flow4(uint16(1000+fi), udp)
			}
			if !udp && r.IntN(2) == 0 {
				f.tcpOptions = []byte{1, 1, 8, 10, 0, 0, 0, byte(iter), 0, 0, 0, 2}
			}
			size := 1 + r.IntN(1400)
			n := 1 + r.IntN(30)
			last := 0
			if r.IntN(2) == 0 {
				last = 1 + r.IntN(size)
			}
			id := uint16(r.Uint32())
			if udp {
				streams = append(streams, udpStream(f, id, n, size, last))
			} else {
				var fl uint8
				if r.IntN(3) == 0 {
					fl = tcpFlagPSH
				}
				streams = append(streams, tcpStream(f, id, r.Uint32(), n, size, last, fl))
			}
		}
		// Interleave the streams randomly, keeping each one's order.
		var pkts [][]byte
		var flowOf []int
		pos := make([]int, len(streams))
		for {
			var live []int
			for s := range streams {
				if pos[s] < len(streams[s]) {
					live = append(live, s)
				}
			}
			if len(live) == 0 {
				break
			}
			s := live[r.IntN(len(live))]
			pkts = append(pkts, streams[s][pos[s]])
			flowOf = append(flowOf, s)
			pos[s]++
		}
		bufs := writeBufs(testOffset, pkts...)
		c.plan(bufs, testOffset, true, true)
		groups := groupsOf(&c)
		seen := make([]int, len(pkts))
		lastOfFlow := make([]int, len(streams))
		for i := range lastOfFlow {
			lastOfFlow[i] = -1
		}
		for k, g := range groups {
			out := splitBuilt(t, &c, bufs, testOffset, k)
			if len(out) != len(g) {
				t.Fatalf("iter %d: item %d split into %d; has %d members", iter, k, len(out), len(g))
			}
			for j, i := range g {
				seen[i]++
				if !bytes.Equal(out[j], pkts[i]) {
					t.Fatalf("iter %d: packet %d differs after coalesce+split", iter, i)
				}
				if i < lastOfFlow[flowOf[i]] {
					t.Fatalf("iter %d: flow %d reordered", iter, flowOf[i])
				}
				lastOfFlow[flowOf[i]] = i
			}
		}
		for i, s := range seen {
			if s != 1 {
				t.Fatalf("iter %d: packet %d in %d items", iter, i, s)
			}
		}
		if len(groups) > len(pkts) || (len(pkts) > 2*len(streams)+len(streams) && len(groups) == len(pkts)) {
			t.Fatalf("iter %d: %d packets gave %d items: nothing coalesced", iter, len(pkts), len(groups))
		}
	}
}
