package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

const testOffset = 16

// checkValid verifies the IPv4 header and L4 checksums of a packet of f.
func checkValid(t *testing.T, f testFlow, p []byte) {
	t.Helper()
	l3 := f.l3Len()
	if !f.v6 && refSum(p[:20]) != 0xffff {
		t.Errorf("bad IPv4 header checksum")
	}
	if s := fold(f.pseudo(p, len(p)-l3) + uint32(refSum(p[l3:]))); s != 0xffff {
		t.Errorf("bad L4 checksum (sum %#04x)", s)
	}
}

func TestSplit(t *testing.T) {
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2} // NOP NOP timestamps
	tcpOpt4 := flow4(40000, false)
	tcpOpt4.tcpOptions = opts
	tcpOpt4.tos = 0x02
	tests := []struct {
		name    string
		f       testFlow
		flags   uint8
		payload int
		gso     int
	}{
		{"tcp4 3 segments FIN PSH", flow4(40000, false), tcpFlagACK | tcpFlagPSH | tcpFlagFIN, 3000, 1200},
		{"tcp4 exact multiple", flow4(40000, false), tcpFlagACK, 2400, 1200},
		{"tcp4 with options and CWR", tcpOpt4, tcpFlagACK | tcpFlagCWR | tcpFlagPSH, 5000, 1368},
		{"tcp4 one segment", flow4(40000, false), tcpFlagACK, 100, 1200},
		{"tcp6 45 segments", flow6(40000, false), tcpFlagACK | tcpFlagPSH, 45 * 1360, 1360},
		{"udp4 20 x 1000", flow4(40000, true), 0, 20 * 1000, 1000},
		{"udp4 short last", flow4(40000, true), 0, 2500, 1000},
		{"udp6 3 x 1200", flow6(40000, true), 0, 3600, 1200},
		{"tcp4 64KiB", flow4(40000, false), tcpFlagACK, MaxSegmentSize - 40, 1380},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := payloadBytes(tt.payload, 3)
			const id, seq, ack = 0xfffe, 0xfffff000, 77
			raw := tt.f.super(id, seq, ack, tt.flags, payload, tt.gso)
			bufs, sizes := readBufs(defaultBatchSize, testOffset)
			n := loadRead(bufs, testOffset, raw)
			res, err := processRead(bufs, sizes, testOffset, n)
			if err != nil || res.drop != dropNone || !res.split {
				t.Fatalf("processRead = %+v, %v", res, err)
			}
			want := (tt.payload + tt.gso - 1) / tt.gso
			if res.n != want {
				t.Fatalf("got %d segments; want %d", res.n, want)
			}
			for i := range res.n {
				seg := bufs[i][testOffset : testOffset+sizes[i]]
				lo, hi := i*tt.gso, min((i+1)*tt.gso, tt.payload)
				flags := tt.flags
				if i != res.n-1 {
					flags &^= tcpFlagFIN | tcpFlagPSH
				}
				if i != 0 {
					flags &^= tcpFlagCWR
				}
				exp := tt.f.packet(id+uint16(i), seq+uint32(lo), ack, flags, payload[lo:hi])
				if !bytes.Equal(seg, exp) {
					t.Fatalf("segment %d differs:\n got %x\nwant %x", i, seg[:min(64, len(seg))], exp[:min(64, len(exp))])
				}
				checkValid(t, tt.f, seg)
			}
		})
	}
}

func TestReadNeedsCsum(t *testing.T) {
	for _, f := range []testFlow{flow4(1, false), flow6(1, false), flow4(1, true), flow6(1, true)} {
		t.Run(fmt.Sprintf("v6=%v udp=%v", f.v6, f.udp), func(t *testing.T) {
			want := f.packet(9, 1000, 2000, tcpFlagACK|tcpFlagPSH, payloadBytes(333, 1))
			raw := f.super(9, 1000, 2000, tcpFlagACK|tcpFlagPSH, payloadBytes(333, 1), 1400)
			raw[1] = virtioGSONone
			bufs, sizes := readBufs(4, testOffset)
			n := loadRead(bufs, testOffset, raw)
			res, err := processRead(bufs, sizes, testOffset, n)
			if err != nil || res.n != 1 || !res.csumed || res.split {
				t.Fatalf("processRead = %+v, %v", res, err)
			}
			if got := bufs[0][testOffset : testOffset+sizes[0]]; !bytes.Equal(got, want) {
				t.Fatalf("completed packet differs")
			}
		})
	}
}

