package openconnect

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/wg/replay"
)

// dtlsFast is a DTLS path's data plane once the record layer took it over
// from pion: the socket's reader opens the client's records in place and
// hands their frames on (receive, record, frame), and the session's
// writer seals bursts of records and sends each with one sendmmsg
// (Session.sendDTLS).
type dtlsFast struct {
	p  *dtlsPeer
	ss *Session
	dc *dtlsConn
	rl *recordLayer

	// The receive side belongs to the socket's reader (and, before fast is
	// set on the peer, to the takeover under the peer's mu).
	window replay.Filter

	lastRx atomic.Int64 // unix nanoseconds of the last authentic record
	closed atomic.Bool  // the path was closed: send nothing more on it

	// sendMu serializes sealing and sending, so that records leave in
	// sequence order; it guards rl.tx, rl.txOpen, ctl and ctlRecs.
	sendMu  sync.Mutex
	ctl     []byte // a control record (a DPD answer)
	ctlRecs [1][]byte
	// ctlPending is set while a control record waits for the writer's
	// burst to end (the reader does not wait for it).
	ctlPending atomic.Bool
}

func newDTLSFast(p *dtlsPeer, ss *Session, dc *dtlsConn, rl *recordLayer) *dtlsFast {
	f := &dtlsFast{p: p, ss: ss, dc: dc, rl: rl}
	f.lastRx.Store(time.Now().UnixNano())
	// Every number below what pion accepted counts as seen (Finished, and
	// any handshake retransmission): the window goes on from there.
	for seq := rl.rxNext - min(rl.rxNext, replay.WindowSize); seq < rl.rxNext; seq++ {
		f.window.ValidateCounter(seq, maxRecordSeq+1)
	}
	return f
}

// receive handles a datagram from the client: its application data
// records are opened here, anything else goes to pion. d is the reader's
// buffer.
func (f *dtlsFast) receive(d []byte, now int64) {
	var rest []byte
	for len(d) > 0 {
		rec, r, ok := nextRecord(d)
		if !ok {
			f.ss.srv.stats.count(ReasonDTLSBadRecord)
			break
		}
		d = r
		if !isApplicationData(rec) {
			rest = append(rest, rec...)
			continue
		}
		f.record(rec, now)
	}
	if len(rest) > 0 {
		f.p.pushOwned(rest)
	}
}

// record opens one application data record and handles its frame. A
// record that does not open, or was seen before, is dropped and counted;
// the path goes on.
func (f *dtlsFast) record(rec []byte, now int64) {
	st := &f.ss.srv.stats
	_, seq, pt, err := f.rl.rx.open(rec)
	switch err {
	case nil:
	case errRecordMAC:
		st.count(ReasonDTLSBadMAC)
		return
	default:
		st.count(ReasonDTLSBadRecord)
		return
	}
	if !f.window.ValidateCounter(seq, maxRecordSeq+1) {
		st.count(ReasonDTLSReplay)
		return
	}
	f.frame(pt, now)
}

// frame handles a frame that came over DTLS: the type byte, then the
// payload. It reports whether the path ended (a DISCONNECT).
func (f *dtlsFast) frame(b []byte, now int64) (ended bool) {
	ss := f.ss
	if len(b) == 0 {
		ss.srv.stats.count(ReasonDTLSBadRecord)
		return false
	}
	f.lastRx.Store(now)
	ss.lastRx.Store(now)
	switch b[0] {
	case TypeData:
		f.active()
		ss.DTLS.RxPackets.Add(1)
		ss.DTLS.RxBytes.Add(uint64(len(b) - 1))
		ss.srv.cfg.Handler.Deliver(ss, b[1:])
	case TypeDPDRequest:
		// The client probes the path's MTU with these: the answer
		// must be the same size, byte for byte.
		f.active()
		b[0] = TypeDPDReply
		f.sendControl(b)
	case TypeDPDReply, TypeKeepalive:
		f.active()
	case TypeDisconnect:
		logout := len(b) > 1 && b[1] == DisconnectLogout
		ss.srv.wg.Go(func() {
			if logout {
				ss.end(TypeDisconnect, "logged out")
			}
			ss.detachDTLS(f.dc)
		})
		return true
	default:
		ss.srv.stats.count(ReasonDTLSBadRecord)
	}
	return false
}

// active marks DTLS as the path to send on.
func (f *dtlsFast) active() {
	if !f.ss.dtlsActive.Load() {
		f.ss.dtlsActive.Store(true)
	}
}

// sendControl seals and sends one frame (b is copied). It does not wait
// for a writer's burst: a second frame while one waits is dropped and
// counted.
func (f *dtlsFast) sendControl(b []byte) {
	if f.sendMu.TryLock() {
		f.sendControlLocked(b)
		f.sendMu.Unlock()
		return
	}
	if !f.ctlPending.CompareAndSwap(false, true) {
		f.ss.srv.stats.count(ReasonQueueFull)
		return
	}
	c := append([]byte(nil), b...)
	f.ss.srv.wg.Go(func() {
		f.sendMu.Lock()
		f.sendControlLocked(c)
		f.sendMu.Unlock()
		f.ctlPending.Store(false)
	})
}

