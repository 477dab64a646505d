package wg

import (
	"time"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wg/wire"
)

// handshakeQueueLen bounds the handshake messages waiting for the handshake
// routine; beyond it they are dropped and counted. Past a quarter full the
// device is "under load" and demands cookies (mac2) before doing any
// Diffie-Hellman work.
const handshakeQueueLen = 1024

// handshakeMessage is a copied handshake message and its source.
type handshakeMessage struct {
	buf [wire.InitiationSize]byte // the largest handshake message
	n   int
	src transport.Endpoint
}

// queueHandshake copies a handshake message to the handshake routine.
func (d *Device) queueHandshake(msg []byte, src transport.Endpoint) {
	if len(msg) > wire.InitiationSize {
		d.counters.drop(dropMalformed)
		return
	}
	var m handshakeMessage
	m.n = copy(m.buf[:], msg)
	m.src = src
	select {
	case d.handshakes <- m:
	default:
		d.counters.drop(dropHandshakeQueueFull)
	}
}

// routineHandshakes processes handshake messages one at a time.
func (d *Device) routineHandshakes() {
	defer d.routines.Done()
	for {
		select {
		case <-d.closed:
			return
		case m := <-d.handshakes:
			d.handleHandshake(m.buf[:m.n], m.src)
		}
	}
}

// underLoadHold is how long the device stays under load after the
// handshake queue was last seen past a quarter full, so that a flood that
// pauses for a moment cannot slip initiations in without cookies.
const underLoadHold = time.Second

// underLoad reports whether handshake messages must carry a valid mac2
// (cookie) before the device does any Diffie-Hellman work for them.
func (d *Device) underLoad(now time.Time) bool {
	if len(d.handshakes) > handshakeQueueLen/4 {
		d.underLoadUntil.Store(now.Add(underLoadHold).UnixNano())
		return true
	}
	return now.UnixNano() < d.underLoadUntil.Load()
}

func (d *Device) handleHandshake(msg []byte, src transport.Endpoint) {
	typ, _ := wire.MessageType(msg)
	local := d.local.Load()
	checker := d.cookies.Load()
	if local == nil || checker == nil {
		d.counters.drop(dropHandshakeInvalid)
		return
	}
	switch typ {
	case wire.TypeInitiation:
		if len(msg) != wire.InitiationSize {
			d.counters.drop(dropMalformed)
			return
		}
		if !d.checkMACs(checker, msg, src) {
			return
		}
		var m wire.Initiation
		if err := m.Unmarshal(msg); err != nil {
			d.counters.drop(dropMalformed)
			return
		}
		d.consumeInitiation(local, &m, src)
	case wire.TypeResponse:
		if len(msg) != wire.ResponseSize {
			d.counters.drop(dropMalformed)
			return
		}
		if !d.checkMACs(checker, msg, src) {
			return
		}
		var m wire.Response
		if err := m.Unmarshal(msg); err != nil {
			d.counters.drop(dropMalformed)
			return
		}
		d.consumeResponse(local, &m, src)
	case wire.TypeCookieReply:
		var m wire.CookieReply
		if err := m.Unmarshal(msg); err != nil {
			d.counters.drop(dropMalformed)
			return
		}
		e := d.indices.lookup(m.Receiver)
		if e.peer == nil || e.peer.cookies.ConsumeReply(&m) != nil {
			d.counters.drop(dropCookieInvalid)
		}
	}
}

// checkMACs verifies mac1 and, under load, mac2, answering with a cookie
// reply when mac2 is missing. It reports whether to go on.
func (d *Device) checkMACs(checker *noise.CookieChecker, msg []byte, src transport.Endpoint) bool {
	if !checker.CheckMAC1(msg) {
		d.counters.drop(dropHandshakeMAC1)
		return false
	}
	if !d.underLoad(time.Now()) || checker.CheckMAC2(msg, src.Remote) {
		return true
	}
	reply, err := checker.CreateReply(msg, src.Remote)
	if err != nil {
		d.counters.drop(dropHandshakeInternal)
		return false
	}
	var b [wire.CookieReplySize]byte
	reply.Marshal(b[:])
	d.sendControl(nil, src, b[:]) // counted in cookie_replies_sent once sent
	return false
}

