package openconnect

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/wg/replay"
)

// A DTLS conversation, on either end, runs over a dtlsLink: ptun's own
// socket reader gives it every datagram from the peer, and pion/dtls,
// which does the handshake, reads and writes through it as its
// PacketConn. Once the handshake is done the record layer (dtlsRecords,
// keyed by dtls_record.go from pion's state) takes epoch 1 over:
//
//   - Received application data is opened in place on the reader's
//     goroutine and its frame handed to the end's handler, with no
//     channel or goroutine between. pion never reads application data:
//     records that arrive before the takeover are held for it. What pion
//     still reads (handshake retransmissions, alerts) goes on to it.
//   - The end's writer seals bursts of records into a dtlsBatch and sends
//     each with one sendmmsg. What pion still writes at epoch 1 (a
//     retransmitted last flight, alerts) is opened and sealed again with
//     the record layer's sequence numbers, so no two records share one.

// maxHeldRecords bounds the application data records that arrive before
// the takeover (beyond it they are dropped, as the wire may).
const maxHeldRecords = 32

// dtlsFrameHandler is an end's handling of the frames that come over DTLS.
type dtlsFrameHandler interface {
	// dtlsFrame handles one frame (the type byte, then the payload). b is
	// the reader's buffer: it may be changed (a DPD request answered in
	// place) but not kept. It runs on the socket's reader goroutine.
	dtlsFrame(r *dtlsRecords, b []byte, now int64)
}

// dtlsLink is one DTLS conversation's datagrams between ptun's socket and
// pion (see above).
type dtlsLink struct {
	sock    dtlsSocket
	ep      transport.Endpoint // the peer (and the local address it wrote to)
	addr    net.Addr           // ep.Remote, for pion
	local   net.Addr
	count   func(reason string) // counts drops by reason
	onClose func()
	in      chan []byte // datagrams for pion

	// records is set once the record layer takes received application
	// data over; mu guards held and the moment records is set.
	records atomic.Pointer[dtlsRecords]
	mu      sync.Mutex
	held    [][]byte // application data records that came before it

	// wmu serializes pion's writes; tx, set under it, is the record layer
	// that seals them again once it took over.
	wmu sync.Mutex
	tx  *dtlsRecords

	once   sync.Once
	closed chan struct{}

	dmu      sync.Mutex
	deadline time.Time
}

func newDTLSLink(sock dtlsSocket, ep transport.Endpoint, local net.Addr, count func(string), onClose func()) *dtlsLink {
	return &dtlsLink{
		sock: sock, ep: ep, addr: net.UDPAddrFromAddrPort(ep.Remote), local: local, count: count, onClose: onClose,
		in: make(chan []byte, 256), closed: make(chan struct{}),
	}
}

// takeOverSend derives the record layer from pion's state, with h for the
// frames it will open and goFn to run what the reader must not wait for,
// and from now on seals pion's epoch-1 writes again. pion's writes wait
// meanwhile, so the sequence numbers it took before are all below the
// snapshot's and any it takes after go out sealed again.
func (l *dtlsLink) takeOverSend(c *dtls.Conn, h dtlsFrameHandler, goFn func(func())) (*dtlsRecords, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	ps, err := pionStateOf(c)
	if err != nil {
		return nil, err
	}
	rl, err := newRecordLayer(ps)
	if err != nil {
		return nil, err
	}
	r := &dtlsRecords{link: l, rl: rl, h: h, goFn: goFn}
	r.lastRx.Store(time.Now().UnixNano())
	// Every number below what pion accepted counts as seen (Finished, and
	// any handshake retransmission): the window goes on from there.
	for seq := rl.rxNext - min(rl.rxNext, replay.WindowSize); seq < rl.rxNext; seq++ {
		r.window.ValidateCounter(seq, maxRecordSeq+1)
	}
	l.tx = r
	return r, nil
}

// takeOverReceive hands received application data to r, first the
// records that waited for it.
func (l *dtlsLink) takeOverReceive(r *dtlsRecords) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now().UnixNano()
	for _, rec := range l.held {
		r.record(rec, now)
	}
	l.held = nil
	l.records.Store(r)
}

// receive handles a datagram from the peer. d is the reader's buffer.
func (l *dtlsLink) receive(d []byte, now int64) {
	if r := l.records.Load(); r != nil {
		r.receive(d, now)
		return
	}
	l.mu.Lock()
	if r := l.records.Load(); r != nil {
		l.mu.Unlock()
		r.receive(d, now)
		return
	}
	defer l.mu.Unlock()
	// Before the takeover: application data waits for it, pion gets the
	// rest.
	if !hasApplicationData(d) {
		l.push(d)
		return
	}
	var rest []byte
	for len(d) > 0 {
		rec, r, ok := nextRecord(d)
		if !ok {
			l.count(ReasonDTLSBadRecord)
			break
		}
		d = r
		if !isApplicationData(rec) {
			rest = append(rest, rec...)
			continue
		}
		if len(l.held) >= maxHeldRecords {
			l.count(ReasonQueueFull)
			continue
		}
		l.held = append(l.held, append([]byte(nil), rec...))
	}
	if len(rest) > 0 {
		l.pushOwned(rest)
	}
}

