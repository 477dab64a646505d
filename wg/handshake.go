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

func (d *Device) underLoad() bool { return len(d.handshakes) > handshakeQueueLen/4 }

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
	if !d.underLoad() || checker.CheckMAC2(msg, src.Remote) {
		return true
	}
	reply, err := checker.CreateReply(msg, src.Remote)
	if err != nil {
		return false
	}
	var b [wire.CookieReplySize]byte
	reply.Marshal(b[:])
	if err := d.sendToEndpoint([][]byte{b[:]}, src); err == nil {
		d.counters.cookieRepliesSent.Add(1)
	}
	return false
}

// consumeInitiation answers a peer's initiation with a response and installs
// the new session as next.
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
	idx := d.indices.newIndex(p)
	resp, keys, err := noise.CreateResponse(local, info, hs.psk, idx)
	if err != nil {
		hs.Unlock()
		d.indices.remove(idx)
		d.counters.drop(dropHandshakeInvalid)
		return
	}
	hs.lastTimestamp = info.Timestamp
	hs.lastConsumed = now
	hs.Unlock()

	kp, err := newKeypair(p, keys, now)
	if err != nil {
		d.indices.remove(idx)
		return
	}
	d.indices.set(idx, indexEntry{peer: p, kp: kp})
	p.installSession(kp)
	p.setEndpoint(src)
	p.lastHandshake.Store(now.UnixNano())
	d.counters.handshakesCompleted.Add(1)

	var b [wire.ResponseSize]byte
	resp.Marshal(b[:])
	p.cookies.AddMACs(b[:])
	if err := d.sendTo(p, [][]byte{b[:]}); err == nil {
		p.lastSent.Store(now.UnixNano())
		p.txBytes.Add(uint64(len(b)))
	}
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
	keys, err := hs.initiator.ConsumeResponse(local, hs.psk, m)
	if err != nil {
		hs.Unlock()
		d.counters.drop(dropHandshakeInvalid)
		return
	}
	hs.initiator = nil
	hs.attemptsStarted = time.Time{}
	hs.Unlock()

	kp, err := newKeypair(p, keys, now)
	if err != nil {
		return
	}
	d.indices.set(m.Receiver, indexEntry{peer: p, kp: kp})
	p.installSession(kp)
	p.setEndpoint(src)
	p.rxBytes.Add(wire.ResponseSize)
	p.lastReceived.Store(now.UnixNano())
	p.lastHandshake.Store(now.UnixNano())
	d.counters.handshakesCompleted.Add(1)
	d.flushAfterHandshake(p)
}

// flushAfterHandshake sends what waited for the new session; with nothing
// waiting it sends a keepalive, which also confirms the session to a
// responder.
func (d *Device) flushAfterHandshake(p *Peer) {
	d.sendKeepalive(p)
}

// initiateHandshake sends a handshake initiation to p unless one is already
// in flight (retry says the timer decided a retransmission is due).
func (d *Device) initiateHandshake(p *Peer, retry bool) {
	local := d.local.Load()
	if local == nil || p.removed.Load() {
		return
	}
	now := time.Now()
	hs := &p.handshake
	hs.Lock()
	if !retry && hs.initiator != nil && now.Sub(hs.lastSent) < d.timers.RekeyTimeout {
		hs.Unlock()
		return
	}
	if !retry && now.Sub(hs.lastSent) < d.timers.RekeyTimeout && !hs.lastSent.IsZero() && p.keypairs.current.Load() != nil {
		// A recent handshake is enough; don't initiate again on every packet.
		hs.Unlock()
		return
	}
	if hs.initiator != nil {
		d.indices.removeHandshake(hs.localIndex, p)
	}
	idx := d.indices.newIndex(p)
	msg, st, err := noise.CreateInitiation(local, p.publicKey, idx, noise.Now())
	if err != nil {
		hs.Unlock()
		d.indices.remove(idx)
		d.logf("peer %s: create initiation: %v", p, err)
		return
	}
	hs.initiator = st
	hs.localIndex = idx
	hs.lastSent = now
	if hs.attemptsStarted.IsZero() {
		hs.attemptsStarted = now
	}
	hs.Unlock()

	var b [wire.InitiationSize]byte
	msg.Marshal(b[:])
	p.cookies.AddMACs(b[:])
	d.counters.handshakesInitiated.Add(1)
	if err := d.sendTo(p, [][]byte{b[:]}); err == nil {
		p.lastSent.Store(now.UnixNano())
		p.txBytes.Add(uint64(len(b)))
	}
}