func TestReadUDPZeroChecksumBecomesFFFF(t *testing.T) {
	// Find a payload whose UDP checksum computes to zero, then check the
	// completed packet carries 0xffff instead.
	f := flow4(1, true)
	for x := range 1 << 16 {
		payload := []byte{byte(x >> 8), byte(x)}
		p := f.packet(1, 0, 0, 0, payload)
		p[20+6], p[20+7] = 0, 0
		if ^fold(f.pseudo(p, len(p)-20)+uint32(refSum(p[20:]))) != 0 {
			continue
		}
		raw := f.super(1, 0, 0, 0, payload, 1400)
		raw[1] = virtioGSONone
		bufs, sizes := readBufs(1, testOffset)
		res, _ := processRead(bufs, sizes, testOffset, loadRead(bufs, testOffset, raw))
		if res.n != 1 {
			t.Fatalf("processRead = %+v", res)
		}
		if c := binary.BigEndian.Uint16(bufs[0][testOffset+26:]); c != 0xffff {
			t.Fatalf("UDP checksum = %#04x; want 0xffff", c)
		}
		return
	}
	t.Fatal("no payload with a zero checksum found")
}

func TestReadPlainPacketUntouched(t *testing.T) {
	p := flow4(1, false).packet(1, 2, 3, tcpFlagACK, payloadBytes(50, 0))
	raw := append(make([]byte, virtioNetHdrLen), p...)
	bufs, sizes := readBufs(2, testOffset)
	res, err := processRead(bufs, sizes, testOffset, loadRead(bufs, testOffset, raw))
	if err != nil || res.n != 1 || res.split || res.csumed {
		t.Fatalf("processRead = %+v, %v", res, err)
	}
	if !bytes.Equal(bufs[0][testOffset:testOffset+sizes[0]], p) {
		t.Fatal("packet changed")
	}
}

func TestReadDrops(t *testing.T) {
	good := flow4(1, false).super(1, 2, 3, tcpFlagACK, payloadBytes(3000, 0), 1000)
	mod := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	tests := []struct {
		name string
		raw  []byte
		bufs int
		want dropReason
		err  error
	}{
		{"short", []byte{0, 0, 0}, 4, dropReadShort, nil},
		{"UFO", mod(func(b []byte) { b[1] = virtioGSOUDP }), 4, dropReadBadGSOType, nil},
		{"unknown type", mod(func(b []byte) { b[1] = 9 }), 4, dropReadBadGSOType, nil},
		{"gso size 0", mod(func(b []byte) { b[4], b[5] = 0, 0 }), 4, dropReadMalformed, nil},
		{"v6 header on tcp4", mod(func(b []byte) { b[10] = 0x65 }), 4, dropReadMalformed, nil},
		{"csum start not L4", mod(func(b []byte) { b[6] = 24 }), 4, dropReadMalformed, nil},
		{"not tcp", mod(func(b []byte) { b[10+9] = ipProtoUDP }), 4, dropReadMalformed, nil},
		{"tcp doff too small", mod(func(b []byte) { b[10+20+12] = 0x40 }), 4, dropReadMalformed, nil},
		{"headers longer than packet", good[:10+30], 4, dropReadMalformed, nil},
		{"too many segments", good, 2, dropReadTooManySegs, ErrTooManySegments},
		{"csum offset outside", mod(func(b []byte) { b[1] = 0; b[8] = 0xff; b[9] = 0xff }), 4, dropReadBadCsum, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bufs, sizes := readBufs(tt.bufs, testOffset)
			res, err := processRead(bufs, sizes, testOffset, loadRead(bufs, testOffset, tt.raw))
			if res.drop != tt.want || !errors.Is(err, tt.err) || res.n != 0 {
				t.Fatalf("processRead = %+v, %v; want drop %d, %v", res, err, tt.want, tt.err)
			}
		})
	}
}
