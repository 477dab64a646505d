package udp

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message of the given level and type.
func cmsg(level, typ int32, data []byte) []byte {
	h := make([]byte, unix.CmsgSpace(len(data)))
	if unix.SizeofPtr == 8 {
		binary.NativeEndian.PutUint64(h, uint64(unix.CmsgLen(len(data))))
	} else {
		binary.NativeEndian.PutUint32(h, uint32(unix.CmsgLen(len(data))))
	}
	binary.NativeEndian.PutUint32(h[unix.SizeofPtr:], uint32(level))
	binary.NativeEndian.PutUint32(h[unix.SizeofPtr+4:], uint32(typ))
	copy(h[unix.CmsgLen(0):], data)
	return h
}

// groCmsg builds a control buffer holding a UDP_GRO message of size seg,
// after an unrelated one when extra is set.
func groCmsg(seg int32, extra bool) []byte {
	var b []byte
	if extra {
		b = cmsg(unix.IPPROTO_IP, unix.IP_TTL, []byte{64, 0, 0, 0})
	}
	d := make([]byte, 4)
	binary.NativeEndian.PutUint32(d, uint32(seg))
	return append(b, cmsg(unix.SOL_UDP, unix.UDP_GRO, d)...)
}

func TestGROSizeParse(t *testing.T) {
	if got := groSize(groCmsg(1420, false)); got != 1420 {
		t.Fatalf("groSize = %d, want 1420", got)
	}
	if got := groSize(groCmsg(1200, true)); got != 1200 {
		t.Fatalf("groSize after another cmsg = %d, want 1200", got)
	}
	if got := groSize(nil); got != 0 {
		t.Fatalf("groSize(nil) = %d", got)
	}
	if got := groSize(groCmsg(-5, false)); got != 0 {
		t.Fatalf("negative size parsed as %d", got)
	}
}

func TestPutGSOSizeParsesBack(t *testing.T) {
	b := make([]byte, gsoCmsgMax)
	n := putGSOSize(b, 1420)
	msgs, err := unix.ParseSocketControlMessage(b[:n])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("ParseSocketControlMessage: %v, %d messages", err, len(msgs))
	}
	m := msgs[0]
	if m.Header.Level != unix.SOL_UDP || m.Header.Type != unix.UDP_SEGMENT || len(m.Data) < 2 ||
		binary.NativeEndian.Uint16(m.Data) != 1420 {
		t.Fatalf("got level %d type %d data %v", m.Header.Level, m.Header.Type, m.Data)
	}
}

// FuzzGROSize feeds the control-message parser arbitrary bytes (it must not
// panic or read out of bounds) and checks well-formed GRO messages, alone
// or after another, parse back to their size.
func FuzzGROSize(f *testing.F) {
	f.Add(groCmsg(1420, false), int32(1420), false)
	f.Add(groCmsg(64, true), int32(9000), true)
	f.Add([]byte{}, int32(1), false)
	f.Add(make([]byte, 16), int32(0), true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 17, 0, 0, 0, 104, 0, 0, 0}, int32(2), false)
	f.Fuzz(func(t *testing.T, oob []byte, seg int32, extra bool) {
		if got := groSize(oob); got < 0 {
			t.Fatalf("negative segment size %d", got)
		}
		want := int(seg)
		if seg <= 0 {
			want = 0
		}
		if got := groSize(groCmsg(seg, extra)); got != want {
			t.Fatalf("groSize = %d, want %d", got, want)
		}
	})
}

// FuzzSockaddr checks parseSockaddr never panics on any bytes and that
// putSockaddr/parseSockaddr round-trip every address and port.
func FuzzSockaddr(f *testing.F) {
	f.Add([]byte{}, []byte{127, 0, 0, 1}, uint16(51820))
	f.Add([]byte{2, 0, 0xca, 0x6c, 198, 18, 0, 1}, []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}, uint16(1))
	f.Add([]byte{10, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4}, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 2}, uint16(0))
	f.Fuzz(func(t *testing.T, raw, addr []byte, port uint16) {
		parseSockaddr(raw)
		a, ok := netip.AddrFromSlice(addr)
		if !ok {
			return
		}
		ep := netip.AddrPortFrom(a, port)
		var b [sockaddrSize]byte
		v6 := !a.Is4()
		n := putSockaddr(&b, ep, v6)
		got, ok := parseSockaddr(b[:n])
		want := netip.AddrPortFrom(a.Unmap(), port)
		if !ok || got != want {
			t.Fatalf("round trip of %v gave %v (%v)", ep, got, ok)
		}
	})
}