// consumeInitiation answers a peer's initiation with a response and installs
// the new session as next. The handshake completes (latest handshake,
// handshakes_completed) only when the initiator's first packet on the
// session confirms it; see confirmNext.
func (d *Device) consumeInitiation(local *noise.Local, m *wire.Initiation, src transport.Endpoint) {
	info, err := noise.ConsumeInitiation(local, m)
	if err != nil {
		d.counters.drop(dropHandshakeInvalid)
		return
	}
	p := d.lookupPeer(info.RemoteStatic)
	if p == nil || p.removed.Load() {
		d.counters.drop(dropHandshakeUnknownPeer)
		return
	}
	now := time.Now()
	hs := &p.handshake
	hs.Lock()
	if !info.Timestamp.After(hs.lastTimestamp) {
		hs.Unlock()
		d.counters.drop(dropHandshakeReplay)
		return
	}
	if now.Sub(hs.lastConsumed) < handshakeFloodGap {
		hs.Unlock()
		d.counters.drop(dropHandshakeFlood)
		return
	}
	psk := hs.psk
	idx := d.indices.newIndex(p)
	resp, keys, err := noise.CreateResponse(local, info, psk, idx)
	if err != nil {
		hs.Unlock()
		d.indices.remove(idx)
		d.counters.drop(dropHandshakeInvalid)
		return
	}
	hs.lastTimestamp = info.Timestamp
	hs.lastConsumed = now
	// We just made a handshake: starting our own now would cross it.
	hs.lastResponse = now
	hs.Unlock()

	kp, err := newKeypair(p, keys, now)
	clear(keys.Send[:])
	clear(keys.Receive[:])
	if err != nil {
		d.indices.remove(idx)
		d.counters.drop(dropHandshakeInternal)
		return
	}
	if !p.installSession(kp, local, psk) {
		return // counted
	}
	p.setEndpoint(src)
	p.rxBytes.Add(wire.InitiationSize)
	p.lastReceived.Store(now.UnixNano())

	var b [wire.ResponseSize]byte
	resp.Marshal(b[:])
	p.cookies.AddMACs(b[:])
	d.sendControl(p, transport.Endpoint{}, b[:])
}

// consumeResponse completes a handshake we initiated.
func (d *Device) consumeResponse(local *noise.Local, m *wire.Response, src transport.Endpoint) {
	e := d.indices.lookup(m.Receiver)
	p := e.peer
	if p == nil || e.kp != nil {
		d.counters.drop(dropUnknownIndex)
		return
	}
	now := time.Now()
	hs := &p.handshake
	hs.Lock()
	if hs.initiator == nil || hs.localIndex != m.Receiver {
		hs.Unlock()
		d.counters.drop(dropHandshakeInvalid)
		return
	}
	psk := hs.psk
	keys, err := hs.initiator.ConsumeResponse(local, psk, m)
	if err != nil {
		hs.Unlock()
		d.counters.drop(dropHandshakeInvalid)
		return
	}
	hs.initiator = nil
	hs.attemptsStarted = time.Time{}
	hs.Unlock()

	kp, err := newKeypair(p, keys, now)
	clear(keys.Send[:])
	clear(keys.Receive[:])
	if err != nil {
		d.indices.removeHandshake(m.Receiver, p)
		d.counters.drop(dropHandshakeInternal)
		return
	}
	if !p.installSession(kp, local, psk) {
		return // counted
	}
	p.setEndpoint(src)
	p.rxBytes.Add(wire.ResponseSize)
	p.lastReceived.Store(now.UnixNano())
	p.lastHandshake.Store(now.UnixNano())
	d.counters.handshakesCompleted.Add(1)
	// What waited for the session goes now; with nothing waiting a
	// keepalive confirms the session to the responder.
	d.requestControl(p, controlKeepalive)
}

// initiateHandshake sends a handshake initiation to p unless one is already
// in flight or a handshake was made recently (retry says the timer decided
// a retransmission is due). It does no I/O: the initiation is queued for
// the control routine.
func (d *Device) initiateHandshake(p *Peer, retry bool) {
	local := d.local.Load()
	if local == nil || p.removed.Load() {
		return
	}
	if p.unusableKey {
		return // no handshake can ever complete with a low-order key
	}
	now := time.Now()
	hs := &p.handshake
	hs.Lock()
	if p.removed.Load() || d.local.Load() != local {
		// Removal and key changes cancel the handshake under this lock
		// after they are made: an initiation made now would outlive it.
		hs.Unlock()
		return
	}
	if !retry {
		recent := func(t time.Time) bool { return !t.IsZero() && now.Sub(t) < d.timers.RekeyTimeout }
		// A recent initiation is enough while it is in flight or made a
		// session, and a handshake we just answered will give us one:
		// don't initiate on every packet, nor cross the peer's handshake.
		if recent(hs.lastInitiation) && (hs.initiator != nil || p.keypairs.current.Load() != nil) || recent(hs.lastResponse) {
			hs.Unlock()
			return
		}
	}
	if hs.initiator != nil {
		d.indices.removeHandshake(hs.localIndex, p)
	}
	idx := d.indices.newIndex(p)
	msg, st, err := noise.CreateInitiation(local, p.publicKey, idx, noise.Now())
	if err != nil {
		hs.Unlock()
		d.indices.remove(idx)
		d.counters.drop(dropHandshakeInternal)
		return
	}
	hs.initiator = st
	hs.localIndex = idx
	hs.lastInitiation = now
	hs.retryAt = now.Add(d.timers.RekeyTimeout + jitter())
	if hs.attemptsStarted.IsZero() {
		hs.attemptsStarted = now
	}
	hs.Unlock()

	var b [wire.InitiationSize]byte
	msg.Marshal(b[:])
	p.cookies.AddMACs(b[:])
	d.counters.handshakesInitiated.Add(1)
	d.sendControl(p, transport.Endpoint{}, b[:])
}
