package wg

import (
	"bufio"
	"go/ast"
	"go/parser"
	"go/token"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/transport/transporttest"
	"github.com/ptun-vpn/ptun/tun/tuntest"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wg/replay"
	"github.com/ptun-vpn/ptun/wg/wire"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// assertedBy names, for every counter the device reports, a test in this
// package that asserts it. TestEveryCounterIsAsserted checks that the list
// is complete and that each test's body names its counter, so a new
// counter cannot go untested.
var assertedBy = map[string]string{
	"drop_no_route":               "TestNoRouteIsCounted",
	"drop_no_endpoint":            "TestNoEndpointIsCounted",
	"drop_malformed":              "TestBadMessagesAreCounted",
	"drop_unknown_type":           "TestBadMessagesAreCounted",
	"drop_unknown_index":          "TestBadMessagesAreCounted",
	"drop_expired_session":        "TestBadTransportDataIsCounted",
	"drop_bad_mac":                "TestBadTransportDataIsCounted",
	"drop_replay":                 "TestBadTransportDataIsCounted",
	"drop_bad_inner_packet":       "TestBadTransportDataIsCounted",
	"drop_source_not_allowed":     "TestSourceNotAllowedIsDropped",
	"drop_staged_queue_full":      "TestStagedQueueIsBoundedAndCounted",
	"drop_handshake_give_up":      "TestHandshakeRetransmitAndGiveUp",
	"drop_handshake_queue_full":   "TestHandshakeQueueFullIsCounted",
	"drop_handshake_mac1":         "TestControlSendsDoNotBlockHandshakes",
	"drop_handshake_invalid":      "TestBadMessagesAreCounted",
	"drop_handshake_unknown_peer": "TestHandshakeRetransmitAndGiveUp",
	"drop_handshake_replay":       "TestHandshakeReplayAndFloodAreCounted",
	"drop_handshake_flood":        "TestHandshakeReplayAndFloodAreCounted",
	"drop_cookie_invalid":         "TestControlQueueFullIsCounted",
	"drop_tun_write":              "TestTUNWriteFailureIsCounted",
	"drop_control_send_full":      "TestControlQueueFullIsCounted",
	"drop_staged_total_full":      "TestStagedTotalIsBounded",
	"drop_peer_key_unusable":      "TestLowOrderPeerIsAcceptedAndNeverSentTo",
	"drop_handshake_internal":     "TestHandshakeInternalFailureIsCounted",
	"drop_handshake_stale":        "TestStaleHandshakeLeavesNothing",
	"handshakes_initiated":        "TestHandshakeRetransmitAndGiveUp",
	"handshakes_completed":        "TestResponderCompletesOnConfirmation",
	"cookie_replies_sent":         "TestUnderLoadCookieRoundTrip",
	"keepalives_sent":             "TestPassiveKeepalive",
	"keepalives_received":         "TestPassiveKeepalive",
	"tun_read_batches":            "TestResponderDoesNotCrossHandshakes",
	"tun_read_packets":            "TestResponderDoesNotCrossHandshakes",
	"transport_recv_batches":      "TestBadMessagesAreCounted",
	"transport_recv_packets":      "TestBadMessagesAreCounted",
	"rebind_restore_failures":     "TestSetRollsBackFailedSystemSteps",
	"drop_acl":                    "TestAccessRules",
}

// TestEveryCounterIsAsserted: every counter of the device's own (not the
// TUN's or transport's, which their packages test) has an entry in
// assertedBy, and the named test exists and mentions the counter.
func TestEveryCounterIsAsserted(t *testing.T) {
	bodies := testBodies(t)
	var d Device
	for _, c := range d.counters.snapshot() {
		test, ok := assertedBy[c.Name]
		if !ok {
			t.Errorf("counter %s is asserted by no test: add a test and list it in assertedBy", c.Name)
			continue
		}
		body, ok := bodies[test]
		if !ok {
			t.Errorf("counter %s: test %s does not exist", c.Name, test)
			continue
		}
		if !strings.Contains(body, strconv.Quote(c.Name)) {
			t.Errorf("counter %s: test %s does not mention it", c.Name, test)
		}
	}
}

// testBodies returns the source of every Test function in this
// directory's test files, by name.
func testBodies(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	fset := token.NewFileSet()
	for _, name := range files {
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			if fn, ok := decl.(*ast.FuncDecl); ok && strings.HasPrefix(fn.Name.Name, "Test") {
				out[fn.Name.Name] = string(src[fset.Position(fn.Pos()).Offset:fset.Position(fn.End()).Offset])
			}
		}
	}
	return out
}

