package openconnect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/logging"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/transport/udp"
)

// The client's DTLS channel (PSK-NEGOTIATE): a DTLS 1.2 handshake over UDP
// to the CSTP server's address at X-DTLS-Port, keyed by the CSTP TLS
// session's exporter, with the server's App-ID as the ClientHello
// session_id (the server finds the session by it). Over DTLS a frame is
// the type byte and the payload, one per record.
//
// The channel runs over a dtlsLink (dtls_link.go), as the server's do:
// the channel's own reader reads the socket in batches (recvmmsg, for a
// *net.UDPConn) and feeds pion the handshake; once pion is done the record
// layer takes the data over, opens what the server sends in place on that
// reader, and seals what the client sends (WritePackets: a burst per
// sendmmsg).
//
// Outgoing packets take DTLS while it is up and CSTP before and after;
// incoming ones are taken from both. DTLS has its own DPD and keepalive;
// a DTLS channel silent for twice its DPD is closed and the session goes
// on over CSTP (no new handshake: reconnect the session to try again).

// dtlsCipherSuites are the PSK suites offered, AES-128-GCM first where
// this host has AES hardware and ChaCha20-Poly1305 first where it has
// not. pion has no TLS_PSK_WITH_AES_256_GCM_SHA384 (GnuTLS's first
// choice), so ocserv must not pin DTLS to the TLS cipher
// (match-tls-dtls-ciphers).
var dtlsCipherSuites = func() []dtls.CipherSuiteID {
	if hasAESGCMHardware {
		return []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256}
	}
	return []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256}
}()

// pskIdentity is the PSK identity openconnect sends; servers ignore it.
var pskIdentity = []byte("psk")

// dtlsPath is an established (or establishing) DTLS channel.
type dtlsPath struct {
	s      *ClientSession
	pc     net.Conn // the connected UDP socket
	sock   dtlsSocket
	link   *dtlsLink
	conn   *dtls.Conn
	psk    []byte
	appID  []byte
	dpd    int64 // nanoseconds; 0: none
	ka     int64
	closed sync.Once

	records atomic.Pointer[dtlsRecords] // set once the record layer took over

	lastRx, lastTx, lastDPD atomic.Int64
}

// startDTLS dials the DTLS socket (now, while the caller's context, and
// network namespace, are those of Connect); the handshake runs in the
// background once the session starts.
func (s *ClientSession) startDTLS(ctx context.Context, psk []byte) error {
	p := s.tunnel.DTLS
	host, _, err := net.SplitHostPort(s.raw.RemoteAddr().String())
	if err != nil {
		if host, _, err = net.SplitHostPort(s.cfg.Server); err != nil {
			return err
		}
	}
	addr := net.JoinHostPort(host, fmt.Sprint(p.Port))
	dctx, cancel := stepContext(ctx)
	defer cancel()
	pc, err := s.cfg.Dial(dctx, "udp", addr)
	if err != nil {
		return fmt.Errorf("openconnect: DTLS socket to %s: %w", addr, err)
	}
	remote, err := netip.ParseAddrPort(pc.RemoteAddr().String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("openconnect: DTLS socket to %s: %w", addr, err)
	}
	d := &dtlsPath{
		s: s, pc: pc, psk: psk, appID: p.AppID,
		dpd: int64(p.DPD) * int64(time.Second), ka: int64(p.Keepalive) * int64(time.Second),
	}
	d.sock = newConnSocket(pc, s.cfg.logf)
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	d.link = newDTLSLink(d.sock, transport.EndpointFrom(remote), pc.LocalAddr(), s.countReason, nil)
	s.dtlsPend = d
	return nil
}

