package openconnect

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
)

// Session errors: why a ClientSession ended (Err, and what ReadPacket and
// WritePacket return after the end).
var (
	// ErrSessionClosed: Close ended the session (and logged out).
	ErrSessionClosed = errors.New("openconnect: session closed")
	// ErrServerDisconnect: the server sent DISCONNECT (a kick, or its
	// shutdown). The cookie may still work: Connect again, else Login.
	ErrServerDisconnect = errors.New("openconnect: the server disconnected the session")
	// ErrServerTerminate: the server sent TERMINATE (it is shutting
	// down). Connect again later.
	ErrServerTerminate = errors.New("openconnect: the server terminated the session")
	// ErrDeadPeer: nothing came over CSTP for twice the DPD interval.
	// Connect again with the cookie.
	ErrDeadPeer = errors.New("openconnect: the server stopped answering (dead peer detection)")
	// ErrPacketTooBig: WritePacket was given more than the tunnel's MTU.
	// The packet is not sent; the session goes on.
	ErrPacketTooBig = errors.New("openconnect: packet larger than the tunnel MTU")
)

// Paths, as Path returns them.
const (
	PathCSTP = "cstp"
	PathDTLS = "dtls"
)

// Session bounds.
const (
	// rxQueueLen bounds the inner packets received and not yet read by
	// ReadPacket; the channels' readers wait (TCP, and the UDP socket
	// buffer, push back) while it is full.
	rxQueueLen = 64
	// closeTimeout bounds how long Close waits to send its DISCONNECT
	// and for the server to hang up.
	closeTimeout = 2 * time.Second
	// logoutReason follows DisconnectLogout in Close's DISCONNECT.
	logoutReason = "Client logout"
)

// counter indexes the session's event counts.
type counter int

const (
	cCSTPTxPackets counter = iota
	cCSTPTxBytes
	cCSTPRxPackets
	cCSTPRxBytes
	cDTLSTxPackets
	cDTLSTxBytes
	cDTLSRxPackets
	cDTLSRxBytes
	cDPDSent
	cDPDAnswered
	cKeepalivesSent
	cDTLSHandshakes
	cDTLSFailures
	cDTLSDead
	cDropTooBig
	cDropShortBuffer
	cDropBadType
	cDropTooBigOut
	cDropDTLSWrite
	cDropClosed
	cDropDTLSBadRecord
	cDropDTLSBadMAC
	cDropDTLSReplay
	cDropDTLSQueueFull
	numCounters
)

var counterNames = [numCounters]string{
	"cstp_tx_packets", "cstp_tx_bytes", "cstp_rx_packets", "cstp_rx_bytes",
	"dtls_tx_packets", "dtls_tx_bytes", "dtls_rx_packets", "dtls_rx_bytes",
	"dpd_sent", "dpd_answered", "keepalives_sent",
	"dtls_handshakes", "dtls_handshake_failures", "dtls_dead",
	// Drops, each with its reason:
	"drop_rx_too_big",      // a received packet larger than the tunnel MTU
	"drop_rx_short_buffer", // ReadPacket's buffer was smaller than the packet
	"drop_rx_bad_type",     // a frame of a type this client does not speak (compressed, unknown)
	"drop_tx_too_big",      // WritePacket was given more than the MTU
	"drop_dtls_write",      // a DTLS send failed; the packet went over CSTP instead (not lost)
	"drop_rx_closed",       // received while the session was closing
	"drop_dtls_bad_record", // a malformed DTLS record, or a frame of no type
	"drop_dtls_bad_mac",    // a DTLS record that failed authentication
	"drop_dtls_replay",     // a DTLS record seen before, or too old for the replay window
	"drop_dtls_queue_full", // a DTLS datagram for the handshake while it was behind, or data before it finished
}

// countReason counts a drop the DTLS record layer reports by its reason.
func (s *ClientSession) countReason(reason string) {
	switch reason {
	case ReasonDTLSBadRecord:
		s.count(cDropDTLSBadRecord, 1)
	case ReasonDTLSBadMAC:
		s.count(cDropDTLSBadMAC, 1)
	case ReasonDTLSReplay:
		s.count(cDropDTLSReplay, 1)
	case ReasonQueueFull:
		s.count(cDropDTLSQueueFull, 1)
	}
	// ReasonWriteFailed: the writer counts what it sends over CSTP instead.
}