// isApplicationData reports whether rec is an epoch-1 application data
// record: the record layer's.
func isApplicationData(rec []byte) bool {
	return rec[0] == recordApplicationData && recordEpoch(rec) == 1
}

func hasApplicationData(d []byte) bool {
	for len(d) > 0 {
		rec, r, ok := nextRecord(d)
		if !ok {
			return false
		}
		if isApplicationData(rec) {
			return true
		}
		d = r
	}
	return false
}

// push queues a copy of d for pion.
func (l *dtlsLink) push(d []byte) { l.pushOwned(append([]byte(nil), d...)) }

func (l *dtlsLink) pushOwned(b []byte) {
	select {
	case l.in <- b:
	default:
		// pion is behind: a datagram lost, as on the wire.
		l.count(ReasonQueueFull)
	}
}

func (l *dtlsLink) ReadFrom(b []byte) (int, net.Addr, error) {
	l.dmu.Lock()
	dl := l.deadline
	l.dmu.Unlock()
	var timeout <-chan time.Time
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			return 0, nil, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case d := <-l.in:
		return copy(b, d), l.addr, nil
	case <-l.closed:
		return 0, nil, net.ErrClosed
	case <-timeout:
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (l *dtlsLink) WriteTo(b []byte, _ net.Addr) (int, error) {
	select {
	case <-l.closed:
		return 0, net.ErrClosed
	default:
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.tx != nil {
		return len(b), l.tx.sendPion(b)
	}
	return len(b), l.sock.Send([][]byte{b}, l.ep)
}

func (l *dtlsLink) Close() error {
	l.once.Do(func() {
		close(l.closed)
		if l.onClose != nil {
			l.onClose()
		}
	})
	return nil
}

func (l *dtlsLink) LocalAddr() net.Addr { return l.local }

func (l *dtlsLink) SetDeadline(t time.Time) error { return l.SetReadDeadline(t) }

func (l *dtlsLink) SetReadDeadline(t time.Time) error {
	l.dmu.Lock()
	l.deadline = t
	l.dmu.Unlock()
	return nil
}

func (l *dtlsLink) SetWriteDeadline(time.Time) error { return nil }

// dtlsRecords is a DTLS conversation's data plane once the record layer
// took it over from pion.
type dtlsRecords struct {
	link *dtlsLink
	rl   *recordLayer
	h    dtlsFrameHandler
	goFn func(func()) // runs what the reader must not wait for

	// window belongs to the socket's reader (and, before the link's
	// records is set, to the takeover under the link's mu).
	window replay.Filter

	lastRx atomic.Int64 // unix nanoseconds of the last authentic record
	closed atomic.Bool  // the path was closed: send nothing more on it

	// sendMu serializes sealing and sending, so that records leave in
	// sequence order; it guards rl.tx, rl.txOpen, ctl and ctlRecs, and
	// the batches being sealed.
	sendMu  sync.Mutex
	ctl     []byte // a control record (a DPD answer, a keepalive)
	ctlRecs [1][]byte
	// ctlPending is set while a control record waits for the writer's
	// burst to end (the reader does not wait for it).
	ctlPending atomic.Bool
}

// receive handles a datagram from the peer: its application data records
// are opened here, anything else goes to pion. d is the reader's buffer.
func (r *dtlsRecords) receive(d []byte, now int64) {
	var rest []byte
	for len(d) > 0 {
		rec, next, ok := nextRecord(d)
		if !ok {
			r.link.count(ReasonDTLSBadRecord)
			break
		}
		d = next
		if !isApplicationData(rec) {
			rest = append(rest, rec...)
			continue
		}
		r.record(rec, now)
	}
	if len(rest) > 0 {
		r.link.pushOwned(rest)
	}
}

// record opens one application data record and hands its frame on. A
// record that does not open, or was seen before, is dropped and counted;
// the path goes on.
func (r *dtlsRecords) record(rec []byte, now int64) {
	_, seq, pt, err := r.rl.rx.open(rec)
	switch err {
	case nil:
	case errRecordMAC:
		r.link.count(ReasonDTLSBadMAC)
		return
	default:
		r.link.count(ReasonDTLSBadRecord)
		return
	}
	if !r.window.ValidateCounter(seq, maxRecordSeq+1) {
		r.link.count(ReasonDTLSReplay)
		return
	}
	if len(pt) == 0 {
		r.link.count(ReasonDTLSBadRecord)
		return
	}
	r.lastRx.Store(now)
	r.h.dtlsFrame(r, pt, now)
}

// sendControl seals and sends one frame (b, the type byte and payload, is
// copied). It does not wait for a writer's burst: a second frame while one
// waits is dropped and counted.
func (r *dtlsRecords) sendControl(b []byte) {
	if r.sendMu.TryLock() {
		r.sendOneLocked(nil, b)
		r.sendMu.Unlock()
		return
	}
	if !r.ctlPending.CompareAndSwap(false, true) {
		r.link.count(ReasonQueueFull)
		return
	}
	c := append([]byte(nil), b...)
	r.goFn(func() {
		r.sendMu.Lock()
		r.sendOneLocked(nil, c)
		r.sendMu.Unlock()
		r.ctlPending.Store(false)
	})
}

// sendFrame seals and sends one frame, waiting for a writer's burst.
func (r *dtlsRecords) sendFrame(typ byte, payload []byte) error {
	h := [1]byte{typ}
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	return r.sendOneLocked(h[:], payload)
}

// sendOneLocked seals head and payload into one record and sends it.
func (r *dtlsRecords) sendOneLocked(head, payload []byte) error {
	if r.closed.Load() {
		return net.ErrClosed
	}
	rec, start := r.rl.tx.begin(r.ctl[:0])
	rec = append(append(rec, head...), payload...)
	rec, err := r.rl.tx.finish(rec, start, recordApplicationData)
	r.ctl = rec[:0]
	if err != nil {
		return err
	}
	r.ctlRecs[0] = rec
	err = r.link.sock.Send(r.ctlRecs[:], r.link.ep)
	r.ctlRecs[0] = nil
	if err != nil {
		r.link.count(ReasonWriteFailed)
	}
	return err
}

// sendPion sends a datagram pion wrote after the takeover: its epoch-0
// records as they are, its epoch-1 records opened and sealed again with
// the record layer's next sequence numbers. Called with the link's wmu.
func (r *dtlsRecords) sendPion(b []byte) error {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	out := make([]byte, 0, len(b)+64)
	for len(b) > 0 {
		rec, next, ok := nextRecord(b)
		if !ok {
			break
		}
		b = next
		if recordEpoch(rec) == 0 {
			out = append(out, rec...)
			continue
		}
		typ, _, pt, err := r.rl.txOpen.open(append([]byte(nil), rec...))
		if err != nil {
			continue // not pion's after all: nothing to send
		}
		var start int
		out, start = r.rl.tx.begin(out)
		out = append(out, pt...)
		if out, err = r.rl.tx.finish(out, start, typ); err != nil {
			return err
		}
	}
	if len(out) == 0 {
		return nil
	}
	return r.link.sock.Send([][]byte{out}, r.link.ep)
}

// dtlsBatch is a writer's burst of records: one arena they are sealed
// into, and the records in it.
type dtlsBatch struct {
	arena []byte
	recs  [][]byte
	bytes uint64 // the payload bytes of recs
}

// dtlsBatchBytes fits a full burst of packets of the usual MTUs; a burst
// of bigger ones is sent in parts.
const dtlsBatchBytes = udp.BatchSize * (smallBuf + 1 + maxRecordOverhead)

// dtlsBatches are shared by every writer: one per writer in a burst, not
// one per session.
var dtlsBatches = sync.Pool{New: func() any {
	return &dtlsBatch{arena: make([]byte, 0, dtlsBatchBytes), recs: make([][]byte, 0, udp.BatchSize)}
}}

// fits reports whether a frame of n payload bytes fits in the burst.
func (bt *dtlsBatch) fits(n int) bool {
	return len(bt.recs) < cap(bt.recs) && cap(bt.arena)-len(bt.arena) >= 1+n+maxRecordOverhead
}

// seal adds a frame to the burst; the caller holds sendMu and checked
// that it fits.
func (r *dtlsRecords) seal(bt *dtlsBatch, typ byte, payload []byte) error {
	start := len(bt.arena)
	arena, err := r.rl.tx.appendFrame(bt.arena, typ, payload)
	if err != nil {
		return err
	}
	bt.arena = arena
	bt.recs = append(bt.recs, arena[start:])
	bt.bytes += uint64(len(payload))
	return nil
}

// flush sends the burst with one sendmmsg (for up to udp.BatchSize
// records) and empties it, returning what it held; the caller holds
// sendMu. A refusal is counted (here as write_failed, by the socket by
// errno).
func (r *dtlsRecords) flush(bt *dtlsBatch) (packets int, bytes uint64, err error) {
	if len(bt.recs) == 0 {
		return 0, 0, nil
	}
	packets, bytes = len(bt.recs), bt.bytes
	if err = r.link.sock.Send(bt.recs, r.link.ep); err != nil {
		r.link.count(ReasonWriteFailed)
	}
	clear(bt.recs)
	bt.recs, bt.arena, bt.bytes = bt.recs[:0], bt.arena[:0], 0
	return packets, bytes, err
}
