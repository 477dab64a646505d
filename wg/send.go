package wg

import (
	"errors"
	"time"

	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/wg/wire"
)

// peerBatch is the part of one TUN read that goes to one peer, in read order.
type peerBatch struct {
	peer *Peer
	idx  []int // indices into the read batch
}

// routineReadFromTUN is the outbound data path: read a batch from the TUN,
// route each packet by destination, encrypt in place and send each peer's
// packets in one transport call. It runs until the TUN closes.
func (d *Device) routineReadFromTUN() {
	defer d.routines.Done()
	batch := d.tun.BatchSize()
	set := newBufferSet(batch)
	defer set.free() // no other goroutine holds a buffer: every send is done when it returns
	bufs := set.bufs
	sizes := make([]int, batch)
	groups := make([]peerBatch, 0, 8)
	out := make([][]byte, 0, batch)
	var nonceBuf [12]byte
	for {
		n, err := d.tun.Read(bufs, sizes, headroom)
		if err != nil && n == 0 {
			if errors.Is(err, tun.ErrTooManySegments) {
				continue
			}
			if d.isClosed() || isClosedErr(err) {
				d.stopFromRoutine(err)
				return
			}
			d.logs.tunRead.logf(d, time.Now(), "tun read: %v", err)
			if !d.pause(10 * time.Millisecond) {
				return
			}
			continue
		}
		d.counters.tunReadBatches.Add(1)
		d.counters.tunReadPackets.Add(uint64(n))

		groups = groups[:0]
		for i := 0; i < n; i++ {
			pkt := bufs[i][headroom : headroom+sizes[i]]
			p, ok := d.allowed.LookupPacketDst(pkt)
			if !ok {
				d.counters.drop(dropNoRoute)
				continue
			}
			groups = appendToGroup(groups, p, i)
		}
		now := time.Now()
		for g := range groups {
			out = d.sendBatch(groups[g].peer, bufs, sizes, groups[g].idx, out[:0], nonceBuf[:], now)
		}
		for g := range groups {
			groups[g].peer = nil
			groups[g].idx = groups[g].idx[:0]
		}
	}
}

// appendToGroup adds packet i to p's group, reusing the groups' index slices
// across batches.
func appendToGroup(groups []peerBatch, p *Peer, i int) []peerBatch {
	for g := range groups {
		if groups[g].peer == p {
			groups[g].idx = append(groups[g].idx, i)
			return groups
		}
	}
	if len(groups) < cap(groups) {
		groups = groups[:len(groups)+1]
		g := &groups[len(groups)-1]
		g.peer = p
		g.idx = append(g.idx[:0], i)
		return groups
	}
	return append(groups, peerBatch{peer: p, idx: []int{i}})
}

// sendBatch encrypts the packets bufs[idx...] for p and sends them. Without a
// usable session it stages them and starts a handshake.
func (d *Device) sendBatch(p *Peer, bufs [][]byte, sizes []int, idx []int, out [][]byte, nonceBuf []byte, now time.Time) [][]byte {
	if p.unusableKey {
		d.counters.dropN(dropPeerKeyUnusable, len(idx))
		return out
	}
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	kp := p.sendableSession(now)
	if kp == nil || len(p.staged) > 0 {
		for _, i := range idx {
			p.stageLocked(bufs[i][:headroom+sizes[i]])
		}
		if kp == nil {
			d.initiateHandshake(p, false)
			return out
		}
		return d.flushStagedLocked(p, kp, out, nonceBuf, now)
	}
	for _, i := range idx {
		b, ok := d.seal(p, kp, bufs[i], sizes[i], nonceBuf)
		if !ok {
			// session spent mid-batch: keep the rest for the next one
			for _, j := range idx[len(out):] {
				p.stageLocked(bufs[j][:headroom+sizes[j]])
			}
			break
		}
		out = append(out, b)
	}
	d.finishSend(p, kp, out, true, now)
	return out
}

// stageLocked copies a packet (with its headroom) to p's wait queue.
// p.sendMu must be held.
func (p *Peer) stageLocked(b []byte) {
	d := p.dev
	if len(p.staged) >= maxStaged {
		d.counters.drop(dropStagedQueueFull)
		return
	}
	if d.stagedTotal.Add(1) > d.maxStagedTotal {
		d.stagedTotal.Add(-1)
		d.counters.drop(dropStagedTotalFull)
		return
	}
	// Room for padding to 16 bytes and the tag, which seal adds in place.
	c := make([]byte, len(b), len(b)+16+16)
	copy(c, b)
	p.staged = append(p.staged, c)
}