// rxBuf is one received inner packet waiting for ReadPacket.
type rxBuf struct {
	b []byte
	n int
}

// A ClientSession is an open tunnel: inner IP packets in and out, over
// CSTP and, once it is up, DTLS. Its methods are safe for concurrent use;
// ReadPacket is meant for one reader and WritePacket may be called from
// several goroutines.
type ClientSession struct {
	cfg    ClientConfig
	tunnel Tunnel
	cookie string
	epoch  time.Time // timestamps below are nanoseconds since

	raw  net.Conn      // under the TLS connection, for deadlines and the final close
	cstp io.Writer     // the TLS connection: one Write per frame, one record per Write
	br   *bufio.Reader // reads the TLS connection (it may hold frames read with the CONNECT answer)

	// cstpMu guards cstpBuf and serialises CSTP writes: one Write, one
	// record, per frame.
	cstpMu  sync.Mutex
	cstpBuf []byte
	// batch is under the TLS connection (nil: no batching): see
	// BeginBatch.
	batch *batchConn

	dtls     atomic.Pointer[dtlsPath] // nil while DTLS is not up
	kick     chan struct{}            // wakes the timers when DTLS comes up (capacity 1)
	dtlsPend *dtlsPath                // set by startDTLS, handed to the handshake goroutine

	cstpLastRx, cstpLastTx, cstpLastDPD atomic.Int64

	rx   chan *rxBuf // received packets, in order per channel
	free chan *rxBuf // buffers to reuse
	nbuf atomic.Int32
	bufN int // size of a receive buffer: the tunnel MTU

	counters [numCounters]atomic.Uint64

	done    chan struct{}   // closed when the session ends
	ctx     context.Context // cancelled when the session ends
	cancel  context.CancelFunc
	endOnce sync.Once
	err     error // why it ended; written once before done closes

	closeOnce sync.Once
	cstpDone  chan struct{} // closed when the CSTP reader returns
	wg        sync.WaitGroup
}

