package wg

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"testing"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/tun/tuntest"
)

// stickyNSPrefix is unique to this test process, so parallel runs never
// touch each other's namespaces.
var stickyNSPrefix = func() string {
	var b [4]byte
	rand.Read(b[:])
	return "ptun-wgtest-" + hex.EncodeToString(b[:]) + "-"
}()

func newTestNS(t *testing.T, tag string) *netns.NS {
	t.Helper()
	n, err := netns.New(stickyNSPrefix + tag)
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

// nodeIn makes a device in ns on a real UDP transport (its sockets live in
// ns) and a fake TUN; ep is where the other side is to reach it.
func nodeIn(t *testing.T, ns *netns.NS, tunAddr netip.Addr, epAddr netip.Addr) *testNode {
	t.Helper()
	n := &testNode{tun: tuntest.NewChannelTUN(1420), priv: mustKey(t), addr: tunAddr,
		addr6: netip.AddrFrom16(tunAddr.As16())}
	if err := ns.Do(func() (err error) {
		n.dev, err = New(n.tun, udp.New(udp.Options{Logf: t.Logf}), Options{Logf: t.Logf})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.dev.Close() })
	n.ep = netip.AddrPortFrom(epAddr, n.dev.listenPort)
	return n
}

// TestStickySourceOverUDP: a gateway device whose interface has two
// addresses per family, reached by a client device at the address its
// routes would not answer from. The handshake response and the data the
// gateway sends back must come from that address: the client, which roams
// to wherever authenticated packets come from, must keep it as the
// gateway's endpoint, and the gateway must keep it as the local address of
// the client's endpoint.
func TestStickySourceOverUDP(t *testing.T) {
	testenv.RequireRoot(t)
	for _, fam := range []struct {
		name      string
		gw        [2]netip.Addr
		cl        netip.Addr
		bits      int
		tunGW     netip.Addr
		tunClient netip.Addr
	}{
		{"ipv4", [2]netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")},
			netip.MustParseAddr("198.18.0.3"), 24, netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")},
		{"ipv6", [2]netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")},
			netip.MustParseAddr("2001:db8::3"), 64, netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			gwNS, clNS := newTestNS(t, "gw"+fam.name), newTestNS(t, "cl"+fam.name)
			if err := netns.Veth(gwNS, "gw0", clNS, "cl0", 1500); err != nil {
				t.Fatal(err)
			}
			for _, a := range fam.gw {
				if err := gwNS.AddAddr("gw0", netip.PrefixFrom(a, fam.bits)); err != nil {
					t.Fatal(err)
				}
			}
			if err := clNS.AddAddr("cl0", netip.PrefixFrom(fam.cl, fam.bits)); err != nil {
				t.Fatal(err)
			}
			var routeSrc netip.Addr
			if err := gwNS.Do(func() error {
				c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.cl, 9)))
				if err != nil {
					return err
				}
				defer c.Close()
				routeSrc = c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			target := fam.gw[0]
			if routeSrc == target {
				target = fam.gw[1]
			}
			t.Logf("the gateway's route picks %v; the client writes to %v", routeSrc, target)

			gw := nodeIn(t, gwNS, fam.tunGW, target)
			cl := nodeIn(t, clNS, fam.tunClient, fam.cl)
			configure(t, cl, gw)
			configure(t, gw, cl)

			ping := ipv4Packet(cl.addr, gw.addr, []byte("to the second address"))
			cl.tun.Inbound <- ping
			expectPacket(t, gw, ping)
			pong := ipv4Packet(gw.addr, cl.addr, []byte("from the second address"))
			gw.tun.Inbound <- pong
			expectPacket(t, cl, pong)

			if ep, _ := cl.dev.lookupPeer(gw.priv.PublicKey()).Endpoint(); ep != gw.ep {
				t.Fatalf("the client's endpoint for the gateway is %v, want %v: the gateway answered from elsewhere", ep, gw.ep)
			}
			if ep, _ := gw.dev.lookupPeer(cl.priv.PublicKey()).sendEndpoint(); ep.Local != target || ep.Remote != cl.ep {
				t.Fatalf("the gateway's endpoint for the client is %v, want %v via %v", ep, cl.ep, target)
			}
		})
	}
}
