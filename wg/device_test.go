package wg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/transport/transporttest"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/tun/tuntest"
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// testNode is one side of a test tunnel: a device on fakes.
type testNode struct {
	dev   *Device
	tun   *tuntest.ChannelTUN
	priv  noise.PrivateKey
	addr  netip.Addr // tunnel address (IPv4)
	addr6 netip.Addr
	ep    netip.AddrPort // where the other side reaches this node
	fake  *transporttest.Fake
}

func mustKey(t testing.TB) noise.PrivateKey {
	t.Helper()
	k, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newTestPair builds two devices joined by an in-memory transport, each with
// the other as its peer (allowed IPs: the other's /32 and /128).
func newTestPair(t testing.TB, timers Timers) (a, b *testNode) {
	t.Helper()
	ta, tb := transporttest.NewPair()
	return newNodePair(t, ta, tb, Options{Timers: timers, Logf: t.Logf})
}

// newNodePair is newTestPair on the given transports (fakes of one pair, or
// wrappers of them).
func newNodePair(t testing.TB, ta, tb transportFake, opts Options) (a, b *testNode) {
	t.Helper()
	ch := tuntest.NewChannelTUN(1420)
	return newNodePairTUN(t, ta, tb, opts, ch, ch)
}

// newNodePairTUN is newNodePair with a's device on tunA, a wrapper of chA.
func newNodePairTUN(t testing.TB, ta, tb transportFake, opts Options, tunA tun.Device, chA *tuntest.ChannelTUN) (a, b *testNode) {
	t.Helper()
	a = &testNode{tun: chA, priv: mustKey(t),
		addr: netip.MustParseAddr("100.64.0.1"), addr6: netip.MustParseAddr("2001:db8:100::1")}
	b = &testNode{tun: tuntest.NewChannelTUN(1420), priv: mustKey(t),
		addr: netip.MustParseAddr("100.64.0.2"), addr6: netip.MustParseAddr("2001:db8:100::2")}
	a.fake, _ = ta.(*transporttest.Fake)
	b.fake, _ = tb.(*transporttest.Fake)
	var err error
	if a.dev, err = New(tunA, ta, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.dev.Close() })
	if b.dev, err = New(b.tun, tb, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.dev.Close() })
	a.ep = ta.LocalAddr(a.dev.listenPort)
	b.ep = tb.LocalAddr(b.dev.listenPort)
	configure(t, a, b)
	configure(t, b, a)
	return a, b
}

// transportFake is a transporttest.Fake or a wrapper of one.
type transportFake interface {
	transport.Transport
	LocalAddr(port uint16) netip.AddrPort
}

// configure makes peer a peer of n, reachable at peer.ep.
func configure(t testing.TB, n, peer *testNode) {
	t.Helper()
	priv := n.priv
	ep := peer.ep
	if err := n.dev.Set(&wgcfg.DeviceConfig{
		PrivateKey: &priv,
		Peers: []wgcfg.PeerConfig{{
			PublicKey: peer.priv.PublicKey(),
			Endpoint:  &ep,
			AddAllowedIPs: []netip.Prefix{
				netip.PrefixFrom(peer.addr, 32), netip.PrefixFrom(peer.addr6, 128),
			},
		}},
	}); err != nil {
		t.Fatal(err)
	}
}

// ipv4Packet is a minimal UDP/IPv4 packet from src to dst with payload.
func ipv4Packet(src, dst netip.Addr, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 17
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], 4000)
	binary.BigEndian.PutUint16(p[22:], 5000)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

// ipv6Packet is a minimal UDP/IPv6 packet.
func ipv6Packet(src, dst netip.Addr, payload []byte) []byte {
	p := make([]byte, 48+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(8+len(payload)))
	p[6] = 17
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	binary.BigEndian.PutUint16(p[44:], uint16(8+len(payload)))
	copy(p[48:], payload)
	return p
}

// expectPacket waits (bounded) for want on n's TUN output.
func expectPacket(t testing.TB, n *testNode, want []byte) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case got := <-n.tun.Outbound:
			if bytes.Equal(got, want) {
				return
			}
			t.Logf("skipping unexpected packet of %d bytes", len(got))
		case <-deadline:
			t.Fatalf("packet of %d bytes did not arrive within 5s; stats: %v", len(want), nonZero(n.dev))
		}
	}
}

// expectNoPacket fails if n's TUN has output waiting. Call it once the
// drop that should have stopped the packet was counted: the TUN write would
// have come before.
func expectNoPacket(t *testing.T, n *testNode) {
	t.Helper()
	select {
	case got := <-n.tun.Outbound:
		t.Fatalf("unexpected packet of %d bytes arrived", len(got))
	default:
	}
}