// newSession makes the session of a tunnel over the CSTP connection: raw is
// the transport under it, w and br its two directions.
func newClientSession(cfg ClientConfig, raw net.Conn, w io.Writer, br *bufio.Reader, t Tunnel, cookie string) *ClientSession {
	s := &ClientSession{
		cfg: cfg, tunnel: t, cookie: cookie, epoch: time.Now(),
		raw: raw, cstp: w, br: br,
		cstpBuf:  make([]byte, HeaderLen+MaxPayload),
		rx:       make(chan *rxBuf, rxQueueLen),
		free:     make(chan *rxBuf, rxQueueLen),
		bufN:     t.MTU,
		done:     make(chan struct{}),
		cstpDone: make(chan struct{}),
		kick:     make(chan struct{}, 1),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	now := s.now()
	s.cstpLastRx.Store(now)
	s.cstpLastTx.Store(now)
	s.cstpLastDPD.Store(now)
	return s
}

// start runs the session's goroutines: the CSTP reader and the timers.
func (s *ClientSession) start() {
	s.wg.Add(2)
	go s.readCSTP()
	go s.timers()
	if d := s.dtlsPend; d != nil {
		s.dtlsPend = nil
		s.wg.Add(1)
		go s.handshakeDTLS(d)
	}
	var addrs []string
	for _, a := range []netip.Prefix{s.tunnel.Address4, s.tunnel.Address6} {
		if a.IsValid() {
			addrs = append(addrs, a.String())
		}
	}
	s.cfg.logf("openconnect: tunnel up: address %v, MTU %d, DPD %d s, keepalive %d s, DTLS offered %v",
		addrs, s.tunnel.MTU, s.tunnel.DPD, s.tunnel.Keepalive, s.tunnel.DTLS != nil)
}

func (s *ClientSession) now() int64 { return int64(time.Since(s.epoch)) }

func (s *ClientSession) count(c counter, n uint64) { s.counters[c].Add(n) }

// Tunnel returns what the server pushed: addresses, DNS, routes, MTU.
func (s *ClientSession) Tunnel() Tunnel { return s.tunnel }

// Cookie returns the session cookie, for a later Connect.
func (s *ClientSession) Cookie() string { return s.cookie }

// Path returns the path outgoing packets take now: PathDTLS or PathCSTP.
func (s *ClientSession) Path() string {
	if s.dtls.Load() != nil {
		return PathDTLS
	}
	return PathCSTP
}

// Done is closed when the session has ended; Err then says why.
func (s *ClientSession) Done() <-chan struct{} { return s.done }

// Err returns why the session ended, or nil while it runs.
func (s *ClientSession) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Stats implements metrics.Reporter: packets and bytes per path and
// direction (inner packets only), DPD and keepalive counts, DTLS events,
// and drops by reason.
func (s *ClientSession) Stats() []metrics.Counter {
	out := make([]metrics.Counter, numCounters)
	for i := range out {
		out[i] = metrics.Counter{Name: counterNames[i], Value: s.counters[i].Load()}
	}
	return out
}

// end records why the session ended and wakes everything that waits on
// it. With hangUp it also closes the connections (the session failed);
// Close closes them itself after its DISCONNECT.
func (s *ClientSession) end(err error, hangUp bool) bool {
	first := false
	s.endOnce.Do(func() {
		first = true
		s.err = err
		close(s.done)
		s.cancel()
		if hangUp {
			s.raw.Close()
			if d := s.dtls.Swap(nil); d != nil {
				d.close()
			}
		}
		if !errors.Is(err, ErrSessionClosed) {
			s.cfg.logf("openconnect: session ended: %v", err)
		}
	})
	return first
}

// ReadPacket reads the next inner IP packet into b and returns its
// length. It blocks until one arrives or the session ends, then returns
// the session's error (after the packets already received). A packet
// larger than b is dropped and io.ErrShortBuffer returned; a b of the
// tunnel's MTU always fits.
//
// Received packets wait in a queue of rxQueueLen; while it is full the
// channels are not read, so the server's TCP (and the UDP socket buffer)
// push back. A caller that stops reading for twice the DPD interval
// ends the session as a dead peer.
func (s *ClientSession) ReadPacket(b []byte) (int, error) {
	var rb *rxBuf
	select {
	case rb = <-s.rx:
	default:
		select {
		case rb = <-s.rx:
		case <-s.done:
			select {
			case rb = <-s.rx:
			default:
				return 0, s.err
			}
		}
	}
	n := rb.n
	if n > len(b) {
		s.count(cDropShortBuffer, 1)
		s.release(rb)
		return 0, io.ErrShortBuffer
	}
	copy(b, rb.b[:n])
	s.release(rb)
	return n, nil
}

func (s *ClientSession) release(rb *rxBuf) {
	select {
	case s.free <- rb:
	default:
	}
}

// deliver queues a received data packet for ReadPacket, waiting while
// the queue is full. The payload is copied.
func (s *ClientSession) deliver(p []byte) {
	if len(p) > s.bufN {
		s.count(cDropTooBig, 1)
		return
	}
	var rb *rxBuf
	select {
	case rb = <-s.free:
	default:
		if s.nbuf.Add(1) <= rxQueueLen {
			rb = &rxBuf{b: make([]byte, s.bufN)}
		} else {
			s.nbuf.Add(-1)
			select {
			case rb = <-s.free:
			case <-s.done:
				s.count(cDropClosed, 1)
				return
			}
		}
	}
	rb.n = copy(rb.b, p)
	select {
	case s.rx <- rb:
	case <-s.done:
		s.count(cDropClosed, 1)
	}
}

// WritePacket sends one inner IP packet: over DTLS when it is up, else
// over CSTP. p is not kept. It blocks while the connection's send buffer
// is full, and returns the session's error once it has ended.
func (s *ClientSession) WritePacket(p []byte) error {
	select {
	case <-s.done:
		return s.err
	default:
	}
	if len(p) > s.tunnel.MTU {
		s.count(cDropTooBigOut, 1)
		return fmt.Errorf("%w (%d > %d)", ErrPacketTooBig, len(p), s.tunnel.MTU)
	}
	if d := s.dtls.Load(); d != nil {
		err := d.write(TypeData, p)
		if err == nil {
			s.count(cDTLSTxPackets, 1)
			s.count(cDTLSTxBytes, uint64(len(p)))
			return nil
		}
		s.count(cDropDTLSWrite, 1)
		s.dtlsDown(d, fmt.Sprintf("send: %v", err))
	}
	if err := s.writeCSTP(TypeData, p); err != nil {
		return err
	}
	s.count(cCSTPTxPackets, 1)
	s.count(cCSTPTxBytes, uint64(len(p)))
	return nil
}

// BeginBatch starts a burst: the CSTP frames written until EndBatch (by
// any goroutine) go out in one write to the connection, each still in a
// TLS record of its own, rather than one write per packet. An engine that
// read a batch of packets from its TUN device brackets their WritePacket
// calls with it.
func (s *ClientSession) BeginBatch() {
	if s.batch != nil {
		s.batch.begin()
	}
}

// EndBatch sends what the burst collected. A failed write ends the
// session (its error is returned).
func (s *ClientSession) EndBatch() error {
	if s.batch == nil {
		return nil
	}
	if err := s.batch.end(); err != nil {
		select {
		case <-s.done:
			return s.err
		default:
		}
		s.end(fmt.Errorf("openconnect: CSTP send: %w", err), true)
		return s.Err()
	}
	return nil
}

// WritePackets sends inner IP packets as WritePacket does, those that take
// DTLS sealed into bursts of one sendmmsg each. Packets larger than the
// tunnel's MTU are not sent (and counted); tooBig says how many. The
// packets are not kept.
func (s *ClientSession) WritePackets(pkts [][]byte) (tooBig int, err error) {
	select {
	case <-s.done:
		return 0, s.err
	default:
	}
	d := s.dtls.Load()
	if d == nil {
		for _, p := range pkts {
			if err := s.WritePacket(p); errors.Is(err, ErrPacketTooBig) {
				tooBig++
			} else if err != nil {
				return tooBig, err
			}
		}
		return tooBig, nil
	}
	fit := pkts
	for i, p := range pkts {
		if len(p) > s.tunnel.MTU {
			// Rare: copy the ones that fit aside.
			tooBig++
			s.count(cDropTooBigOut, 1)
			if tooBig == 1 {
				fit = append([][]byte(nil), pkts[:i]...)
			}
			continue
		}
		if tooBig > 0 {
			fit = append(fit, p)
		}
	}
	sent, err := d.writePackets(fit)
	if err == nil {
		return tooBig, nil
	}
	s.count(cDropDTLSWrite, uint64(len(fit)-sent))
	s.dtlsDown(d, fmt.Sprintf("send: %v", err))
	for _, p := range fit[sent:] {
		if err := s.writeCSTP(TypeData, p); err != nil {
			return tooBig, err
		}
		s.count(cCSTPTxPackets, 1)
		s.count(cCSTPTxBytes, uint64(len(p)))
	}
	return tooBig, nil
}

// writeCSTP sends one frame in one TLS record. A failed write ends the
// session.
func (s *ClientSession) writeCSTP(typ byte, payload []byte) error {
	s.cstpMu.Lock()
	b := AppendFrame(s.cstpBuf[:0], typ, payload)
	_, err := s.cstp.Write(b)
	s.cstpMu.Unlock()
	if err != nil {
		select {
		case <-s.done:
			return s.err
		default:
		}
		err = fmt.Errorf("openconnect: CSTP send: %w", err)
		s.end(err, true)
		return s.Err()
	}
	s.cstpLastTx.Store(s.now())
	return nil
}

// readCSTP reads the server's frames until the connection ends.
func (s *ClientSession) readCSTP() {
	defer s.wg.Done()
	defer close(s.cstpDone)
	fr := NewFrameReader(s.br)
	for {
		typ, payload, err := fr.Next()
		if err != nil {
			select {
			case <-s.done: // closing: the server hung up as asked
			default:
				if errors.Is(err, io.EOF) {
					err = errors.New("the server closed the connection")
				}
				s.end(fmt.Errorf("openconnect: CSTP: %w", err), true)
			}
			return
		}
		s.cstpLastRx.Store(s.now())
		if !s.control(typ, payload, false) {
			continue
		}
		select {
		case <-s.done:
			s.count(cDropClosed, 1)
			continue
		default:
		}
		s.count(cCSTPRxPackets, 1)
		s.count(cCSTPRxBytes, uint64(len(payload)))
		s.deliver(payload)
	}
}

// control handles a frame from either channel and reports whether it is
// data to deliver.
func (s *ClientSession) control(typ byte, payload []byte, overDTLS bool) (data bool) {
	switch typ {
	case TypeData:
		return true
	case TypeDPDRequest:
		// The same payload, byte for byte, on the channel it came on:
		// the peer's MTU probes depend on it.
		if overDTLS {
			if d := s.dtls.Load(); d != nil {
				if err := d.write(TypeDPDReply, payload); err != nil {
					s.dtlsDown(d, fmt.Sprintf("send: %v", err))
				}
			}
		} else {
			s.writeCSTP(TypeDPDReply, payload)
		}
		s.count(cDPDAnswered, 1)
	case TypeDPDReply, TypeKeepalive:
		// Liveness only, recorded by the caller.
	case TypeDisconnect:
		s.end(fmt.Errorf("%w: %q", ErrServerDisconnect, sanitizeReason(payload)), true)
	case TypeTerminate:
		s.end(ErrServerTerminate, true)
	default:
		// Compressed frames included: none was negotiated.
		s.count(cDropBadType, 1)
	}
	return false
}

// timers sends keepalives and DPD probes and declares a silent channel
// dead. It sleeps until the next thing due.
func (s *ClientSession) timers() {
	defer s.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := s.tick(s.now())
		t.Reset(next)
		select {
		case <-t.C:
		case <-s.kick:
		case <-s.done:
			return
		}
	}
}