// TestBadMessagesAreCounted: datagrams that are not WireGuard messages, or
// name no session, or fail to decrypt, are counted by reason.
func TestBadMessagesAreCounted(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	aPub := a.priv.PublicKey()
	unknownIndex := make([]byte, 32)
	unknownIndex[0] = byte(wire.TypeTransport)
	unknownIndex[4], unknownIndex[5] = 0xde, 0xad
	unknownType := make([]byte, 32)
	unknownType[0] = 9
	for _, msg := range [][]byte{
		{1, 0},       // too short for any message
		unknownType,  // no such type
		unknownIndex, // transport data for no session
		garbageWithMAC1(byte(wire.TypeInitiation), wire.InitiationSize, aPub), // passes mac1, fails to decrypt
	} {
		if err := a.fake.Inject(msg, b.ep); err != nil {
			t.Fatal(err)
		}
	}
	waitCounter(t, a.dev, "transport_recv_packets", func(v uint64) bool { return v == 4 })
	waitCounter(t, a.dev, "drop_handshake_invalid", func(v uint64) bool { return v == 1 })
	for _, name := range []string{"drop_malformed", "drop_unknown_type", "drop_unknown_index"} {
		if got := counter(a.dev, name); got != 1 {
			t.Errorf("%s = %d, want 1", name, got)
		}
	}
	if got := counter(a.dev, "transport_recv_batches"); got < 1 || got > 4 {
		t.Errorf("transport_recv_batches = %d, want 1..4", got)
	}
}

// TestBadTransportDataIsCounted: transport data on a real session that is
// past its limit, forged, replayed or not an IP packet is counted by
// reason and never reaches the TUN.
func TestBadTransportDataIsCounted(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	var mu sync.Mutex
	var captured []byte
	a.fake.OnSend(func(msg []byte, _ transport.Endpoint) {
		mu.Lock()
		defer mu.Unlock()
		if typ, _ := wire.MessageType(msg); typ == wire.TypeTransport && len(msg) > 32 {
			captured = append([]byte(nil), msg...)
		}
	})
	p := ipv4Packet(a.addr, b.addr, []byte("once only"))
	a.tun.Inbound <- p
	expectPacket(t, b, p)
	a.fake.OnSend(nil)
	mu.Lock()
	replayed := captured
	mu.Unlock()
	if replayed == nil {
		t.Fatal("no data packet seen")
	}

	pa, pb := a.dev.lookupPeer(b.priv.PublicKey()), b.dev.lookupPeer(a.priv.PublicKey())
	kpA, kpB := pa.keypairs.current.Load(), pb.keypairs.current.Load()
	expired := make([]byte, 48)
	wire.PutTransportHeader(expired, kpB.localIndex, replay.RejectAfterMessages)
	forged := make([]byte, 48)
	wire.PutTransportHeader(forged, kpB.localIndex, 1000)
	notIP := make([]byte, bufSize)
	copy(notIP[headroom:], "not an IP packet")
	var nonceBuf [12]byte
	sealed, ok := a.dev.seal(pa, kpA, notIP, 16, nonceBuf[:])
	if !ok {
		t.Fatal("seal failed")
	}
	for _, msg := range [][]byte{expired, forged, replayed, sealed} {
		if err := b.fake.Inject(msg, a.ep); err != nil {
			t.Fatal(err)
		}
	}
	waitCounter(t, b.dev, "drop_bad_inner_packet", func(v uint64) bool { return v == 1 })
	for _, name := range []string{"drop_expired_session", "drop_bad_mac", "drop_replay"} {
		if got := counter(b.dev, name); got != 1 {
			t.Errorf("%s = %d, want 1", name, got)
		}
	}
	// The tunnel still carries genuine packets.
	q := ipv4Packet(a.addr, b.addr, []byte("genuine"))
	a.tun.Inbound <- q
	expectPacket(t, b, q)
}