func nonZero(d *Device) string {
	var s []string
	for _, c := range d.Stats() {
		if c.Value != 0 {
			s = append(s, c.Name+"="+strconv.FormatUint(c.Value, 10))
		}
	}
	return strings.Join(s, " ")
}

func counter(d *Device, name string) uint64 {
	for _, c := range d.Stats() {
		if c.Name == name {
			return c.Value
		}
	}
	return 0
}

func TestTunnelBothWaysIPv4AndIPv6(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	for i := 0; i < 3; i++ {
		p := ipv4Packet(a.addr, b.addr, []byte("hello from a"))
		a.tun.Inbound <- p
		expectPacket(t, b, p)
		q := ipv4Packet(b.addr, a.addr, []byte("and back from b, a little longer"))
		b.tun.Inbound <- q
		expectPacket(t, a, q)
	}
	p6 := ipv6Packet(a.addr6, b.addr6, bytes.Repeat([]byte{7}, 1000))
	a.tun.Inbound <- p6
	expectPacket(t, b, p6)
	q6 := ipv6Packet(b.addr6, a.addr6, bytes.Repeat([]byte{9}, 1300))
	b.tun.Inbound <- q6
	expectPacket(t, a, q6)

	if got := counter(a.dev, "handshakes_completed") + counter(b.dev, "handshakes_completed"); got != 2 {
		t.Errorf("handshakes completed on both sides = %d, want 2 (one handshake)", got)
	}
	st, err := b.dev.Get()
	if err != nil || len(st.Peers) != 1 || st.Peers[0].LastHandshake.IsZero() || st.Peers[0].RxBytes == 0 {
		t.Fatalf("b's state after traffic: %+v, %v", st, err)
	}
}

func TestPacketsArriveInOrder(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	// Complete the handshake first: while there is no session a peer holds
	// only maxStaged packets (more are dropped and counted).
	first := ipv4Packet(a.addr, b.addr, []byte("handshake"))
	a.tun.Inbound <- first
	expectPacket(t, b, first)
	const n = 2000
	go func() {
		for i := 0; i < n; i++ {
			var pl [8]byte
			binary.BigEndian.PutUint64(pl[:], uint64(i))
			a.tun.Inbound <- ipv4Packet(a.addr, b.addr, pl[:])
		}
	}()
	deadline := time.After(20 * time.Second)
	for want := 0; want < n; want++ {
		select {
		case got := <-b.tun.Outbound:
			if seq := binary.BigEndian.Uint64(got[28:]); seq != uint64(want) {
				t.Fatalf("packet %d arrived in place of %d", seq, want)
			}
		case <-deadline:
			t.Fatalf("only %d of %d packets arrived; a: %s; b: %s", want, n, nonZero(a.dev), nonZero(b.dev))
		}
	}
}

func TestStagedQueueIsBoundedAndCounted(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	// b has no endpoint for a and a cannot reach b: block the handshake by
	// removing a's key from b, then flood a.
	if err := b.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: a.priv.PublicKey(), Remove: true}}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < maxStaged+50; i++ {
		a.tun.Inbound <- ipv4Packet(a.addr, b.addr, []byte{byte(i)})
	}
	waitFor(t, func() bool { return counter(a.dev, "drop_staged_queue_full") == 50 })
}

func TestNoRouteIsCounted(t *testing.T) {
	a, _ := newTestPair(t, Timers{})
	a.tun.Inbound <- ipv4Packet(a.addr, netip.MustParseAddr("100.64.9.9"), []byte("x"))
	waitFor(t, func() bool { return counter(a.dev, "drop_no_route") == 1 })
}

func TestSourceNotAllowedIsDropped(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	// a may send to b, but b only accepts a's /32 as source.
	p := ipv4Packet(netip.MustParseAddr("100.64.0.9"), b.addr, []byte("spoofed"))
	a.tun.Inbound <- p
	waitFor(t, func() bool { return counter(b.dev, "drop_source_not_allowed") == 1 })
	expectNoPacket(t, b)
	// and the tunnel still carries a's own packets
	q := ipv4Packet(a.addr, b.addr, []byte("genuine"))
	a.tun.Inbound <- q
	expectPacket(t, b, q)
}

