package wg

import (
	"math/rand/v2"
	"time"
)

// timerTick is how often the device looks at every peer's timers. The data
// path only stores timestamps; all timer decisions happen here, so no timer
// is touched per packet.
func (d *Device) timerTick() time.Duration {
	t := d.timers.RekeyTimeout / 20
	if t > 250*time.Millisecond {
		t = 250 * time.Millisecond
	}
	if t < 10*time.Millisecond {
		t = 10 * time.Millisecond
	}
	return t
}

// routineTimers runs the protocol's timers (whitepaper §6) for every peer.
// It does no I/O and never waits for any: what it decides to send is
// queued for the control routine.
func (d *Device) routineTimers() {
	defer d.routines.Done()
	tick := time.NewTicker(d.timerTick())
	defer tick.Stop()
	for {
		select {
		case <-d.closed:
			return
		case now := <-tick.C:
			peers := d.peerList()
			for _, p := range peers {
				d.peerTimers(p, now)
			}
		}
	}
}

// routineMTU refreshes the cached TUN MTU. It has a routine of its own
// because MTU() may be slow (a round trip to the front in split mode) and
// must not hold up the timers.
func (d *Device) routineMTU() {
	defer d.routines.Done()
	tick := time.NewTicker(mtuRefresh)
	defer tick.Stop()
	for {
		select {
		case <-d.closed:
			return
		case <-tick.C:
			d.refreshMTU()
		}
	}
}

// mtuRefresh is how often routineMTU asks the TUN for its MTU.
const mtuRefresh = 250 * time.Millisecond

// RefreshMTU reads the TUN's MTU now, for whoever learns that it changed
// (the front watches the interface): the next packet is padded to it,
// without waiting for the periodic refresh.
func (d *Device) RefreshMTU() { d.refreshMTU() }

func (d *Device) refreshMTU() {
	if m, err := d.tun.MTU(); err == nil && m > 0 {
		d.cachedMTU.Store(int32(m))
	}
}

func since(now time.Time, ns int64) time.Duration {
	if ns == 0 {
		return 1<<63 - 1
	}
	return now.Sub(time.Unix(0, ns))
}

// peerTimers acts on one peer's timers.
func (d *Device) peerTimers(p *Peer, now time.Time) {
	if p.removed.Load() {
		return
	}
	t := d.timers

	// Retransmit an unanswered initiation, or give up after RekeyAttemptTime.
	hs := &p.handshake
	hs.Lock()
	inFlight := hs.initiator != nil
	retryAt, started := hs.retryAt, hs.attemptsStarted
	hs.Unlock()
	if inFlight {
		if now.Sub(started) >= t.RekeyAttemptTime {
			d.giveUpHandshake(p)
		} else if !now.Before(retryAt) {
			d.initiateHandshake(p, true)
		}
	}

	// Data sent but nothing heard back for a while: the session may be dead.
	if s := p.awaitingReplySince.Load(); s != 0 && since(now, s) >= t.KeepaliveTimeout+t.RekeyTimeout {
		p.awaitingReplySince.Store(0)
		d.initiateHandshake(p, false)
	}

	// Data received and nothing sent since: answer with a keepalive so the
	// sender knows the session works.
	lastData, lastSentAny := p.lastDataReceived.Load(), p.lastSent.Load()
	if lastData != 0 && lastData > lastSentAny && since(now, lastData) >= t.KeepaliveTimeout {
		d.requestControl(p, controlKeepalive)
	}

	// Persistent keepalive keeps NAT mappings open.
	if iv := p.persistentKeepalive.Load(); iv != 0 && since(now, p.lastSent.Load()) >= time.Duration(iv)*time.Second {
		if p.keypairs.current.Load() != nil {
			d.requestControl(p, controlKeepalive)
		} else {
			d.initiateHandshake(p, false)
		}
	}

	// Forget keys that no handshake has renewed for three reject periods
	// (the latest handshake stays for wg show).
	p.wipeSessionsOlderThan(now.Add(-3 * t.RejectAfterTime))
}

// giveUpHandshake ends a handshake attempt that got no answer and discards
// the packets that waited for it (counted).
func (d *Device) giveUpHandshake(p *Peer) {
	p.cancelHandshake()
	// sendMu may be held by a send blocked on a full buffer: then the
	// control routine discards the packets, and the timers go on.
	if p.sendMu.TryLock() {
		p.discardStagedLocked()
		p.sendMu.Unlock()
	} else {
		d.requestControl(p, controlGiveUp)
	}
	d.logf("peer %s: no handshake response after %v, giving up until there is new traffic", p, d.timers.RekeyAttemptTime)
}

func jitter() time.Duration { return rand.N(maxTimerJitter) }
