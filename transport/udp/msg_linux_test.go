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