func (f *dtlsFast) sendControlLocked(b []byte) {
	if f.closed.Load() {
		return
	}
	rec, start := f.rl.tx.begin(f.ctl[:0])
	rec = append(rec, b...)
	rec, err := f.rl.tx.finish(rec, start, recordApplicationData)
	f.ctl = rec
	if err != nil {
		return
	}
	f.ctlRecs[0] = rec
	if err := f.p.ds.sock.Send(f.ctlRecs[:], f.p.ep); err != nil {
		f.ss.srv.stats.count(ReasonWriteFailed)
	}
	f.ctlRecs[0] = nil
}

// sendPion sends a datagram pion wrote after the takeover: its epoch-0
// records as they are, its epoch-1 records opened and sealed again with
// the record layer's next sequence numbers. Called with the peer's wmu.
func (f *dtlsFast) sendPion(b []byte) error {
	f.sendMu.Lock()
	defer f.sendMu.Unlock()
	out := make([]byte, 0, len(b)+64)
	for len(b) > 0 {
		rec, r, ok := nextRecord(b)
		if !ok {
			break
		}
		b = r
		if recordEpoch(rec) == 0 {
			out = append(out, rec...)
			continue
		}
		typ, _, pt, err := f.rl.txOpen.open(append([]byte(nil), rec...))
		if err != nil {
			continue // not pion's after all: nothing to send
		}
		var start int
		out, start = f.rl.tx.begin(out)
		out = append(out, pt...)
		if out, err = f.rl.tx.finish(out, start, typ); err != nil {
			return err
		}
	}
	if len(out) == 0 {
		return nil
	}
	return f.p.ds.sock.Send([][]byte{out}, f.p.ep)
}

// dtlsBatch is the writer's burst of records: one arena they are sealed
// into, and the records in it.
type dtlsBatch struct {
	arena []byte
	recs  [][]byte
	bytes uint64 // the payload bytes of recs
}

// dtlsBatchBytes fits a full burst of packets of the usual MTUs; a burst
// of bigger ones is sent in parts.
const dtlsBatchBytes = udp.BatchSize * (smallBuf + 1 + maxRecordOverhead)

// dtlsBatches are shared by the sessions' writers: one per writer in a
// burst, not one per session.
var dtlsBatches = sync.Pool{New: func() any {
	return &dtlsBatch{arena: make([]byte, 0, dtlsBatchBytes), recs: make([][]byte, 0, udp.BatchSize)}
}}

// sendDTLS sends b and whatever else is queued on DTLS: each packet is
// sealed into a burst, each burst of up to udp.BatchSize records goes out
// with one sendmmsg. If the path closed meanwhile, the packet in hand goes
// on CSTP; if the socket refuses a burst (counted there by errno and here
// as write_failed), DTLS is left until the client sends on it again.
func (ss *Session) sendDTLS(d *dtlsConn, b []byte) {
	f := d.fast
	bt := dtlsBatches.Get().(*dtlsBatch)
	failed := false
	f.sendMu.Lock()
	for !failed {
		if f.closed.Load() {
			failed = true
			break
		}
		if len(bt.recs) == cap(bt.recs) || cap(bt.arena)-len(bt.arena) < 1+len(b)+maxRecordOverhead {
			if !ss.flushDTLS(f, bt) {
				failed = true
				break
			}
		}
		start := len(bt.arena)
		arena, err := f.rl.tx.appendFrame(bt.arena, TypeData, b)
		if err != nil {
			failed = true
			break
		}
		bt.arena = arena
		bt.recs = append(bt.recs, arena[start:])
		bt.bytes += uint64(len(b))
		putBuf(b)
		b = nil
		select {
		case b = <-ss.queue:
			continue
		default:
		}
		break
	}
	if !ss.flushDTLS(f, bt) {
		failed = true
	}
	f.sendMu.Unlock()
	dtlsBatches.Put(bt)
	if !failed {
		return
	}
	ss.dtlsActive.Store(false)
	if b == nil {
		return
	}
	ss.mu.Lock()
	c := ss.cstp
	ss.mu.Unlock()
	if c != nil {
		ss.sendCSTP(c, b)
		return
	}
	ss.Drops.Add(1)
	ss.srv.stats.count(ReasonWriteFailed)
	putBuf(b)
}

// flushDTLS sends the burst and empties it; false if the socket refused it.
func (ss *Session) flushDTLS(f *dtlsFast, bt *dtlsBatch) bool {
	if len(bt.recs) == 0 {
		return true
	}
	err := f.p.ds.sock.Send(bt.recs, f.p.ep)
	if err == nil {
		ss.DTLS.TxPackets.Add(uint64(len(bt.recs)))
		ss.DTLS.TxBytes.Add(bt.bytes)
	} else {
		ss.srv.stats.count(ReasonWriteFailed)
	}
	clear(bt.recs)
	bt.recs, bt.arena, bt.bytes = bt.recs[:0], bt.arena[:0], 0
	return err == nil
}
