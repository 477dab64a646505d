package udp

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/transport"
)

// nsPrefix is unique to this test process, so parallel runs never touch
// each other's namespaces.
var nsPrefix = func() string {
	var b [4]byte
	rand.Read(b[:])
	return "ptun-udptest-" + hex.EncodeToString(b[:]) + "-"
}()

// newNS creates a namespace that is deleted when t ends, failed or not.
func newNS(t *testing.T, tag string) *netns.NS {
	t.Helper()
	n, err := netns.New(nsPrefix + tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// stickyHost is a gateway namespace whose interface has two addresses of
// each family, a client namespace across a veth, and a Transport bound to
// the wildcard in the gateway.
type stickyHost struct {
	gw, cl  *netns.NS
	gwAddrs map[bool][2]netip.Addr // by IPv6
	clAddr  map[bool]netip.Addr
	tr      *Transport
	port    uint16
	rx      <-chan received
	ifindex uint32 // of gw0
}

func newStickyHost(t *testing.T, opts Options) *stickyHost {
	t.Helper()
	testenv.RequireRoot(t)
	h := &stickyHost{
		gw: newNS(t, "gw"), cl: newNS(t, "cl"),
		gwAddrs: map[bool][2]netip.Addr{
			false: {netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")},
			true:  {netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")},
		},
		clAddr: map[bool]netip.Addr{
			false: netip.MustParseAddr("198.18.0.3"),
			true:  netip.MustParseAddr("2001:db8::3"),
		},
	}
	if err := netns.Veth(h.gw, "gw0", h.cl, "cl0", 1500); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		bits := 24
		if v6 {
			bits = 64
		}
		for _, a := range h.gwAddrs[v6] {
			if err := h.gw.AddAddr("gw0", netip.PrefixFrom(a, bits)); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.cl.AddAddr("cl0", netip.PrefixFrom(h.clAddr[v6], bits)); err != nil {
			t.Fatal(err)
		}
	}
	var fns []transport.ReceiveFunc
	if err := h.gw.Do(func() error {
		ifc, err := net.InterfaceByName("gw0")
		if err != nil {
			return err
		}
		h.ifindex = uint32(ifc.Index)
		h.tr = New(opts)
		fns, h.port, err = h.tr.Open(0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.tr.Close() })
	if len(fns) != 2 {
		h.tr.Close()
		testenv.SkipOrFail(t, "%d sockets in the gateway namespace: it lacks IPv4 or IPv6", len(fns))
	}
	h.rx = collect(t, h.tr, fns)
	return h
}

// routeSource is the source address the gateway's routes pick for dst.
func (h *stickyHost) routeSource(t *testing.T, dst netip.Addr) netip.Addr {
	t.Helper()
	var src netip.Addr
	if err := h.gw.Do(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
		if err != nil {
			return err
		}
		defer c.Close()
		src = c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return src
}

// other returns the gateway address of the family that is not the route's
// choice: the one only a sticky source replies from.
func (h *stickyHost) other(t *testing.T, v6 bool) (target, routeSrc netip.Addr) {
	t.Helper()
	routeSrc = h.routeSource(t, h.clAddr[v6])
	addrs := h.gwAddrs[v6]
	switch routeSrc {
	case addrs[0]:
		return addrs[1], routeSrc
	case addrs[1]:
		return addrs[0], routeSrc
	}
	t.Fatalf("the route picks %v for %v, neither of the gateway's %v", routeSrc, h.clAddr[v6], addrs)
	return
}

// client opens a UDP socket in the client namespace.
func (h *stickyHost) client(t *testing.T, v6 bool) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := h.cl.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(h.clAddr[v6], 0)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readFrom reads n datagrams on c (bounded in time) and checks they all
// come from src with the contents of want.
func readFrom(t *testing.T, c *net.UDPConn, want [][]byte, src netip.Addr) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	for i := range want {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram %d of %d: %v", i, len(want), err)
		}
		if from.Addr().Unmap() != src {
			t.Fatalf("datagram %d came from %v, want %v", i, from, src)
		}
		if !bytes.Equal(buf[:n], want[i]) {
			t.Fatalf("datagram %d: %d bytes, want %d (or contents differ)", i, n, len(want[i]))
		}
	}
}

// hear sends a datagram from c to the gateway's address to and returns
// the endpoint the transport reports for it.
func (h *stickyHost) hear(t *testing.T, c *net.UDPConn, to netip.Addr) transport.Endpoint {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(to, h.port)); err != nil {
		t.Fatal(err)
	}
	r := expect(t, h.rx, 1)[0]
	if string(r.b) != "hello" {
		t.Fatalf("received %q", r.b)
	}
	return r.ep
}

// TestStickySourceNetns: a gateway with two addresses of each family gets
// a datagram on the one its routes would not pick. The reply to the
// endpoint as received, one datagram or a segmented (GSO) batch, must
// leave from that address; the same endpoint without its local address
// gets the route's choice. When the address is removed, the reply leaves
// from the route's choice, is counted, and Send says so.
func TestStickySourceNetns(t *testing.T) {
	h := newStickyHost(t, Options{Logf: t.Logf})
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			target, routeSrc := h.other(t, v6)
			t.Logf("the route picks %v; the client writes to %v", routeSrc, target)
			c := h.client(t, v6)
			clientEP := c.LocalAddr().(*net.UDPAddr).AddrPort()
			ep := h.hear(t, c, target)
			want := transport.Endpoint{Remote: clientEP, Local: target, IfIndex: h.ifindex}
			if ep != want {
				t.Fatalf("received endpoint %v, want %v", ep, want)
			}

			one := [][]byte{[]byte("reply")}
			if err := h.tr.Send(one, ep); err != nil {
				t.Fatalf("Send: %v", err)
			}
			readFrom(t, c, one, target)

			// A batch: equal sizes go out segmented when the kernel has
			// GSO; every datagram still leaves from target.
			gsoBefore := counter(h.tr, "udp_tx_gso_messages")
			batch := make([][]byte, 20)
			for i := range batch {
				batch[i] = payload(i, 1000)
			}
			if err := h.tr.Send(batch, ep); err != nil {
				t.Fatalf("Send batch: %v", err)
			}
			readFrom(t, c, batch, target)
			if gso, _ := h.tr.Offloads(); gso && counter(h.tr, "udp_tx_gso_messages") == gsoBefore {
				t.Error("a batch of equal datagrams went out without GSO")
			}

			// Without the local address the route picks: the test tells
			// the two apart.
			if err := h.tr.Send(one, ep.WithoutLocal()); err != nil {
				t.Fatal(err)
			}
			readFrom(t, c, one, routeSrc)

			// The address goes away.
			h.delAddr(t, target, v6)
			cleared := counter(h.tr, "udp_sticky_source_cleared")
			if err := h.tr.Send(batch, ep); !errors.Is(err, transport.ErrSourceCleared) {
				t.Fatalf("Send from a removed address: %v, want ErrSourceCleared", err)
			}
			readFrom(t, c, batch, routeSrc)
			if got := counter(h.tr, "udp_sticky_source_cleared"); got != cleared+1 {
				t.Fatalf("udp_sticky_source_cleared = %d, want %d", got, cleared+1)
			}
			if got := counter(h.tr, "udp_gso_disabled"); got != 0 {
				t.Fatalf("udp_gso_disabled = %d: a refused source turned GSO off", got)
			}
			for _, c := range h.tr.Stats() {
				if c.Value != 0 && len(c.Name) > 9 && c.Name[:9] == "drop_udp_" && c.Name != "drop_udp_aqm" {
					t.Errorf("%s = %d", c.Name, c.Value)
				}
			}
		})
	}
}

