package wg

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/transport/transporttest"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wg/wire"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// hasSessions reports whether p holds any session.
func (p *Peer) hasSessions() bool {
	kps := &p.keypairs
	kps.Lock()
	defer kps.Unlock()
	return kps.previous != nil || kps.current.Load() != nil || kps.next != nil
}

// TestResponderCompletesOnConfirmation (L1, item 10a): a responder whose
// session the initiator never used has completed no handshake (no latest
// handshake, handshakes_completed 0), and it counts the initiation it
// received in its received bytes.
func TestResponderCompletesOnConfirmation(t *testing.T) {
	timers := DefaultTimers()
	// a's real initiation may come within handshakeFloodGap of the crafted
	// one, and is then refused; a retries soon.
	timers.RekeyTimeout = 100 * time.Millisecond
	a, b := newTestPair(t, timers)
	// An initiation in a's name that a's device never sent: b answers it,
	// but nobody will confirm the session.
	init, _ := craftInitiation(t, a.priv, b.priv.PublicKey())
	if err := b.fake.Inject(init, a.ep); err != nil {
		t.Fatal(err)
	}
	// a receives b's response to a handshake it never made.
	waitCounter(t, a.dev, "drop_unknown_index", atLeast(1))
	if got := counter(b.dev, "handshakes_completed"); got != 0 {
		t.Fatalf("unconfirmed responder counts %d completed handshakes", got)
	}
	st, _ := b.dev.Get()
	if len(st.Peers) != 1 || !st.Peers[0].LastHandshake.IsZero() {
		t.Fatalf("unconfirmed responder reports a latest handshake: %+v", st.Peers)
	}
	if got, want := st.Peers[0].RxBytes, uint64(wire.InitiationSize); got != want {
		t.Fatalf("responder's rx bytes = %d, want the initiation's %d", got, want)
	}
	if got, want := st.Peers[0].TxBytes, uint64(wire.ResponseSize); got != want {
		t.Fatalf("responder's tx bytes = %d, want the response's %d", got, want)
	}

	// A real handshake, confirmed by a's first packet, completes on both
	// sides.
	p := ipv4Packet(a.addr, b.addr, []byte("confirm"))
	a.tun.Inbound <- p
	expectPacket(t, b, p)
	if got := counter(b.dev, "handshakes_completed"); got != 1 {
		t.Fatalf("confirmed responder counts %d completed handshakes, want 1", got)
	}
	if st, _ := b.dev.Get(); st.Peers[0].LastHandshake.IsZero() {
		t.Fatal("confirmed responder reports no latest handshake")
	}
}

// TestResponderSendsNoExtraKeepalive (item 10a): the initiator's first
// data packet needs no answer; the responder sends a keepalive only when
// the passive-keepalive rule asks (KeepaliveTimeout without sending).
func TestResponderSendsNoExtraKeepalive(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	p := ipv4Packet(a.addr, b.addr, []byte("first"))
	a.tun.Inbound <- p
	expectPacket(t, b, p)
	b.dev.syncControl() // whatever the confirmation asked for is done
	if got := counter(b.dev, "keepalives_sent"); got != 0 {
		t.Fatalf("responder sent %d keepalives right after the first packet, want 0", got)
	}
	st, _ := a.dev.Get()
	sb, _ := b.dev.Get()
	// a sent an initiation and one data packet; b received both.
	if st.Peers[0].TxBytes != sb.Peers[0].RxBytes {
		t.Fatalf("a sent %d bytes, b counts %d received", st.Peers[0].TxBytes, sb.Peers[0].RxBytes)
	}
	if sb.Peers[0].TxBytes != st.Peers[0].RxBytes {
		t.Fatalf("b sent %d bytes, a counts %d received", sb.Peers[0].TxBytes, st.Peers[0].RxBytes)
	}
}

// TestPassiveKeepalive: data received and nothing sent for
// KeepaliveTimeout is answered with a keepalive.
func TestPassiveKeepalive(t *testing.T) {
	timers := DefaultTimers()
	timers.KeepaliveTimeout = 100 * time.Millisecond
	a, b := newTestPair(t, timers)
	p := ipv4Packet(a.addr, b.addr, []byte("say something"))
	a.tun.Inbound <- p
	expectPacket(t, b, p)
	waitCounter(t, b.dev, "keepalives_sent", atLeast(1))
	waitCounter(t, a.dev, "keepalives_received", atLeast(1))
}