// TestHandshakeReplayAndFloodAreCounted: a replayed initiation, and one
// arriving too soon after the last, are refused and counted.
func TestHandshakeReplayAndFloodAreCounted(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	var mu sync.Mutex
	var initiation []byte
	b.fake.OnSend(func(msg []byte, _ transport.Endpoint) {
		mu.Lock()
		defer mu.Unlock()
		if typ, _ := wire.MessageType(msg); typ == wire.TypeInitiation && initiation == nil {
			initiation = append([]byte(nil), msg...)
		}
	})
	p := ipv4Packet(b.addr, a.addr, []byte("b initiates"))
	b.tun.Inbound <- p
	expectPacket(t, a, p)
	b.fake.OnSend(nil)
	mu.Lock()
	replayed := initiation
	mu.Unlock()
	if err := a.fake.Inject(replayed, b.ep); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a.dev, "drop_handshake_replay", func(v uint64) bool { return v == 1 })

	// A fresh initiation, as if the last one came a moment ago.
	pa, pb := a.dev.lookupPeer(b.priv.PublicKey()), b.dev.lookupPeer(a.priv.PublicKey())
	pa.handshake.Lock()
	pa.handshake.lastTimestamp = noise.Timestamp{}
	pa.handshake.lastConsumed = time.Now().Add(time.Hour)
	pa.handshake.Unlock()
	b.dev.initiateHandshake(pb, true)
	waitCounter(t, a.dev, "drop_handshake_flood", func(v uint64) bool { return v == 1 })
}

// TestHandshakeQueueFullIsCounted: handshake messages beyond the queue,
// while the handshake routine is busy, are dropped and counted.
func TestHandshakeQueueFullIsCounted(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	pa := a.dev.lookupPeer(b.priv.PublicKey())
	// The handshake routine will wait for this lock inside b's initiation.
	pa.handshake.Lock()
	locked := true
	defer func() {
		if locked {
			pa.handshake.Unlock()
		}
	}()
	init, _ := craftInitiation(t, b.priv, a.priv.PublicKey())
	if err := a.fake.Inject(init, b.ep); err != nil {
		t.Fatal(err)
	}
	// Counted after the initiation was queued, which came first.
	if err := a.fake.Inject([]byte{1, 0}, b.ep); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a.dev, "drop_malformed", atLeast(1))
	waitFor(t, func() bool { return len(a.dev.handshakes) == 0 }) // taken: the routine is stuck
	junk := make([]byte, wire.InitiationSize)
	junk[0] = byte(wire.TypeInitiation)
	for range handshakeQueueLen + 1 {
		a.dev.queueHandshake(junk, transport.EndpointFrom(b.ep))
	}
	if got := counter(a.dev, "drop_handshake_queue_full"); got != 1 {
		t.Fatalf("drop_handshake_queue_full = %d, want 1", got)
	}
	pa.handshake.Unlock()
	locked = false
	waitCounter(t, a.dev, "drop_handshake_mac1", func(v uint64) bool { return v == handshakeQueueLen })
}

// failingWrite is a TUN whose writes fail, as a down link's do.
type failingWrite struct{ *tuntest.ChannelTUN }

func (failingWrite) Write(bufs [][]byte, offset int) (int, error) { return 0, syscall.EIO }

// TestTUNWriteFailureIsCounted: packets the kernel refuses are counted.
func TestTUNWriteFailureIsCounted(t *testing.T) {
	ch := tuntest.NewChannelTUN(1420)
	ta, tb := transporttest.NewPair()
	a, b := newNodePairTUN(t, ta, tb, Options{Logf: t.Logf}, failingWrite{ch}, ch)
	b.tun.Inbound <- ipv4Packet(b.addr, a.addr, []byte("refused"))
	waitCounter(t, a.dev, "drop_tun_write", func(v uint64) bool { return v == 1 })
}

// TestNoEndpointIsCounted: what must go to a peer with no endpoint yet is
// counted.
func TestNoEndpointIsCounted(t *testing.T) {
	a, _ := newTestPair(t, Timers{})
	far := mustKey(t).PublicKey()
	if err := a.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: far,
		AddAllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.7.0/24")}}}}); err != nil {
		t.Fatal(err)
	}
	a.tun.Inbound <- ipv4Packet(a.addr, netip.MustParseAddr("100.64.7.1"), []byte("nowhere to go"))
	waitCounter(t, a.dev, "drop_no_endpoint", func(v uint64) bool { return v == 1 }) // the initiation
}