// unstageLocked forgets p's first n staged packets (sent or discarded).
// p.sendMu must be held.
func (p *Peer) unstageLocked(n int) {
	if n == 0 {
		return
	}
	clear(p.staged[:n])
	p.staged = append(p.staged[:0], p.staged[n:]...)
	p.dev.stagedTotal.Add(-int64(n))
}

// discardStagedLocked drops p's staged packets because its handshake gave
// up, counting them. p.sendMu must be held.
func (p *Peer) discardStagedLocked() {
	p.dev.counters.dropN(dropHandshakeGiveUp, len(p.staged))
	p.unstageLocked(len(p.staged))
}

// flushStagedLocked sends p's staged packets with kp. p.sendMu must be held.
func (d *Device) flushStagedLocked(p *Peer, kp *keypair, out [][]byte, nonceBuf []byte, now time.Time) [][]byte {
	sent := 0
	for _, b := range p.staged {
		s, ok := d.seal(p, kp, b[:cap(b)], len(b)-headroom, nonceBuf)
		if !ok {
			break
		}
		out = append(out, s)
		sent++
	}
	d.finishSend(p, kp, out, true, now)
	p.unstageLocked(sent)
	return out
}

// flushStaged sends p's staged packets, if it has any and a session. The
// control routine calls it when a responder's session is confirmed.
func (d *Device) flushStaged(p *Peer) {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if len(p.staged) == 0 {
		return
	}
	now := time.Now()
	if kp := p.sendableSession(now); kp != nil {
		var nonceBuf [12]byte
		d.flushStagedLocked(p, kp, nil, nonceBuf[:], now)
	}
}

// seal encrypts the packet at buf[headroom:headroom+size] in place, pads it,
// writes the transport header before it, and returns the datagram. It fails
// when the session has used its last counter.
func (d *Device) seal(p *Peer, kp *keypair, buf []byte, size int, nonceBuf []byte) ([]byte, bool) {
	counter := kp.sendCounter.Add(1) - 1
	if counter >= rejectAfterMessages {
		return nil, false
	}
	padded := paddedSize(size, d.mtu())
	clear(buf[headroom+size : headroom+padded])
	wire.PutTransportHeader(buf, kp.remoteIndex, counter)
	nonce(nonceBuf, counter)
	sealed := kp.send.Seal(buf[headroom:headroom], nonceBuf, buf[headroom:headroom+padded], nil)
	return buf[:headroom+len(sealed)], true
}

// paddedSize rounds a payload up to a multiple of 16 without passing the MTU
// (whitepaper §5.4.6); a keepalive stays empty.
func paddedSize(size, mtu int) int {
	p := (size + 15) &^ 15
	if p > mtu && size <= mtu {
		p = mtu
	}
	if p < size {
		p = size
	}
	return p
}

// finishSend sends a sealed batch and updates timers and counters.
func (d *Device) finishSend(p *Peer, kp *keypair, out [][]byte, data bool, now time.Time) {
	if len(out) == 0 {
		return
	}
	if err := d.sendTo(p, out); err != nil {
		if !errors.Is(err, errNoEndpoint) {
			d.logs.send.logf(d, now, "peer %s: send: %v", p, err)
		}
		return
	}
	var n uint64
	for _, b := range out {
		n += uint64(len(b))
	}
	p.txBytes.Add(n)
	ns := now.UnixNano()
	p.lastSent.Store(ns)
	if data {
		p.awaitingReplySince.CompareAndSwap(0, ns)
	}
	// The initiator rekeys before the session gets old or worn out.
	if kp.initiator && (now.Sub(kp.created) >= d.timers.RekeyAfterTime || kp.sendCounter.Load() >= rekeyAfterMessages) {
		d.initiateHandshake(p, false)
	}
}

// sendKeepalive sends p's staged packets, or else an empty data packet, if
// p has a session. Only the control routine calls it (it may block in Send).
func (d *Device) sendKeepalive(p *Peer) {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	now := time.Now()
	kp := p.sendableSession(now)
	if kp == nil {
		return
	}
	if len(p.staged) > 0 {
		var nonceBuf [12]byte
		d.flushStagedLocked(p, kp, nil, nonceBuf[:], now)
		return
	}
	var nonceBuf [12]byte
	b, ok := d.seal(p, kp, d.keepaliveBuf[:], 0, nonceBuf[:])
	if !ok {
		return
	}
	d.counters.keepalivesSent.Add(1)
	d.finishSend(p, kp, [][]byte{b}, false, now)
}

// mtu is the TUN's MTU, used to cap padding.
func (d *Device) mtu() int {
	if m := d.cachedMTU.Load(); m > 0 {
		return int(m)
	}
	m, err := d.tun.MTU()
	if err != nil || m <= 0 {
		m = 1420
	}
	d.cachedMTU.Store(int32(m))
	return m
}