func TestRxTimestamp(t *testing.T) {
	b := cmsg(unix.SOL_UDP, unix.UDP_GRO, []byte{0x8c, 5, 0, 0})
	ts := make([]byte, 2*unix.SizeofPtr)
	if unix.SizeofPtr == 8 {
		binary.NativeEndian.PutUint64(ts, 1_700_000_000)
		binary.NativeEndian.PutUint64(ts[8:], 123_456_789)
	} else {
		binary.NativeEndian.PutUint32(ts, 1_700_000_000)
		binary.NativeEndian.PutUint32(ts[4:], 123_456_789)
	}
	b = append(b, cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS, ts)...)
	if got, ok := rxTimestamp(b); !ok || got != 1_700_000_000_123_456_789 {
		t.Fatalf("rxTimestamp = %d, %v", got, ok)
	}
	if groSize(b) != 0x58c {
		t.Fatalf("groSize beside a timestamp = %d", groSize(b))
	}
	if _, ok := rxTimestamp(groCmsg(1420, false)); ok {
		t.Fatal("found a timestamp where there is none")
	}
	if _, ok := rxTimestamp(b[:len(b)-8]); ok {
		t.Fatal("accepted a truncated timestamp")
	}
}

func TestPktinfoParse(t *testing.T) {
	ts := cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS, make([]byte, 2*unix.SizeofPtr))
	gro := groCmsg(1420, false)
	for _, tc := range []struct {
		name    string
		oob     []byte
		v6      bool
		local   string // "" for none
		ifindex uint32
	}{
		{"v4", unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: 3, Spec_dst: [4]byte{198, 18, 0, 2}, Addr: [4]byte{198, 18, 0, 2}}), false, "198.18.0.2", 3},
		// A broadcast's reply address is spec_dst, not the header's.
		{"v4 broadcast", unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: 2, Spec_dst: [4]byte{198, 18, 0, 1}, Addr: [4]byte{198, 18, 0, 255}}), false, "198.18.0.1", 2},
		{"v4 no spec_dst", unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: 2, Addr: [4]byte{198, 18, 0, 7}}), false, "198.18.0.7", 2},
		{"v4 limited broadcast", unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: 2, Addr: [4]byte{255, 255, 255, 255}}), false, "", 2},
		{"v4 multicast", unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: 2, Spec_dst: [4]byte{224, 0, 0, 1}}), false, "", 2},
		{"v4 among others", append(append(append([]byte{}, gro...), unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: 9, Spec_dst: [4]byte{198, 19, 1, 1}})...), ts...), false, "198.19.1.1", 9},
		{"v4 wanted, v6 there", unix.PktInfo6(&unix.Inet6Pktinfo{Addr: [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2}, Ifindex: 4}), false, "", 0},
		{"v6", unix.PktInfo6(&unix.Inet6Pktinfo{Addr: [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2}, Ifindex: 4}), true, "2001:db8::2", 4},
		{"v6 link-local", unix.PktInfo6(&unix.Inet6Pktinfo{Addr: [16]byte{0xfe, 0x80, 15: 1}, Ifindex: 5}), true, "fe80::1", 5},
		{"v6 multicast", unix.PktInfo6(&unix.Inet6Pktinfo{Addr: [16]byte{0xff, 0x02, 15: 1}, Ifindex: 5}), true, "", 5},
		{"v6 mapped", unix.PktInfo6(&unix.Inet6Pktinfo{Addr: [16]byte{10: 0xff, 11: 0xff, 198, 18, 0, 1}, Ifindex: 5}), true, "", 5},
		{"v6 among others", append(append([]byte{}, ts...), unix.PktInfo6(&unix.Inet6Pktinfo{Addr: [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 9}, Ifindex: 1})...), true, "2001:db8::9", 1},
		{"none", gro, false, "", 0},
		{"short v4", cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, []byte{1, 0, 0, 0, 198, 18, 0, 1}), false, "", 0},
		{"short v6", cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, make([]byte, 16)), true, "", 0},
	} {
		local, ifindex := pktinfo(tc.oob, tc.v6)
		want := netip.Addr{}
		if tc.local != "" {
			want = netip.MustParseAddr(tc.local)
		}
		if local != want || ifindex != tc.ifindex {
			t.Errorf("%s: pktinfo = %v, %d; want %v, %d", tc.name, local, ifindex, want, tc.ifindex)
		}
	}
}

