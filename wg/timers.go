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
func (d *Device) routineTimers() {
	defer d.routines.Done()
	tick := time.NewTicker(d.timerTick())
	defer tick.Stop()
	for {
		select {
		case <-d.closed:
			return
		case now := <-tick.C:
			d.refreshMTU()
			peers := d.peerList()
			for _, p := range peers {
				d.peerTimers(p, now)
			}
		}
	}
}

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
	lastSent, started := hs.lastSent, hs.attemptsStarted
	hs.Unlock()
	if inFlight {
		if now.Sub(started) >= t.RekeyAttemptTime {
			d.giveUpHandshake(p)
		} else if now.Sub(lastSent) >= t.RekeyTimeout+jitter() {
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
		d.sendKeepalive(p)
	}

	// Persistent keepalive keeps NAT mappings open.
	if iv := p.persistentKeepalive.Load(); iv != 0 && since(now, p.lastSent.Load()) >= time.Duration(iv)*time.Second {
		if p.keypairs.current.Load() != nil {
			d.sendKeepalive(p)
		} else {
			d.initiateHandshake(p, false)
		}
	}

	// Forget keys that no handshake has renewed for three reject periods.
	if lh := p.lastHandshake.Load(); lh != 0 && since(now, lh) >= 3*t.RejectAfterTime {
		p.lastHandshake.Store(0)
		p.clearSessions()
	}
}

// giveUpHandshake ends a handshake attempt that got no answer and discards
// the packets that waited for it (counted).
func (d *Device) giveUpHandshake(p *Peer) {
	p.cancelHandshake()
	p.sendMu.Lock()
	d.counters.dropN(dropHandshakeGiveUp, len(p.staged))
	clear(p.staged)
	p.staged = p.staged[:0]
	p.sendMu.Unlock()
	d.logf("peer %s: no handshake response after %v, giving up until there is new traffic", p, d.timers.RekeyAttemptTime)
}

func jitter() time.Duration { return rand.N(maxTimerJitter) }