// goFn runs f on one of the session's goroutines.
func (s *ClientSession) goFn(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// handshakeDTLS runs the DTLS handshake and, once it succeeds, moves the
// outgoing traffic onto it.
func (s *ClientSession) handshakeDTLS(d *dtlsPath) {
	defer s.wg.Done()
	s.count(cDTLSHandshakes, 1)
	fail := func(err error) {
		s.count(cDTLSFailures, 1)
		d.close()
		select {
		case <-s.done:
		default:
			s.cfg.logf("openconnect: DTLS handshake with %v failed, staying on CSTP: %v", d.pc.RemoteAddr(), err)
		}
	}
	s.goFn(func() { d.read() })
	conn, err := dtls.ClientWithOptions(d.link, d.link.addr,
		dtls.WithPSK(func([]byte) ([]byte, error) { return d.psk, nil }),
		dtls.WithPSKIdentityHint(pskIdentity),
		dtls.WithCipherSuites(dtlsCipherSuites...),
		dtls.WithClientHelloMessageHook(func(ch handshake.MessageClientHello) handshake.Message {
			ch.SessionID = d.appID
			return &ch
		}),
		dtls.WithLoggerFactory(pionLogs{s.cfg.logf}),
	)
	if err != nil {
		fail(err)
		return
	}
	d.conn = conn
	// The session's end cancels the handshake.
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DTLSTimeout)
	err = conn.HandshakeContext(ctx)
	cancel()
	if err != nil {
		fail(err)
		return
	}
	r, err := d.link.takeOverSend(conn, d, s.goFn)
	if err != nil {
		fail(err)
		return
	}
	d.records.Store(r)
	d.link.takeOverReceive(r)
	now := s.now()
	d.lastRx.Store(now)
	d.lastTx.Store(now)
	d.lastDPD.Store(now)
	s.dtls.Store(d)
	select {
	case <-s.done:
		// Closed meanwhile; Close may have missed it.
		if s.dtls.CompareAndSwap(d, nil) {
			d.close()
		}
		return
	default:
	}
	s.cfg.logf("openconnect: DTLS up with %v (%v)", d.pc.RemoteAddr(), r.rl.suite)
	s.wg.Add(1)
	go s.watchDTLS(d)
	select {
	case s.kick <- struct{}{}: // the DTLS timers start now
	default:
	}
	// A first probe: the server sends over DTLS once it has heard from
	// the client there, and the answer proves the path.
	if err := d.write(TypeDPDRequest, nil); err == nil {
		d.lastDPD.Store(s.now())
		s.count(cDPDSent, 1)
	}
}

// read reads the DTLS socket until it closes, in batches: the handshake
// goes to pion, then the server's records are opened here (dtlsFrame).
func (d *dtlsPath) read() {
	bufs := make([][]byte, udp.BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, transport.MaxDatagramSize)
	}
	sizes := make([]int, udp.BatchSize)
	eps := make([]transport.Endpoint, udp.BatchSize)
	for {
		n, err := d.sock.Receive(bufs, sizes, eps)
		if err != nil {
			select {
			case <-d.link.closed:
				return
			default:
			}
			if !errors.Is(err, net.ErrClosed) {
				// A connected socket hears of ICMP errors: the server's
				// port is unreachable, say. The channel is over (or the
				// handshake fails at once).
				if d.s.dtls.Load() == d {
					d.s.dtlsDown(d, fmt.Sprintf("receive: %v", err))
				} else {
					d.close()
				}
			}
			return
		}
		now := time.Now().UnixNano()
		for i := range n {
			d.link.receive(bufs[i][:sizes[i]], now)
		}
	}
}

// watchDTLS waits on what pion still reads once the record layer took the
// data over: an alert (close_notify) ends the channel.
func (s *ClientSession) watchDTLS(d *dtlsPath) {
	defer s.wg.Done()
	buf := make([]byte, 1+MaxPayload)
	for {
		n, err := d.conn.Read(buf)
		if err != nil {
			select {
			case <-s.done:
			default:
				s.dtlsDown(d, fmt.Sprintf("receive: %v", err))
			}
			return
		}
		if r := d.records.Load(); n > 0 && r != nil {
			d.dtlsFrame(r, buf[:n], time.Now().UnixNano())
		}
	}
}

// dtlsFrame implements dtlsFrameHandler: the frames the server sends.
func (d *dtlsPath) dtlsFrame(r *dtlsRecords, b []byte, _ int64) {
	s := d.s
	d.lastRx.Store(s.now())
	typ, payload := b[0], b[1:]
	if typ == TypeDPDRequest {
		// The same payload, byte for byte: the server's MTU probes
		// depend on it.
		b[0] = TypeDPDReply
		r.sendControl(b)
		s.count(cDPDAnswered, 1)
		return
	}
	if !s.control(typ, payload, true) {
		return
	}
	select {
	case <-s.done:
		s.count(cDropClosed, 1)
		return
	default:
	}
	s.count(cDTLSRxPackets, 1)
	s.count(cDTLSRxBytes, uint64(len(payload)))
	s.deliver(payload)
}

// write sends one frame over DTLS.
func (d *dtlsPath) write(typ byte, payload []byte) error {
	if len(payload) > MaxPayload {
		return ErrFrameTooBig
	}
	r := d.records.Load()
	if r == nil {
		return net.ErrClosed
	}
	err := r.sendFrame(typ, payload)
	if err == nil {
		d.lastTx.Store(d.s.now())
	}
	return err
}