// due folds the time until an event into next.
func due(next *time.Duration, at, now int64) {
	if d := time.Duration(at - now); d < *next {
		*next = max(d, 10*time.Millisecond)
	}
}

// tick does what is due at now on both channels and returns how long to
// sleep.
func (s *ClientSession) tick(now int64) time.Duration {
	next := time.Hour
	if dpd := int64(s.tunnel.DPD) * int64(time.Second); dpd > 0 {
		lastRx := s.cstpLastRx.Load()
		switch {
		case now-lastRx >= 2*dpd:
			s.end(ErrDeadPeer, true)
			return next
		case now-lastRx >= dpd && now-s.cstpLastDPD.Load() >= dpd/2:
			s.cstpLastDPD.Store(now)
			s.writeCSTP(TypeDPDRequest, nil)
			s.count(cDPDSent, 1)
		}
		if now-lastRx >= dpd {
			due(&next, s.cstpLastDPD.Load()+dpd/2, now)
		} else {
			due(&next, lastRx+dpd, now)
		}
		due(&next, lastRx+2*dpd, now)
	}
	if ka := int64(s.tunnel.Keepalive) * int64(time.Second); ka > 0 {
		if now-s.cstpLastTx.Load() >= ka {
			s.writeCSTP(TypeKeepalive, nil)
			s.count(cKeepalivesSent, 1)
		}
		due(&next, s.cstpLastTx.Load()+ka, now)
	}
	if d := s.dtls.Load(); d != nil {
		d.tick(s, now, &next)
	}
	return next
}

// Close ends the session and logs out: it sends DISCONNECT with the
// logout reason, waits (boundedly) for the server to hang up, and closes
// both channels. Goroutines of the session have all returned when it
// returns. Close is idempotent; ending a session that already ended only
// releases it.
func (s *ClientSession) Close() error {
	s.closeOnce.Do(func() {
		if s.end(ErrSessionClosed, false) {
			deadline := time.Now().Add(closeTimeout)
			s.raw.SetWriteDeadline(deadline)
			if d := s.dtls.Swap(nil); d != nil {
				d.close()
			}
			reason := append([]byte{DisconnectLogout}, logoutReason...)
			s.cstpMu.Lock()
			_, err := s.cstp.Write(AppendFrame(s.cstpBuf[:0], TypeDisconnect, reason))
			s.cstpMu.Unlock()
			if err == nil {
				if cw, ok := s.cstp.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				// ocserv logs the user out and hangs up; leaving first
				// could reset the connection before it read the BYE.
				s.raw.SetReadDeadline(deadline)
				<-s.cstpDone
			}
		}
		s.raw.Close()
	})
	s.wg.Wait()
	return nil
}