// TestPersistentKeepalive: with persistent keepalive set, a brings the
// tunnel up by itself and then sends keepalives on idle.
func TestPersistentKeepalive(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	one := uint16(1)
	if err := a.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: b.priv.PublicKey(), PersistentKeepalive: &one}}}); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a.dev, "handshakes_initiated", atLeast(1))
	waitCounter(t, a.dev, "keepalives_sent", atLeast(2))
	waitCounter(t, b.dev, "keepalives_received", atLeast(2))
}

// TestHandshakeRetransmitAndGiveUp: an unanswered initiation is retried
// every RekeyTimeout (plus jitter) and abandoned after RekeyAttemptTime,
// dropping (and counting) the packets that waited for it.
func TestHandshakeRetransmitAndGiveUp(t *testing.T) {
	timers := DefaultTimers()
	timers.RekeyTimeout = 20 * time.Millisecond
	timers.RekeyAttemptTime = 1500 * time.Millisecond // room for two retries on a loaded machine
	a, b := newTestPair(t, timers)
	if err := b.dev.Set(removePeerConfig(a)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		a.tun.Inbound <- ipv4Packet(a.addr, b.addr, []byte{byte(i)})
	}
	waitCounter(t, a.dev, "handshakes_initiated", atLeast(2))
	waitCounter(t, b.dev, "drop_handshake_unknown_peer", atLeast(2))
	waitCounter(t, a.dev, "drop_handshake_give_up", func(v uint64) bool { return v == 3 })
	if n := a.dev.stagedTotal.Load(); n != 0 {
		t.Fatalf("%d packets still counted as staged after the give-up", n)
	}
}

// TestRetransmitJitterDrawnOnce (L3): the retry time is fixed when the
// initiation is made, RekeyTimeout plus a jitter below maxTimerJitter, and
// the timers retry at that time, not before.
func TestRetransmitJitterDrawnOnce(t *testing.T) {
	timers := DefaultTimers()
	timers.RekeyTimeout = time.Hour // the device's own timers stay quiet
	timers.RekeyAttemptTime = 3 * time.Hour
	a, b := newTestPair(t, timers)
	if err := b.dev.Set(removePeerConfig(a)); err != nil {
		t.Fatal(err)
	}
	pa := a.dev.lookupPeer(b.priv.PublicKey())
	a.dev.initiateHandshake(pa, true)
	pa.handshake.Lock()
	made, retryAt := pa.handshake.lastInitiation, pa.handshake.retryAt
	pa.handshake.Unlock()
	if j := retryAt.Sub(made) - timers.RekeyTimeout; j < 0 || j >= maxTimerJitter {
		t.Fatalf("retry %v after the initiation, want RekeyTimeout plus [0, %v)", retryAt.Sub(made), maxTimerJitter)
	}
	before := counter(a.dev, "handshakes_initiated")
	for range 50 { // a jitter redrawn per tick would fire early on some
		a.dev.peerTimers(pa, retryAt.Add(-time.Millisecond))
	}
	if got := counter(a.dev, "handshakes_initiated"); got != before {
		t.Fatalf("retried before the retry time: %d initiations, want %d", got, before)
	}
	a.dev.peerTimers(pa, retryAt)
	if got := counter(a.dev, "handshakes_initiated"); got != before+1 {
		t.Fatalf("no retry at the retry time: %d initiations, want %d", got, before+1)
	}
}

