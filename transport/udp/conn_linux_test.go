package udp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/transport"
)

// TestConnEcho runs a Conn on a socket opened elsewhere, IPv4 and
// dual-stack IPv6, with and without offloads: a burst from a plain client
// arrives unmapped and in order, and a burst sent back (GSO runs and a
// short tail) arrives whole.
func TestConnEcho(t *testing.T) {
	for _, tc := range []struct {
		listen string
		opts   Options
	}{
		{"127.0.0.1:0", Options{DisableAQM: true}},
		{"[::]:0", Options{DisableAQM: true}},
		{"[::]:0", Options{DisableAQM: true, DisableGSO: true, DisableGRO: true, DisableSticky: true}},
	} {
		uc, err := net.ListenUDP("udp", mustUDPAddr(t, tc.listen))
		if err != nil {
			t.Skipf("%s: %v", tc.listen, err)
		}
		c, err := NewConn(uc, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
		cl, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo4, port)))
		if err != nil {
			t.Fatal(err)
		}
		var want [][]byte
		for i := range 10 {
			p := payload(i, 1200)
			if i == 9 {
				p = p[:300]
			}
			want = append(want, p)
			if _, err := cl.Write(p); err != nil {
				t.Fatal(err)
			}
		}
		bufs, sizes, eps := batch(BatchSize)
		var got [][]byte
		var from transport.Endpoint
		for len(got) < len(want) {
			n, err := c.Receive(bufs, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
				from = eps[i]
			}
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%s: datagram %d differs", tc.listen, i)
			}
		}
		if from.Remote.Addr() != lo4 || from.Remote.Port() != uint16(cl.LocalAddr().(*net.UDPAddr).Port) {
			t.Fatalf("%s: from %v, want the client %v", tc.listen, from, cl.LocalAddr())
		}
		if err := c.Send(want, from); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		for i := range want {
			cl.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := cl.Read(buf)
			if err != nil {
				t.Fatalf("%s: reply %d: %v", tc.listen, i, err)
			}
			if !bytes.Equal(buf[:n], want[i]) {
				t.Fatalf("%s: reply %d differs (%d bytes)", tc.listen, i, n)
			}
		}
		cl.Close()
		c.Close()
		if _, err := c.Receive(bufs, sizes, eps); err != net.ErrClosed {
			t.Fatalf("Receive after Close: %v", err)
		}
		if err := c.Send(want, from); err != net.ErrClosed {
			t.Fatalf("Send after Close: %v", err)
		}
	}
}

func mustUDPAddr(t *testing.T, s string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
