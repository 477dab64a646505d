package wg

import (
	"encoding/binary"
	"time"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/wg/wire"
)

// routineReceive is the inbound data path for one socket: read a batch,
// decrypt transport data in place, check it, and write the batch to the TUN
// in one call. Handshake messages go to the handshake routine. It runs until
// the transport closes.
func (d *Device) routineReceive(recv transport.ReceiveFunc) {
	defer d.recvDone.Done()
	batch := d.transport.BatchSize()
	set := d.takeRxBufs(batch)
	defer d.putRxBufs(set)
	bufs := set.bufs[:batch]
	sizes := make([]int, batch)
	eps := make([]transport.Endpoint, batch)
	toTUN := make([][]byte, 0, batch)
	var nonceBuf [12]byte
	for {
		n, err := recv(bufs, sizes, eps)
		if err != nil && n == 0 {
			if d.isClosed() || isClosedErr(err) {
				return
			}
			d.logs.receive.logf(d, time.Now(), "transport receive: %v", err)
			if !d.pause(10 * time.Millisecond) {
				return
			}
			continue
		}
		d.counters.transportRecvBatches.Add(1)
		d.counters.transportRecvPackets.Add(uint64(n))
		now := time.Now()
		toTUN = toTUN[:0]
		for i := 0; i < n; i++ {
			msg := bufs[i][:sizes[i]]
			typ, err := wire.MessageType(msg)
			if err != nil {
				d.counters.drop(dropMalformed)
				continue
			}
			switch typ {
			case wire.TypeTransport:
				pkt, _ := d.open(msg, eps[i], nonceBuf[:], now)
				if pkt > 0 {
					toTUN = append(toTUN, bufs[i][:headroom+pkt])
				}
			case wire.TypeInitiation, wire.TypeResponse, wire.TypeCookieReply:
				d.queueHandshake(msg, eps[i])
			default:
				d.counters.drop(dropUnknownType)
			}
		}
		if len(toTUN) > 0 {
			d.writeTUN(toTUN)
		}
	}
}

// open authenticates and decrypts one transport message in place. It returns
// the inner packet's length (0 for a keepalive or a drop) and the peer it
// came from (nil for a drop).
func (d *Device) open(msg []byte, src transport.Endpoint, nonceBuf []byte, now time.Time) (int, *Peer) {
	receiver, counter, err := wire.ParseTransportHeader(msg)
	if err != nil {
		d.counters.drop(dropMalformed)
		return 0, nil
	}
	e := d.indices.lookup(receiver)
	kp := e.kp
	if kp == nil {
		d.counters.drop(dropUnknownIndex)
		return 0, nil
	}
	if counter >= rejectAfterMessages || now.Sub(kp.created) >= d.timers.RejectAfterTime {
		d.counters.drop(dropExpiredSession)
		return 0, nil
	}
	nonce(nonceBuf, counter)
	plain, err := kp.recv.Open(msg[headroom:headroom], nonceBuf, msg[headroom:], nil)
	if err != nil {
		d.counters.drop(dropBadMAC)
		return 0, nil
	}
	kp.replayMu.Lock()
	fresh := kp.replay.ValidateCounter(counter, rejectAfterMessages)
	kp.replayMu.Unlock()
	if !fresh {
		d.counters.drop(dropReplay)
		return 0, nil
	}

	// Authenticated: the packet speaks for the peer.
	p := kp.peer
	if p.confirmNext(kp, now) {
		// Only what waited for the session: the packet that confirmed it
		// needs no answer unless the passive-keepalive rule asks for one.
		d.requestControl(p, controlFlush)
	}
	p.setEndpoint(src)
	p.rxBytes.Add(uint64(len(msg)))
	ns := now.UnixNano()
	p.lastReceived.Store(ns)
	p.awaitingReplySince.Store(0)
	// The initiator rekeys before its sending session gets too old to
	// receive on: the session that sends is current, whatever kp is.
	if cur := p.keypairs.current.Load(); cur != nil && cur.initiator &&
		now.Sub(cur.created) >= d.timers.RejectAfterTime-d.timers.KeepaliveTimeout-d.timers.RekeyTimeout {
		d.initiateHandshake(p, false)
	}

	if len(plain) == 0 {
		d.counters.keepalivesReceived.Add(1)
		return 0, p
	}
	p.lastDataReceived.Store(ns)
	size, ok := innerPacketSize(plain)
	if !ok {
		d.counters.drop(dropBadInnerPacket)
		return 0, p
	}
	if src, ok := d.allowed.LookupPacketSrc(plain[:size]); !ok || src != p {
		d.counters.drop(dropSourceNotAllowed)
		return 0, p
	}
	// The peer's access rules: where it may send, once we know it is the
	// peer who sends.
	if rules := p.access.Load(); rules != nil && !rules.Allow(plain[:size]) {
		d.counters.drop(dropACL)
		return 0, p
	}
	return size, p
}

// innerPacketSize returns the length an IP packet declares, if it is a
// well-formed IPv4 or IPv6 packet that fits in b (the rest is padding).
func innerPacketSize(b []byte) (int, bool) {
	if len(b) < 1 {
		return 0, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 || int(b[0]&0x0f)*4 < 20 {
			return 0, false
		}
		n := int(binary.BigEndian.Uint16(b[2:4]))
		if n < int(b[0]&0x0f)*4 || n > len(b) {
			return 0, false
		}
		return n, true
	case 6:
		if len(b) < 40 {
			return 0, false
		}
		n := 40 + int(binary.BigEndian.Uint16(b[4:6]))
		if n > len(b) {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// writeTUN hands decrypted packets (each at offset headroom) to the kernel.
func (d *Device) writeTUN(bufs [][]byte) {
	d.tunWriteMu.Lock()
	n, err := d.tun.Write(bufs, headroom)
	d.tunWriteMu.Unlock()
	if err != nil {
		if lost := len(bufs) - n; lost > 0 {
			d.counters.dropN(dropTUNWrite, lost)
		}
		if !d.isClosed() {
			d.logs.tunWrite.logf(d, time.Now(), "tun write: %v", err)
		}
	}
}

// pause sleeps for dur unless the device closes first; it reports whether
// the device is still running.
func (d *Device) pause(dur time.Duration) bool {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-d.closed:
		return false
	case <-t.C:
		return true
	}
}