// TestResponderDoesNotCrossHandshakes (L2): a responder with traffic for
// the initiator before the initiator confirmed the session waits for it
// instead of starting a handshake of its own.
func TestResponderDoesNotCrossHandshakes(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	init, _ := craftInitiation(t, a.priv, b.priv.PublicKey())
	if err := b.fake.Inject(init, a.ep); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a.dev, "drop_unknown_index", atLeast(1)) // b answered
	b.tun.Inbound <- ipv4Packet(b.addr, a.addr, []byte("waits for confirmation"))
	waitCounter(t, b.dev, "tun_read_packets", atLeast(1))
	// A packet of the next read: once it is counted, the first read's
	// sending (and any initiation it made) is over.
	b.tun.Inbound <- ipv4Packet(b.addr, netip.MustParseAddr("100.64.9.9"), []byte("x"))
	waitCounter(t, b.dev, "drop_no_route", atLeast(1))
	if got := counter(b.dev, "handshakes_initiated"); got != 0 {
		t.Fatalf("responder started %d handshakes of its own right after answering", got)
	}
	if got := counter(b.dev, "tun_read_batches"); got < 2 {
		t.Fatalf("tun_read_batches = %d, want 2", got)
	}
}

// TestUnderLoadHysteresis (L4): once the handshake queue was past a
// quarter full, the device stays under load for underLoadHold after it
// drained.
func TestUnderLoadHysteresis(t *testing.T) {
	d := &Device{handshakes: make(chan handshakeMessage, handshakeQueueLen)}
	t0 := time.Now()
	if d.underLoad(t0) {
		t.Fatal("under load with an empty queue")
	}
	for range handshakeQueueLen/4 + 1 {
		d.handshakes <- handshakeMessage{}
	}
	if !d.underLoad(t0) {
		t.Fatal("not under load with the queue past a quarter")
	}
	for len(d.handshakes) > 0 {
		<-d.handshakes
	}
	if !d.underLoad(t0.Add(underLoadHold - time.Millisecond)) {
		t.Fatal("load forgotten as soon as the queue drained")
	}
	if d.underLoad(t0.Add(underLoadHold)) {
		t.Fatal("still under load after the hold")
	}
}

// TestRejectWipeKeepsLastHandshake (L6): sessions no handshake renewed for
// three reject periods are wiped, but the latest handshake stays for wg
// show.
func TestRejectWipeKeepsLastHandshake(t *testing.T) {
	timers := Timers{
		RekeyAfterTime:   100 * time.Millisecond,
		RejectAfterTime:  200 * time.Millisecond,
		RekeyAttemptTime: time.Second,
		RekeyTimeout:     100 * time.Millisecond,
		KeepaliveTimeout: time.Hour, // nobody answers: no traffic after the first packet
	}
	a, b := newTestPair(t, timers)
	p := ipv4Packet(a.addr, b.addr, []byte("then silence"))
	a.tun.Inbound <- p
	expectPacket(t, b, p)
	pa := a.dev.lookupPeer(b.priv.PublicKey())
	waitFor(t, func() bool { return !pa.hasSessions() })
	st, _ := a.dev.Get()
	if st.Peers[0].LastHandshake.IsZero() {
		t.Fatal("the wipe forgot the latest handshake")
	}
	// A new packet makes a new session.
	q := ipv4Packet(a.addr, b.addr, []byte("again"))
	a.tun.Inbound <- q
	expectPacket(t, b, q)
}