func TestPutPktinfoParsesBack(t *testing.T) {
	for _, tc := range []struct {
		local       string
		ifindex     uint32
		wantIfindex uint32
	}{
		{"198.18.0.2", 7, 0}, // IPv4: the source only, the route picks the interface
		{"2001:db8::2", 7, 0},
		{"fe80::2", 7, 7}, // a link-local source needs its interface
	} {
		local := netip.MustParseAddr(tc.local)
		v6 := local.Is6()
		b := make([]byte, txOOBSize)
		n := putPktinfo(b, local, tc.ifindex, v6)
		// The kernel's own reading of it: level, type and layout.
		msgs, err := unix.ParseSocketControlMessage(b[:n])
		if err != nil || len(msgs) != 1 {
			t.Fatalf("%v: ParseSocketControlMessage: %v, %d messages", local, err, len(msgs))
		}
		m := msgs[0]
		if !v6 {
			if m.Header.Level != unix.IPPROTO_IP || m.Header.Type != unix.IP_PKTINFO || len(m.Data) != unix.SizeofInet4Pktinfo {
				t.Fatalf("%v: level %d type %d, %d bytes", local, m.Header.Level, m.Header.Type, len(m.Data))
			}
			if got := netip.AddrFrom4([4]byte(m.Data[4:8])); got != local ||
				binary.NativeEndian.Uint32(m.Data[0:4]) != tc.wantIfindex || [4]byte(m.Data[8:12]) != [4]byte{} {
				t.Fatalf("%v: in_pktinfo %x", local, m.Data)
			}
		} else {
			if m.Header.Level != unix.IPPROTO_IPV6 || m.Header.Type != unix.IPV6_PKTINFO || len(m.Data) != unix.SizeofInet6Pktinfo {
				t.Fatalf("%v: level %d type %d, %d bytes", local, m.Header.Level, m.Header.Type, len(m.Data))
			}
			if got := netip.AddrFrom16([16]byte(m.Data[0:16])); got != local || binary.NativeEndian.Uint32(m.Data[16:20]) != tc.wantIfindex {
				t.Fatalf("%v: in6_pktinfo %x", local, m.Data)
			}
		}
		// Our parser reads back what we wrote (the receive side's layout
		// is the same).
		if got, _ := pktinfo(b[:n], v6); got != local {
			t.Fatalf("%v: parsed back as %v", local, got)
		}
		// Followed by a GSO message, as build lays them out, both parse.
		n += putGSOSize(b[n:], 1200)
		if got, _ := pktinfo(b[:n], v6); got != local || groSizeOf(b[:n]) != 1200 {
			t.Fatalf("%v: source and segment size together: %v, %d", local, got, groSizeOf(b[:n]))
		}
	}
}

// groSizeOf reads a UDP_SEGMENT size the way groSize reads UDP_GRO's.
func groSizeOf(oob []byte) int {
	data := cmsgData(oob, unix.SOL_UDP, unix.UDP_SEGMENT)
	if len(data) < 2 {
		return 0
	}
	return int(binary.NativeEndian.Uint16(data))
}

// FuzzPktinfo feeds the packet-info parser arbitrary bytes (it must not
// panic, and must return only addresses a datagram can come from) and
// checks that what putPktinfo writes, alone or after another message,
// parses back.
func FuzzPktinfo(f *testing.F) {
	f.Add(unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: 3, Spec_dst: [4]byte{198, 18, 0, 2}}), []byte{198, 18, 0, 2}, uint32(3), false)
	f.Add(unix.PktInfo6(&unix.Inet6Pktinfo{Addr: [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2}, Ifindex: 4}), []byte{0x20, 0x01, 0x0d, 0xb8, 15: 2}, uint32(4), true)
	f.Add(groCmsg(1420, true), []byte{0xfe, 0x80, 15: 1}, uint32(9), false)
	f.Add([]byte{}, []byte{224, 0, 0, 1}, uint32(0), true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 8, 0, 0, 0}, []byte{}, uint32(1), false)
	f.Fuzz(func(t *testing.T, oob, addr []byte, ifindex uint32, extra bool) {
		for _, v6 := range []bool{false, true} {
			if local, _ := pktinfo(oob, v6); local.IsValid() && (!usableSource(local) || local.Is4() == v6) {
				t.Fatalf("pktinfo(v6 %v) returned %v", v6, local)
			}
		}
		local, ok := netip.AddrFromSlice(addr)
		if !ok || !usableSource(local) || local.Is4In6() {
			return
		}
		var b []byte
		if extra {
			b = groCmsg(1000, true)
		}
		v6 := local.Is6()
		w := make([]byte, pktinfoCmsgMax)
		b = append(b, w[:putPktinfo(w, local, ifindex, v6)]...)
		if got, _ := pktinfo(b, v6); got != local {
			t.Fatalf("%v parsed back as %v", local, got)
		}
	})
}