// TestOwnKeyPeerIsIgnored (item 10b): a peer with the device's own public
// key is accepted and ignored, as by the kernel, even in the Set that
// sets the key.
func TestOwnKeyPeerIsIgnored(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	own := a.priv.PublicKey()
	if err := a.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: own,
		AddAllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.8.0/24")}}}}); err != nil {
		t.Fatalf("Set with the device's own key as a peer: %v", err)
	}
	k := mustKey(t)
	if err := a.dev.Set(&wgcfg.DeviceConfig{PrivateKey: &k, Peers: []wgcfg.PeerConfig{{PublicKey: k.PublicKey()}}}); err != nil {
		t.Fatalf("Set with the new key's own peer: %v", err)
	}
	st, _ := a.dev.Get()
	if len(st.Peers) != 1 || st.Peers[0].PublicKey != b.priv.PublicKey() {
		t.Fatalf("peers after the ignored ones: %+v", st.Peers)
	}
}

// TestLowOrderPeerIsAcceptedAndNeverSentTo (item 10c): a low-order public
// key (all zeros, or another small-order point) is valid configuration; the
// peer never gets a handshake or any datagram, and what is routed to it is
// dropped and counted.
func TestLowOrderPeerIsAcceptedAndNeverSentTo(t *testing.T) {
	a, _ := newTestPair(t, Timers{})
	ep := netip.MustParseAddrPort("198.18.0.2:9")
	var mu sync.Mutex
	sentThere := 0
	a.fake.OnSend(func(_ []byte, to transport.Endpoint) {
		if to.Remote == ep {
			mu.Lock()
			sentThere++
			mu.Unlock()
		}
	})
	one := uint16(1)
	for i, hex := range []string{
		"0000000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
	} {
		pk, err := noise.ParsePublicKeyHex(hex)
		if err != nil {
			t.Fatal(err)
		}
		pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 20, byte(i)}), 32)
		if err := a.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: pk, Endpoint: &ep,
			PersistentKeepalive: &one, AddAllowedIPs: []netip.Prefix{pfx}}}}); err != nil {
			t.Fatalf("low-order key %s refused: %v", hex[:8], err)
		}
		a.tun.Inbound <- ipv4Packet(netip.MustParseAddr("100.64.0.1"), pfx.Addr(), []byte("to nobody"))
	}
	waitCounter(t, a.dev, "drop_peer_key_unusable", func(v uint64) bool { return v == 2 })
	if st, _ := a.dev.Get(); len(st.Peers) != 3 {
		t.Fatalf("%d peers listed, want 3", len(st.Peers))
	}
	a.dev.syncControl()
	mu.Lock()
	defer mu.Unlock()
	if sentThere != 0 || counter(a.dev, "handshakes_initiated") != 0 {
		t.Fatalf("%d datagrams and %d initiations sent to low-order peers", sentThere, counter(a.dev, "handshakes_initiated"))
	}
}

// TestZeroKeyPeerOverUAPI (item 10c): an all-zero public_key is, for the
// UAPI parser, an ordinary peer (not a removal), and the device takes it.
func TestZeroKeyPeerOverUAPI(t *testing.T) {
	a, _ := newTestPair(t, Timers{})
	req := "public_key=" + strings.Repeat("0", 64) + "\nendpoint=198.18.0.2:9\nallowed_ip=100.64.21.0/24\n\n"
	cfg, err := uapi.ParseSet(bufio.NewReader(strings.NewReader(req)))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Peers) != 1 || cfg.Peers[0].Remove || !cfg.Peers[0].PublicKey.IsZero() {
		t.Fatalf("parsed %+v", cfg.Peers)
	}
	if err := a.dev.Set(cfg); err != nil {
		t.Fatalf("Set with an all-zero peer key: %v", err)
	}
	st, _ := a.dev.Get()
	found := false
	for _, p := range st.Peers {
		found = found || p.PublicKey.IsZero() && len(p.AllowedIPs) == 1
	}
	if !found {
		t.Fatalf("zero-key peer not listed: %+v", st.Peers)
	}
}