// TestReceiveSideRekeyLooksAtCurrent (L5): the initiator rekeys when its
// current session nears RejectAfterTime as it receives, whatever session
// a packet arrived on; a packet on an old session it initiated does not
// start a handshake when the current session is the peer's.
func TestReceiveSideRekeyLooksAtCurrent(t *testing.T) {
	// RejectAfterTime - KeepaliveTimeout - RekeyTimeout = 0: every
	// packet received finds the current session old enough.
	timers := Timers{
		RekeyAfterTime:   time.Hour,
		RejectAfterTime:  2 * time.Hour,
		RekeyAttemptTime: time.Hour,
		RekeyTimeout:     time.Hour,
		KeepaliveTimeout: time.Hour,
	}
	backdate := func(p *Peer) {
		p.handshake.Lock()
		p.handshake.lastInitiation = time.Now().Add(-2 * time.Hour)
		p.handshake.lastResponse = time.Time{}
		p.handshake.Unlock()
	}

	t.Run("current is ours", func(t *testing.T) {
		a, b := newTestPair(t, timers)
		p := ipv4Packet(a.addr, b.addr, []byte("a initiates"))
		a.tun.Inbound <- p
		expectPacket(t, b, p)
		backdate(a.dev.lookupPeer(b.priv.PublicKey()))
		q := ipv4Packet(b.addr, a.addr, []byte("b answers"))
		b.tun.Inbound <- q
		expectPacket(t, a, q)
		if got := counter(a.dev, "handshakes_initiated"); got != 2 {
			t.Fatalf("handshakes_initiated = %d, want a receive-side rekey (2)", got)
		}
	})

	t.Run("current is the peer's", func(t *testing.T) {
		a, b := newTestPair(t, timers)
		p := ipv4Packet(a.addr, b.addr, []byte("a initiates"))
		a.tun.Inbound <- p
		expectPacket(t, b, p)
		pa, pb := a.dev.lookupPeer(b.priv.PublicKey()), b.dev.lookupPeer(a.priv.PublicKey())
		old := pb.keypairs.current.Load() // b's side of a's session
		b.dev.initiateHandshake(pb, true)
		// b's keepalive on its new session confirms it to a.
		waitCounter(t, a.dev, "keepalives_received", atLeast(1))
		if cur := pa.keypairs.current.Load(); cur == nil || cur.initiator {
			t.Fatal("a's current session is not b's")
		}
		backdate(pa)
		buf := make([]byte, bufSize)
		var nonceBuf [12]byte
		msg, ok := b.dev.seal(pb, old, buf, 0, nonceBuf[:])
		if !ok {
			t.Fatal("seal on the old session failed")
		}
		if err := a.fake.Inject(msg, b.ep); err != nil {
			t.Fatal(err)
		}
		waitCounter(t, a.dev, "keepalives_received", atLeast(2))
		if got := counter(a.dev, "handshakes_initiated"); got != 1 {
			t.Fatalf("a packet on an old session started a handshake: %d initiations, want 1", got)
		}
	})
}

// TestStaleHandshakeLeavesNothing (L7): a session made by a handshake that
// ran while its peer was removed, or the device's or preshared key
// changed, is not installed, and its index is freed.
func TestStaleHandshakeLeavesNothing(t *testing.T) {
	newSession := func(t *testing.T, d *Device, p *Peer) *keypair {
		idx := d.indices.newIndex(p)
		kp, err := newKeypair(p, noise.Keys{LocalIndex: idx, RemoteIndex: 7}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	check := func(t *testing.T, d *Device, p *Peer, kp *keypair, installed bool) {
		t.Helper()
		if installed {
			t.Fatal("stale session installed")
		}
		if e := d.indices.lookup(kp.localIndex); e.peer != nil {
			t.Fatalf("stale session's index %d still points at %+v", kp.localIndex, e)
		}
		if p.hasSessions() {
			t.Fatal("peer holds a session after the change")
		}
	}

	t.Run("peer removed", func(t *testing.T) {
		a, b := newTestPair(t, Timers{})
		pa := a.dev.lookupPeer(b.priv.PublicKey())
		local, psk := a.dev.local.Load(), noise.PresharedKey{}
		kp := newSession(t, a.dev, pa)
		if err := a.dev.Set(removePeerConfig(b)); err != nil {
			t.Fatal(err)
		}
		check(t, a.dev, pa, kp, pa.installSession(kp, local, psk))
	})
	t.Run("private key changed", func(t *testing.T) {
		a, b := newTestPair(t, Timers{})
		pa := a.dev.lookupPeer(b.priv.PublicKey())
		local, psk := a.dev.local.Load(), noise.PresharedKey{}
		kp := newSession(t, a.dev, pa)
		k := mustKey(t)
		if err := a.dev.Set(&wgcfg.DeviceConfig{PrivateKey: &k}); err != nil {
			t.Fatal(err)
		}
		check(t, a.dev, pa, kp, pa.installSession(kp, local, psk))
	})
	t.Run("preshared key changed", func(t *testing.T) {
		a, b := newTestPair(t, Timers{})
		pa := a.dev.lookupPeer(b.priv.PublicKey())
		local, psk := a.dev.local.Load(), noise.PresharedKey{}
		kp := newSession(t, a.dev, pa)
		newPSK := noise.PresharedKey{1}
		if err := a.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: b.priv.PublicKey(), UpdateOnly: true, PresharedKey: &newPSK}}}); err != nil {
			t.Fatal(err)
		}
		check(t, a.dev, pa, kp, pa.installSession(kp, local, psk))
		if got := counter(a.dev, "drop_handshake_stale"); got != 1 {
			t.Fatalf("drop_handshake_stale = %d, want 1", got)
		}
	})
}