func TestRekeyKeepsTrafficFlowing(t *testing.T) {
	timers := DefaultTimers()
	timers.RekeyAfterTime = 300 * time.Millisecond
	timers.RejectAfterTime = 2 * time.Second
	timers.RekeyTimeout = 100 * time.Millisecond // initiations are rate-limited to one per RekeyTimeout
	a, b := newTestPair(t, timers)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; counter(a.dev, "handshakes_completed")+counter(b.dev, "handshakes_completed") < 8; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 4 handshakes in 10s: a: %s; b: %s", nonZero(a.dev), nonZero(b.dev))
		}
		p := ipv4Packet(a.addr, b.addr, []byte{byte(i)})
		a.tun.Inbound <- p
		expectPacket(t, b, p)
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSetIsAllOrNothing(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	before, _ := a.dev.Get()
	port := uint16(0)
	bad := &wgcfg.DeviceConfig{
		ListenPort: &port,
		Peers: []wgcfg.PeerConfig{
			{PublicKey: mustKey(t).PublicKey(), AddAllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.5.0/24")}},
			{PublicKey: mustKey(t).PublicKey(), AddAllowedIPs: []netip.Prefix{{}}}, // invalid prefix
		},
	}
	if err := a.dev.Set(bad); err == nil {
		t.Fatal("Set with an invalid allowed IP succeeded")
	}
	after, _ := a.dev.Get()
	if len(after.Peers) != len(before.Peers) || after.ListenPort != before.ListenPort {
		t.Fatalf("failed Set changed the device: before %+v, after %+v", before, after)
	}
	// The tunnel still works, on the same port.
	p := ipv4Packet(b.addr, a.addr, []byte("still here"))
	b.tun.Inbound <- p
	expectPacket(t, a, p)
}

// faultyTransport is a fake transport whose next Opens or SetMarks fail
// on demand, as a port in use or a missing capability would.
type faultyTransport struct {
	*transporttest.Fake
	failOpens, failMarks atomic.Int32 // how many coming calls fail
}

func (f *faultyTransport) Open(port uint16) ([]transport.ReceiveFunc, uint16, error) {
	if f.failOpens.Add(-1) >= 0 {
		return nil, 0, syscall.EADDRINUSE
	}
	f.failOpens.Store(0)
	return f.Fake.Open(port)
}

func (f *faultyTransport) SetMark(mark uint32) error {
	if f.failMarks.Add(-1) >= 0 {
		return syscall.EPERM
	}
	f.failMarks.Store(0)
	return f.Fake.SetMark(mark)
}

// newFaultyPair is newTestPair with a's transport a faultyTransport.
func newFaultyPair(t *testing.T) (a, b *testNode, fa *faultyTransport) {
	t.Helper()
	ta, tb := transporttest.NewPair()
	fa = &faultyTransport{Fake: ta}
	a, b = newNodePair(t, fa, tb, Options{Logf: t.Logf})
	a.fake = ta
	return a, b, fa
}

// TestSetRollsBackFailedSystemSteps: when a system step of Set fails after
// another succeeded, the device is as it was; when it cannot be put back,
// it reports the truth (no socket) instead of the old port.
func TestSetRollsBackFailedSystemSteps(t *testing.T) {
	newPort, mark := uint16(51999), uint32(7)
	roundTrip := func(t *testing.T, a, b *testNode, what string) {
		t.Helper()
		p := ipv4Packet(b.addr, a.addr, []byte(what))
		b.tun.Inbound <- p
		expectPacket(t, a, p)
	}

	t.Run("new port bound, mark refused", func(t *testing.T) {
		a, b, fa := newFaultyPair(t)
		oldPort := a.dev.listenPort
		fa.failMarks.Store(1)
		err := a.dev.Set(&wgcfg.DeviceConfig{ListenPort: &newPort, FwMark: &mark})
		if err == nil || wgcfg.Errno(err, 0) != syscall.EPERM {
			t.Fatalf("Set = %v, want the SetMark error (EPERM)", err)
		}
		st, _ := a.dev.Get()
		if st.ListenPort != oldPort || st.FwMark != 0 {
			t.Fatalf("after the failed Set: port %d mark %d, want the old %d and 0", st.ListenPort, st.FwMark, oldPort)
		}
		if got := fa.LocalAddr(0).Port(); got != oldPort || fa.Mark() != 0 {
			t.Fatalf("transport open on %d with mark %d, want %d and 0", got, fa.Mark(), oldPort)
		}
		roundTrip(t, a, b, "old port works")
	})

	t.Run("mark refused on the bound sockets", func(t *testing.T) {
		a, b, fa := newFaultyPair(t)
		fa.failMarks.Store(1)
		if err := a.dev.Set(&wgcfg.DeviceConfig{FwMark: &mark}); err == nil {
			t.Fatal("Set with a failing SetMark succeeded")
		}
		if st, _ := a.dev.Get(); st.FwMark != 0 {
			t.Fatalf("failed Set left fwmark %d", st.FwMark)
		}
		if err := a.dev.Set(&wgcfg.DeviceConfig{FwMark: &mark}); err != nil {
			t.Fatal(err)
		}
		if st, _ := a.dev.Get(); st.FwMark != mark || fa.Mark() != mark {
			t.Fatalf("fwmark %d (transport %d), want %d", st.FwMark, fa.Mark(), mark)
		}
		roundTrip(t, a, b, "marked")
	})

	t.Run("new port and restore both refused", func(t *testing.T) {
		a, b, fa := newFaultyPair(t)
		oldPort := a.dev.listenPort
		fa.failOpens.Store(2)
		err := a.dev.Set(&wgcfg.DeviceConfig{ListenPort: &newPort})
		if err == nil || !strings.Contains(err.Error(), "no socket") {
			t.Fatalf("Set = %v, want an error saying the device has no socket", err)
		}
		st, _ := a.dev.Get()
		if st.ListenPort != 0 {
			t.Fatalf("device without sockets reports listen port %d", st.ListenPort)
		}
		if got := counter(a.dev, "rebind_restore_failures"); got != 1 {
			t.Fatalf("rebind_restore_failures = %d, want 1", got)
		}
		// Setting a port again binds it.
		if err := a.dev.Set(&wgcfg.DeviceConfig{ListenPort: &oldPort}); err != nil {
			t.Fatal(err)
		}
		if st, _ := a.dev.Get(); st.ListenPort != oldPort {
			t.Fatalf("listen port %d after setting %d", st.ListenPort, oldPort)
		}
		roundTrip(t, a, b, "bound again")
	})
}

func TestRemovePeerStopsTraffic(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	p := ipv4Packet(a.addr, b.addr, []byte("one"))
	a.tun.Inbound <- p
	expectPacket(t, b, p)
	if err := b.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: a.priv.PublicKey(), Remove: true}}}); err != nil {
		t.Fatal(err)
	}
	// a still has its session; b forgot it with the peer.
	a.tun.Inbound <- ipv4Packet(a.addr, b.addr, []byte("two"))
	waitFor(t, func() bool { return counter(b.dev, "drop_unknown_index") == 1 })
	expectNoPacket(t, b)
	if st, _ := b.dev.Get(); len(st.Peers) != 0 {
		t.Fatalf("peer still listed after removal: %+v", st.Peers)
	}
}

