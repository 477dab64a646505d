package wg

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/transport/transporttest"
)

// receivedEndpoint is the endpoint at's transport reports for datagrams
// from from: from's address, arriving on at's.
func receivedEndpoint(from, at *testNode) transport.Endpoint {
	return transport.Endpoint{Remote: from.ep, Local: at.ep.Addr(), IfIndex: transporttest.IfIndex}
}

func fakeOf(n *testNode) *transporttest.Fake { return n.dev.transport.(*transporttest.Fake) }

func fakeCounter(f *transporttest.Fake, name string) uint64 {
	for _, c := range f.Stats() {
		if c.Name == name {
			return c.Value
		}
	}
	return 0
}

// TestStickySource: the gateway b has a second address, and the client a
// is configured with it. b's replies (handshake response and data) must
// leave from that address, so a never roams to b's first one; when the
// address goes away, b sends from its first address, forgets the second,
// and the tunnel goes on.
func TestStickySource(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	second := netip.MustParseAddr("198.18.0.22")
	fakeOf(b).AddAddr(second)
	toSecond := netip.AddrPortFrom(second, b.ep.Port())
	a.dev.lookupPeer(b.priv.PublicKey()).setConfiguredEndpoint(toSecond)

	var mu sync.Mutex
	var froms []netip.Addr // the local address of every send of b's
	fakeOf(b).OnSend(func(_ []byte, to transport.Endpoint) {
		mu.Lock()
		froms = append(froms, to.Local)
		mu.Unlock()
	})
	t.Cleanup(func() { fakeOf(b).OnSend(nil) })

	ping := ipv4Packet(a.addr, b.addr, []byte("to the second address"))
	a.tun.Inbound <- ping
	expectPacket(t, b, ping)
	pong := ipv4Packet(b.addr, a.addr, []byte("from the second address"))
	b.tun.Inbound <- pong
	expectPacket(t, a, pong)

	pb := b.dev.lookupPeer(a.priv.PublicKey())
	want := transport.Endpoint{Remote: a.ep, Local: second, IfIndex: transporttest.IfIndex}
	if ep, _ := pb.sendEndpoint(); ep != want {
		t.Fatalf("b's endpoint for a is %v, want %v", ep, want)
	}
	if ep, _ := a.dev.lookupPeer(b.priv.PublicKey()).Endpoint(); ep != toSecond {
		t.Fatalf("a's endpoint for b is %v, want %v: b answered from another address", ep, toSecond)
	}
	mu.Lock()
	for i, from := range froms {
		if from != second {
			t.Errorf("b's send %d asked for source %v, want %v", i, from, second)
		}
	}
	if len(froms) == 0 {
		t.Error("b sent nothing")
	}
	mu.Unlock()

	// The address goes: b's next send leaves from its first address and
	// the endpoint forgets the second.
	fakeOf(b).RemoveAddr(second)
	after := ipv4Packet(b.addr, a.addr, []byte("after the address went"))
	b.tun.Inbound <- after
	expectPacket(t, a, after)
	if ep, _ := pb.sendEndpoint(); ep != want.WithoutLocal() {
		t.Fatalf("b's endpoint for a is %v after the address went, want %v", ep, want.WithoutLocal())
	}
	if n := fakeCounter(fakeOf(b), "fake_sticky_source_cleared"); n != 1 {
		t.Fatalf("fake_sticky_source_cleared = %d, want 1", n)
	}
	if ep, _ := a.dev.lookupPeer(b.priv.PublicKey()).Endpoint(); ep != b.ep {
		t.Fatalf("a's endpoint for b is %v, want %v (roamed)", ep, b.ep)
	}
	// And a, roamed to b's first address, reaches b again.
	again := ipv4Packet(a.addr, b.addr, []byte("again"))
	a.tun.Inbound <- again
	expectPacket(t, b, again)
}

// TestConfiguredEndpointHasNoLocal: setting an endpoint by configuration
// (wg set … endpoint) drops a learned local address, so the route picks
// the source for it.
func TestConfiguredEndpointHasNoLocal(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	p := b.dev.lookupPeer(a.priv.PublicKey())
	p.setEndpoint(receivedEndpoint(a, b))
	configure(t, b, a)
	if ep, _ := p.sendEndpoint(); ep != transport.EndpointFrom(a.ep) {
		t.Fatalf("endpoint after configuration is %v, want %v with no local address", ep, a.ep)
	}
}
