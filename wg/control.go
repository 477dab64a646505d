package wg

import (
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/wg/wire"
)

// controlQueueLen bounds the control messages waiting for the control
// routine; beyond it they are dropped and counted (drop_control_send_full).
const controlQueueLen = 1024

// controlKind is what the control routine is asked to do.
type controlKind uint8

const (
	controlDatagram  controlKind = iota // send a handshake message or cookie reply (buf[:n])
	controlKeepalive                    // send the peer's staged packets, or else a keepalive
	controlFlush                        // send the peer's staged packets, if it has any
	controlGiveUp                       // discard the peer's staged packets: its handshake gave up
	controlBarrier                      // close done (tests: everything queued before is done)
)

// controlMsg is one request to the control routine.
type controlMsg struct {
	kind controlKind
	peer *Peer              // nil for a cookie reply
	ep   transport.Endpoint // a cookie reply's destination; a peer's messages go to its endpoint when sent
	n    int
	buf  [wire.InitiationSize]byte // the largest control datagram
	done chan struct{}             // controlBarrier
}

// Control messages (handshake messages, cookie replies, keepalives and the
// staged packets a new session releases) are sent by one routine of their
// own. The routines that decide to send them (the handshake routine, the
// receive routines, the TUN reader, the timers) only queue them, without
// blocking: a full send buffer (transport.Send blocks) then stalls only this
// routine, never the data path in either direction or the handshake
// routine. A full queue drops and counts.

// queueControl hands m to the control routine, or drops and counts it.
func (d *Device) queueControl(m *controlMsg) bool {
	select {
	case d.control <- *m:
		return true
	default:
		d.counters.drop(dropControlSendFull)
		return false
	}
}

// sendControl queues the datagram b for p (or, p nil, for ep).
func (d *Device) sendControl(p *Peer, ep transport.Endpoint, b []byte) {
	m := controlMsg{kind: controlDatagram, peer: p, ep: ep}
	m.n = copy(m.buf[:], b)
	d.queueControl(&m)
}

// requestControl asks the control routine to do kind for p, unless such a
// request is already waiting.
func (d *Device) requestControl(p *Peer, kind controlKind) {
	bit := uint32(1) << kind
	if p.controlPending.Or(bit)&bit != 0 {
		return
	}
	m := controlMsg{kind: kind, peer: p}
	if !d.queueControl(&m) {
		p.controlPending.And(^bit)
	}
}

// syncControl waits until the control routine has done everything queued
// before the call, or the device closed. For tests.
func (d *Device) syncControl() {
	m := controlMsg{kind: controlBarrier, done: make(chan struct{})}
	select {
	case d.control <- m:
	case <-d.closed:
		return
	}
	select {
	case <-m.done:
	case <-d.closed:
	}
}

// routineControl sends the control messages in the order they were queued.
func (d *Device) routineControl() {
	defer d.routines.Done()
	for {
		select {
		case <-d.closed:
			return
		case m := <-d.control:
			d.doControl(&m)
		}
	}
}

func (d *Device) doControl(m *controlMsg) {
	p := m.peer
	if p != nil && m.kind != controlDatagram {
		p.controlPending.And(^(uint32(1) << m.kind))
	}
	switch m.kind {
	case controlDatagram:
		b := m.buf[:m.n]
		if p == nil { // a cookie reply
			if d.sendToEndpoint([][]byte{b}, m.ep) == nil {
				d.counters.cookieRepliesSent.Add(1)
			}
			return
		}
		if p.removed.Load() {
			return
		}
		if d.sendTo(p, [][]byte{b}) == nil {
			p.lastSent.Store(time.Now().UnixNano())
			p.txBytes.Add(uint64(len(b)))
		}
	case controlKeepalive:
		d.sendKeepalive(p)
	case controlFlush:
		d.flushStaged(p)
	case controlGiveUp:
		p.sendMu.Lock()
		p.discardStagedLocked()
		p.sendMu.Unlock()
	case controlBarrier:
		close(m.done)
	}
}

// logLimiter lets one line through per interval and counts the rest, for
// errors that can repeat on every batch (a link that is down). Each call
// site has its own.
type logLimiter struct {
	next       atomic.Int64  // Unix nanoseconds before which lines are suppressed
	suppressed atomic.Uint64 // lines suppressed since the last one let through
}

// logInterval is the least time between two lines of one logLimiter.
const logInterval = time.Second

// logf logs through d's logger unless a line went through less than
// logInterval before now; the next line that goes through says how many
// were suppressed.
func (l *logLimiter) logf(d *Device, now time.Time, format string, args ...any) {
	ns := now.UnixNano()
	next := l.next.Load()
	if ns < next || !l.next.CompareAndSwap(next, ns+int64(logInterval)) {
		l.suppressed.Add(1)
		return
	}
	if n := l.suppressed.Swap(0); n > 0 {
		format += " (and %d more like it)"
		args = append(args, n)
	}
	d.logf(format, args...)
}