// writePackets sends data packets over DTLS, sealed into bursts of one
// sendmmsg each; it returns how many went out before a send failed.
func (d *dtlsPath) writePackets(pkts [][]byte) (int, error) {
	r := d.records.Load()
	if r == nil {
		return 0, net.ErrClosed
	}
	bt := dtlsBatches.Get().(*dtlsBatch)
	defer dtlsBatches.Put(bt)
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	sent, start := 0, 0
	var err error
	flush := func(end int) bool {
		var n int
		var bytes uint64
		if n, bytes, err = r.flush(bt); err != nil {
			return false
		}
		if n > 0 {
			d.s.count(cDTLSTxPackets, uint64(n))
			d.s.count(cDTLSTxBytes, bytes)
		}
		sent, start = end, end
		return true
	}
	for i, p := range pkts {
		if r.closed.Load() {
			return start, net.ErrClosed
		}
		if !bt.fits(len(p)) && !flush(i) {
			return start, err
		}
		if err := r.seal(bt, TypeData, p); err != nil {
			return start, err
		}
	}
	if !flush(len(pkts)) {
		return start, err
	}
	d.lastTx.Store(d.s.now())
	return sent, nil
}

// tick does the DTLS channel's DPD and keepalive (see ClientSession.tick).
func (d *dtlsPath) tick(s *ClientSession, now int64, next *time.Duration) {
	if d.dpd > 0 {
		lastRx := d.lastRx.Load()
		switch {
		case now-lastRx >= 2*d.dpd:
			s.dtlsDown(d, fmt.Sprintf("nothing received for %v", time.Duration(now-lastRx).Round(time.Millisecond)))
			return
		case now-lastRx >= d.dpd && now-d.lastDPD.Load() >= d.dpd/2:
			d.lastDPD.Store(now)
			if err := d.write(TypeDPDRequest, nil); err != nil {
				s.dtlsDown(d, fmt.Sprintf("send: %v", err))
				return
			}
			s.count(cDPDSent, 1)
		}
		if now-lastRx >= d.dpd {
			due(next, d.lastDPD.Load()+d.dpd/2, now)
		} else {
			due(next, lastRx+d.dpd, now)
		}
		due(next, lastRx+2*d.dpd, now)
	}
	if d.ka > 0 {
		if now-d.lastTx.Load() >= d.ka {
			if err := d.write(TypeKeepalive, nil); err != nil {
				s.dtlsDown(d, fmt.Sprintf("send: %v", err))
				return
			}
			s.count(cKeepalivesSent, 1)
		}
		due(next, d.lastTx.Load()+d.ka, now)
	}
}

// dtlsDown takes d out of service, if it still is the session's DTLS
// channel: outgoing traffic goes back to CSTP.
func (s *ClientSession) dtlsDown(d *dtlsPath, why string) {
	if !s.dtls.CompareAndSwap(d, nil) {
		return
	}
	s.count(cDTLSDead, 1)
	s.cfg.logf("openconnect: DTLS down (%s), back to CSTP", why)
	d.close()
}

func (d *dtlsPath) close() {
	d.closed.Do(func() {
		if r := d.records.Load(); r != nil {
			r.closed.Store(true)
		}
		if d.conn != nil {
			d.conn.Close() // its close_notify goes out sealed by the record layer
		}
		d.link.Close()
		d.sock.Close()
	})
}

// pionLogs sends pion's warnings and errors to the session's log and
// drops the rest.
type pionLogs struct {
	logf func(format string, args ...any)
}

func (l pionLogs) NewLogger(scope string) logging.LeveledLogger { return pionLogger{l.logf, scope} }

type pionLogger struct {
	logf  func(format string, args ...any)
	scope string
}

func (pionLogger) Trace(string)          {}
func (pionLogger) Tracef(string, ...any) {}
func (pionLogger) Debug(string)          {}
func (pionLogger) Debugf(string, ...any) {}
func (pionLogger) Info(string)           {}
func (pionLogger) Infof(string, ...any)  {}
func (l pionLogger) Warn(msg string)     { l.logf("openconnect: pion %s: %s", l.scope, msg) }
func (l pionLogger) Warnf(format string, args ...any) {
	l.logf("openconnect: pion %s: %s", l.scope, fmt.Sprintf(format, args...))
}
func (l pionLogger) Error(msg string) { l.logf("openconnect: pion %s: %s", l.scope, msg) }
func (l pionLogger) Errorf(format string, args ...any) {
	l.logf("openconnect: pion %s: %s", l.scope, fmt.Sprintf(format, args...))
}