func TestPrivateKeyChangeNeedsNewHandshake(t *testing.T) {
	timers := DefaultTimers()
	// The second initiation may fall in the same 16 ms timestamp granule as
	// the first, which b rightly refuses as a replay; a retries after
	// RekeyTimeout.
	timers.RekeyTimeout = 200 * time.Millisecond
	a, b := newTestPair(t, timers)
	p := ipv4Packet(a.addr, b.addr, []byte("before"))
	a.tun.Inbound <- p
	expectPacket(t, b, p)
	// b takes a new key; a learns it.
	b.priv = mustKey(t)
	nb := b.priv
	if err := b.dev.Set(&wgcfg.DeviceConfig{PrivateKey: &nb}); err != nil {
		t.Fatal(err)
	}
	ep := b.ep
	if err := a.dev.Set(&wgcfg.DeviceConfig{ReplacePeers: true, Peers: []wgcfg.PeerConfig{{
		PublicKey: b.priv.PublicKey(), Endpoint: &ep,
		AddAllowedIPs: []netip.Prefix{netip.PrefixFrom(b.addr, 32)},
	}}}); err != nil {
		t.Fatal(err)
	}
	q := ipv4Packet(a.addr, b.addr, []byte("after"))
	a.tun.Inbound <- q
	expectPacket(t, b, q)
	if got := counter(a.dev, "handshakes_completed"); got < 2 {
		t.Fatalf("a completed %d handshakes, want a second one after the key change", got)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := goroutines()
	a, b := newTestPair(t, Timers{})
	p := ipv4Packet(a.addr, b.addr, []byte("run every routine once"))
	a.tun.Inbound <- p
	expectPacket(t, b, p)
	for _, n := range []*testNode{a, b} {
		if err := n.dev.Close(); err != nil {
			t.Logf("close: %v", err)
		}
	}
	checkNoLeak(t, before)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDropNames: every drop reason has a unique, well-formed counter name
// (an unnamed one would be skipped by the UAPI stats answer).
func TestDropNames(t *testing.T) {
	seen := map[string]bool{}
	for r, name := range dropNames {
		if !strings.HasPrefix(name, "drop_") || strings.ContainsAny(name, " =\n") || seen[name] {
			t.Errorf("drop reason %d has name %q", r, name)
		}
		seen[name] = true
	}
}

// TestRefreshMTUPadsTheNextPacket: once told the MTU changed (the front
// watches the interface), the very next packet is padded to the new MTU,
// not to the old one until a periodic refresh.
func TestRefreshMTUPadsTheNextPacket(t *testing.T) {
	a, b := newTestPair(t, DefaultTimers())
	sizes := make(chan int, 16)
	a.fake.OnSend(func(p []byte, _ transport.Endpoint) {
		if len(p) > 0 && p[0] == 4 { // transport data
			sizes <- len(p)
		}
	})
	send := func() int {
		t.Helper()
		pkt := ipv4Packet(a.addr, b.addr, make([]byte, 1405-28))
		a.tun.Inbound <- pkt
		expectPacket(t, b, pkt)
		select {
		case n := <-sizes:
			return n
		case <-time.After(5 * time.Second):
			t.Fatal("no transport data sent")
			return 0
		}
	}
	// 1405 bytes pad to 1408 under MTU 1420: 32 bytes of header and tag more.
	if got := send(); got != 1408+32 {
		t.Fatalf("under MTU 1420: %d bytes on the wire, want %d", got, 1408+32)
	}
	a.tun.SetMTU(1406)
	a.dev.RefreshMTU()
	if got := send(); got != 1406+32 {
		t.Fatalf("right after the MTU became 1406: %d bytes on the wire, want %d", got, 1406+32)
	}
}

// tcpPacket is a minimal TCP/IPv4 packet from src to dst port dport.
func tcpPacket(src, dst netip.Addr, dport uint16) []byte {
	p := ipv4Packet(src, dst, make([]byte, 12)) // 20 bytes past the IP header
	p[9] = 6
	binary.BigEndian.PutUint16(p[22:], dport)
	return p
}

// TestAccessRules: a peer's access rules are enforced where its packets
// leave the tunnel, after decryption and the source check: what they
// allow arrives, the rest is dropped and counted as drop_acl; Get reports
// them; clearing them lets everything through again.
func TestAccessRules(t *testing.T) {
	a, b := newTestPair(t, DefaultTimers())
	rule := acl.Rule{Dst: netip.PrefixFrom(b.addr, 32), Proto: acl.ProtoTCP, PortLo: 22, PortHi: 22}
	set := func(pc wgcfg.PeerConfig) {
		t.Helper()
		pc.PublicKey, pc.UpdateOnly = a.priv.PublicKey(), true
		if err := b.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{pc}}); err != nil {
			t.Fatal(err)
		}
	}
	set(wgcfg.PeerConfig{Access: &wgcfg.AccessRules{Rules: []acl.Rule{rule}}})
	ssh := tcpPacket(a.addr, b.addr, 22)
	a.tun.Inbound <- ssh
	expectPacket(t, b, ssh)
	a.tun.Inbound <- tcpPacket(a.addr, b.addr, 80)
	waitCounter(t, b.dev, "drop_acl", atLeast(1))
	expectNoPacket(t, b)
	st, err := b.dev.Get()
	if err != nil {
		t.Fatal(err)
	}
	if acc := st.Peers[0].Access; acc == nil || len(acc.Rules) != 1 || acc.Rules[0] != rule {
		t.Fatalf("Get reports access %+v, want [%v]", acc, rule)
	}
	// A rule that cannot compile is refused and changes nothing.
	bad := acl.Rule{Dst: rule.Dst, Proto: acl.ProtoICMP, PortLo: 1, PortHi: 2}
	pc := wgcfg.PeerConfig{PublicKey: a.priv.PublicKey(), UpdateOnly: true, Access: &wgcfg.AccessRules{Rules: []acl.Rule{bad}}}
	if err := b.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{pc}}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("a bad rule: %v, want EINVAL", err)
	}
	set(wgcfg.PeerConfig{ClearAccess: true})
	web := tcpPacket(a.addr, b.addr, 80)
	a.tun.Inbound <- web
	expectPacket(t, b, web)
	if st, _ := b.dev.Get(); st.Peers[0].Access != nil {
		t.Fatalf("access after ClearAccess: %+v", st.Peers[0].Access)
	}
}
