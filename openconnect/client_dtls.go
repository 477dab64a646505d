package openconnect

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/logging"
)

// The client's DTLS channel (PSK-NEGOTIATE): a DTLS 1.2 handshake over UDP
// to the CSTP server's address at X-DTLS-Port, keyed by the CSTP TLS
// session's exporter, with the server's App-ID as the ClientHello
// session_id (the server finds the session by it). Over DTLS a frame is
// the type byte and the payload, one per record.
//
// Outgoing packets take DTLS while it is up and CSTP before and after;
// incoming ones are taken from both. DTLS has its own DPD and keepalive;
// a DTLS channel silent for twice its DPD is closed and the session goes
// on over CSTP (no new handshake: reconnect the session to try again).

// dtlsCipherSuites are the PSK suites offered. pion has no
// TLS_PSK_WITH_AES_256_GCM_SHA384 (GnuTLS's first choice), so ocserv must
// not pin DTLS to the TLS cipher (match-tls-dtls-ciphers).
var dtlsCipherSuites = []dtls.CipherSuiteID{
	dtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
	dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256,
}

// pskIdentity is the PSK identity openconnect sends; servers ignore it.
var pskIdentity = []byte("psk")

// dtlsPath is an established (or establishing) DTLS channel.
type dtlsPath struct {
	pc     net.Conn // the connected UDP socket
	conn   *dtls.Conn
	psk    []byte
	appID  []byte
	dpd    int64 // nanoseconds; 0: none
	ka     int64
	closed sync.Once

	// mu guards buf and serialises writes.
	mu  sync.Mutex
	buf []byte

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
	s.dtlsPend = &dtlsPath{
		pc: pc, psk: psk, appID: p.AppID,
		dpd: int64(p.DPD) * int64(time.Second), ka: int64(p.Keepalive) * int64(time.Second),
		buf: make([]byte, 1+MaxPayload),
	}
	return nil
}

// connectedPacketConn is the net.PacketConn pion wants, over a connected
// UDP socket (which the kernel keeps to the server's datagrams).
type connectedPacketConn struct{ net.Conn }

func (c connectedPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := c.Read(b)
	return n, c.RemoteAddr(), err
}

func (c connectedPacketConn) WriteTo(b []byte, _ net.Addr) (int, error) { return c.Write(b) }

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
	conn, err := dtls.ClientWithOptions(connectedPacketConn{d.pc}, d.pc.RemoteAddr(),
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
	if st, ok := conn.ConnectionState(); ok {
		s.cfg.logf("openconnect: DTLS up with %v (%v)", d.pc.RemoteAddr(), dtls.CipherSuiteID(st.CipherSuiteID))
	}
	s.wg.Add(1)
	go s.readDTLS(d)
	select {
	case s.kick <- struct{}{}: // the DTLS timers start now
	default:
	}
	// A first probe: the server sends over DTLS once it has heard from
	// the client there, and the answer proves the path.
	if err := d.write(s, TypeDPDRequest, nil); err == nil {
		d.lastDPD.Store(s.now())
		s.count(cDPDSent, 1)
	}
}

// readDTLS reads the server's DTLS records until the channel closes.
func (s *ClientSession) readDTLS(d *dtlsPath) {
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
		if n == 0 {
			continue
		}
		d.lastRx.Store(s.now())
		typ, payload := buf[0], buf[1:n]
		if !s.control(typ, payload, true) {
			continue
		}
		select {
		case <-s.done:
			s.count(cDropClosed, 1)
			continue
		default:
		}
		s.count(cDTLSRxPackets, 1)
		s.count(cDTLSRxBytes, uint64(len(payload)))
		s.deliver(payload)
	}
}

// write sends one frame over DTLS.
func (d *dtlsPath) write(s *ClientSession, typ byte, payload []byte) error {
	if len(payload) > MaxPayload {
		return ErrFrameTooBig
	}
	d.mu.Lock()
	d.buf[0] = typ
	n := copy(d.buf[1:], payload)
	_, err := d.conn.Write(d.buf[:1+n])
	d.mu.Unlock()
	if err == nil {
		d.lastTx.Store(s.now())
	}
	return err
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
			if err := d.write(s, TypeDPDRequest, nil); err != nil {
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
			if err := d.write(s, TypeKeepalive, nil); err != nil {
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
		if d.conn != nil {
			d.conn.Close()
		}
		d.pc.Close()
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