// TestStagedTotalIsBounded (L9): all peers together stage at most
// maxStagedTotal packets; the rest are dropped and counted, and what a
// removed peer staged no longer counts.
func TestStagedTotalIsBounded(t *testing.T) {
	ta, tb := transporttest.NewPair()
	a, b := newNodePair(t, ta, tb, Options{Logf: t.Logf, maxStagedTotal: 10})
	if err := b.dev.Set(removePeerConfig(a)); err != nil {
		t.Fatal(err)
	}
	for i := range 15 {
		a.tun.Inbound <- ipv4Packet(a.addr, b.addr, []byte{byte(i)})
	}
	waitCounter(t, a.dev, "drop_staged_total_full", func(v uint64) bool { return v == 5 })
	if got := counter(a.dev, "drop_staged_queue_full"); got != 0 {
		t.Fatalf("drop_staged_queue_full = %d, want 0 (the per-peer bound is larger)", got)
	}
	if got := counter(a.dev, "queue_staged_packets"); got != 10 {
		t.Fatalf("queue_staged_packets = %d with the bound's 10 staged", got)
	}
	if err := a.dev.Set(removePeerConfig(b)); err != nil {
		t.Fatal(err)
	}
	if n := a.dev.stagedTotal.Load(); n != 0 {
		t.Fatalf("%d packets counted as staged after their peer left", n)
	}
	if got := counter(a.dev, "queue_staged_packets"); got != 0 {
		t.Fatalf("queue_staged_packets = %d after their peer left", got)
	}
}

// TestHandshakeInternalFailureIsCounted (L8): a handshake step that fails
// on our side is counted, not silent. (A low-order key is the one failure
// a test can cause; the device normally skips such a peer before.)
func TestHandshakeInternalFailureIsCounted(t *testing.T) {
	a, _ := newTestPair(t, Timers{})
	var zero noise.PublicKey
	if err := a.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: zero}}}); err != nil {
		t.Fatal(err)
	}
	p := a.dev.lookupPeer(zero)
	p.unusableKey = false // no routine looks at it: no route, no timer due
	a.dev.initiateHandshake(p, true)
	if got := counter(a.dev, "drop_handshake_internal"); got != 1 {
		t.Fatalf("drop_handshake_internal = %d, want 1", got)
	}
}

// TestGiveUpWhileSendBlocked: a give-up while the peer's send lock is held
// (a send stuck on a full buffer) does not wait for it; the control
// routine discards the staged packets once the lock is free.
func TestGiveUpWhileSendBlocked(t *testing.T) {
	timers := DefaultTimers()
	timers.RekeyAttemptTime = time.Hour // this test gives up by itself
	a, b := newTestPair(t, timers)
	if err := b.dev.Set(removePeerConfig(a)); err != nil {
		t.Fatal(err)
	}
	a.tun.Inbound <- ipv4Packet(a.addr, b.addr, []byte{1})
	a.tun.Inbound <- ipv4Packet(a.addr, b.addr, []byte{2})
	waitFor(t, func() bool { return a.dev.stagedTotal.Load() == 2 })
	pa := a.dev.lookupPeer(b.priv.PublicKey())
	pa.sendMu.Lock()
	a.dev.giveUpHandshake(pa) // returns although sendMu is held
	if got := counter(a.dev, "drop_handshake_give_up"); got != 0 {
		pa.sendMu.Unlock()
		t.Fatalf("drop_handshake_give_up = %d while the send lock was held", got)
	}
	pa.sendMu.Unlock()
	a.dev.syncControl()
	if got := counter(a.dev, "drop_handshake_give_up"); got != 2 {
		t.Fatalf("drop_handshake_give_up = %d, want 2", got)
	}
}