// TestStickyKillSwitch: with PTUN_DISABLE_STICKY=1 received endpoints have
// no local address and a given one is ignored; replies take the route's
// source.
func TestStickyKillSwitch(t *testing.T) {
	t.Setenv("PTUN_DISABLE_STICKY", "1")
	opts := OptionsFromEnv(Options{})
	if !opts.DisableSticky {
		t.Fatal("PTUN_DISABLE_STICKY=1 did not set DisableSticky")
	}
	h := newStickyHost(t, opts)
	target, routeSrc := h.other(t, false)
	c := h.client(t, false)
	ep := h.hear(t, c, target)
	if ep.Local.IsValid() || ep.IfIndex != 0 {
		t.Fatalf("received endpoint %v has a local address with sticky sources off", ep)
	}
	ep.Local = target
	if err := h.tr.Send([][]byte{[]byte("reply")}, ep); err != nil {
		t.Fatal(err)
	}
	readFrom(t, c, [][]byte{[]byte("reply")}, routeSrc)
}

// delAddr removes a from the gateway's interface.
func (h *stickyHost) delAddr(t *testing.T, a netip.Addr, v6 bool) {
	t.Helper()
	fd, err := unix.Open(h.gw.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	nl, err := netlink.NewHandleAt(vnetns.NsHandle(fd), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName("gw0")
	if err != nil {
		t.Fatal(err)
	}
	bits := 24
	if v6 {
		bits = 64
	}
	addr, err := netlink.ParseAddr(fmt.Sprintf("%v/%d", a, bits))
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrDel(link, addr); err != nil {
		t.Fatalf("delete %v: %v", a, err)
	}
}

// TestStickyLoopback: over loopback, without privileges, received
// endpoints carry the local address and lo's index, and a reply to one
// arrives.
func TestStickyLoopback(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no lo: %v", err)
	}
	for _, addr := range []netip.Addr{lo4, lo6} {
		a, fnsA, portA := open(t, Options{})
		b, fnsB, portB := open(t, Options{})
		chA, chB := collect(t, a, fnsA), collect(t, b, fnsB)
		if err := a.Send([][]byte{[]byte("ping")}, transport.EndpointFrom(netip.AddrPortFrom(addr, portB))); err != nil {
			t.Fatal(err)
		}
		r := expect(t, chB, 1)[0]
		want := transport.Endpoint{Remote: netip.AddrPortFrom(addr, portA), Local: addr, IfIndex: uint32(lo.Index)}
		if r.ep != want {
			t.Fatalf("received endpoint %v, want %v", r.ep, want)
		}
		if err := b.Send([][]byte{[]byte("pong")}, r.ep); err != nil {
			t.Fatal(err)
		}
		if got := expect(t, chA, 1)[0]; string(got.b) != "pong" || got.from != netip.AddrPortFrom(addr, portB) {
			t.Fatalf("reply %q from %v", got.b, got.from)
		}
	}
}

// TestStickyFallbacks drives Send's handling of a refused source with a
// fake kernel: a gone source is dropped for the rest of the Send, counted
// and reported, GSO staying on; a GSO failure with a good source turns GSO
// off and keeps the source; an error the source is not to blame for
// drops the datagrams and keeps the source.
func TestStickyFallbacks(t *testing.T) {
	for _, tc := range []struct {
		name string
		// refuse is the fake kernel's errno for a message with (src) or
		// without a source, segmented or not; 0 sends it.
		refuse      func(src, segmented bool) unix.Errno
		wantErr     error
		wantCleared uint64
		wantGSOOff  uint64
		wantArrive  bool
		wantSource  bool // the last messages sent still carry the source
	}{
		{"source gone", func(src, _ bool) unix.Errno {
			if src {
				return unix.ENETUNREACH
			}
			return 0
		}, transport.ErrSourceCleared, 1, 0, true, false},
		{"source gone, EINVAL", func(src, _ bool) unix.Errno {
			if src {
				return unix.EINVAL
			}
			return 0
		}, transport.ErrSourceCleared, 1, 0, true, false},
		{"gso broken", func(_, segmented bool) unix.Errno {
			if segmented {
				return unix.EINVAL
			}
			return 0
		}, nil, 0, 1, true, true},
		{"unreachable", func(bool, bool) unix.Errno { return unix.ENETUNREACH }, unix.ENETUNREACH, 0, 0, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _, portA := open(t, Options{})
			if gso, _ := a.Offloads(); !gso {
				testenv.SkipOrFail(t, "the kernel has no UDP GSO")
			}
			lastSource, calls := false, 0
			withSendmmsg(a, func(fd uintptr, hdrs []unix.Mmsghdr) (int, unix.Errno) {
				calls++
				for i := range hdrs {
					h := &hdrs[i].Hdr
					if e := tc.refuse(hasSource(h), h.Iovlen > 1); e != 0 {
						if i == 0 {
							return 0, e
						}
						hdrs = hdrs[:i]
						break
					}
				}
				lastSource = hasSource(&hdrs[len(hdrs)-1].Hdr)
				return sendmmsg(fd, hdrs)
			})
			b, fns, portB := open(t, Options{})
			ch := collect(t, b, fns)
			bufs := make([][]byte, 2*BatchSize)
			for i := range bufs {
				bufs[i] = payload(i, 600)
			}
			ep := transport.Endpoint{Remote: netip.AddrPortFrom(lo4, portB), Local: lo4}
			err := a.Send(bufs, ep)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Send: %v, want %v", err, tc.wantErr)
			}
			if tc.wantArrive {
				checkSame(t, expect(t, ch, len(bufs)), bufs, netip.AddrPortFrom(lo4, portA))
				if lastSource != tc.wantSource {
					t.Fatalf("the last messages carry a source: %v, want %v", lastSource, tc.wantSource)
				}
			} else if n := counter(a, "drop_udp_send_enetunreach"); n != uint64(len(bufs)) {
				t.Fatalf("drop_udp_send_enetunreach = %d, want %d", n, len(bufs))
			}
			if n := counter(a, "udp_sticky_source_cleared"); n != tc.wantCleared {
				t.Fatalf("udp_sticky_source_cleared = %d, want %d", n, tc.wantCleared)
			}
			if n := counter(a, "udp_gso_disabled"); n != tc.wantGSOOff {
				t.Fatalf("udp_gso_disabled = %d, want %d", n, tc.wantGSOOff)
			}
			if tc.wantGSOOff == 0 && tc.wantArrive && counter(a, "udp_tx_gso_messages") == 0 {
				t.Fatal("no segmented sends after the source fallback")
			}
			if calls > 8 {
				t.Fatalf("%d sendmmsg calls for two chunks", calls)
			}
		})
	}
}
