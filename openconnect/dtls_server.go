package openconnect

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/pion/dtls/v3"
)

// DTLS on the server: one UDP socket for every client. A datagram from a
// source with no DTLS session yet must be a ClientHello whose session_id
// is the App-ID a CONNECT answer gave out; it picks the session, and so
// the key (PSK-NEGOTIATE: the session's TLS exporter). Anything else
// from an unknown source is dropped and counted. pion/dtls does the
// handshake and the records, over a per-source PacketConn this file
// feeds.

// dtlsHandshakeTimeout bounds a DTLS handshake.
const dtlsHandshakeTimeout = 10 * time.Second

// maxDTLSPeers bounds the sources with a DTLS conversation at once.
const maxDTLSPeers = 8192

// dtlsSuites are the PSK suites pion offers a GnuTLS client that asks for
// PSK-NEGOTIATE.
var dtlsSuites = []dtls.CipherSuiteID{
	dtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
	dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256,
}

type dtlsServer struct {
	srv *Server
	pc  net.PacketConn

	mu     sync.Mutex
	peers  map[string]*dtlsPeer
	closed bool
}

func newDTLSServer(srv *Server, pc net.PacketConn) *dtlsServer {
	return &dtlsServer{srv: srv, pc: pc, peers: map[string]*dtlsPeer{}}
}

func (ds *dtlsServer) close() {
	ds.mu.Lock()
	ds.closed = true
	peers := ds.peers
	ds.peers = map[string]*dtlsPeer{}
	ds.mu.Unlock()
	ds.pc.Close()
	for _, p := range peers {
		p.Close()
	}
}

func (ds *dtlsServer) run() {
	buf := make([]byte, 65536)
	for {
		n, addr, err := ds.pc.ReadFrom(buf)
		if err != nil {
			if ds.srv.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		key := addr.String()
		ds.mu.Lock()
		p := ds.peers[key]
		ds.mu.Unlock()
		if p != nil {
			p.push(buf[:n])
			continue
		}
		ss := ds.sessionFor(buf[:n])
		if ss == nil {
			ds.srv.stats.count(ReasonDTLSUnknown)
			continue
		}
		p = ds.newPeer(key, addr)
		if p == nil {
			ds.srv.stats.count(ReasonDTLSUnknown)
			continue
		}
		p.push(buf[:n])
		ds.srv.wg.Go(func() { ds.handshake(p, ss) })
	}
}

// sessionFor finds the session a first datagram's ClientHello names.
func (ds *dtlsServer) sessionFor(d []byte) *Session {
	id, ok := ClientHelloSessionID(d)
	if !ok || len(id) == 0 {
		return nil
	}
	s := ds.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byAppID[hex.EncodeToString(id)]
}

// ClientHelloSessionID returns the session_id of a datagram that starts
// with a DTLS record holding the start of a ClientHello.
func ClientHelloSessionID(d []byte) ([]byte, bool) {
	const (
		recordHeader    = 13
		handshakeHeader = 12
		idOffset        = recordHeader + handshakeHeader + 2 + 32
	)
	if len(d) < idOffset+1 || d[0] != 22 || d[recordHeader] != 1 {
		return nil, false
	}
	// The fragment must start the message.
	if d[recordHeader+6] != 0 || d[recordHeader+7] != 0 || d[recordHeader+8] != 0 {
		return nil, false
	}
	n := int(d[idOffset])
	if n > 32 || len(d) < idOffset+1+n {
		return nil, false
	}
	return d[idOffset+1 : idOffset+1+n], true
}

func (ds *dtlsServer) newPeer(key string, addr net.Addr) *dtlsPeer {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.closed || len(ds.peers) >= maxDTLSPeers {
		return nil
	}
	p := &dtlsPeer{ds: ds, key: key, addr: addr, in: make(chan []byte, 256), closed: make(chan struct{})}
	ds.peers[key] = p
	return p
}

func (ds *dtlsServer) removePeer(p *dtlsPeer) {
	ds.mu.Lock()
	if ds.peers[p.key] == p {
		delete(ds.peers, p.key)
	}
	ds.mu.Unlock()
}

func (ds *dtlsServer) handshake(p *dtlsPeer, ss *Session) {
	ss.mu.Lock()
	psk, appID := ss.psk, ss.appID
	ss.mu.Unlock()
	cfg := &dtls.Config{
		PSK:                  func([]byte) ([]byte, error) { return psk, nil },
		CipherSuites:         dtlsSuites,
		ExtendedMasterSecret: dtls.RequestExtendedMasterSecret,
	}
	c, err := dtls.Server(p, p.addr, cfg)
	if err != nil {
		ds.srv.stats.count(ReasonDTLSHandshake)
		p.Close()
		return
	}
	ctx, cancel := context.WithTimeout(ds.srv.ctx, dtlsHandshakeTimeout)
	err = c.HandshakeContext(ctx)
	cancel()
	if err != nil {
		ds.srv.stats.count(ReasonDTLSHandshake)
		c.Close()
		p.Close()
		return
	}
	dc := &dtlsConn{c: c, peer: p, wbuf: make([]byte, 0, smallBuf+1)}
	if !ss.attachDTLS(dc, appID) {
		dc.close()
		return
	}
	ss.readDTLS(dc)
}

// attachDTLS makes dc the session's DTLS path if the session still has
// the connection whose App-ID the client used.
func (ss *Session) attachDTLS(dc *dtlsConn, appID string) bool {
	ss.mu.Lock()
	if ss.ended || ss.cstp == nil || ss.appID != appID {
		ss.mu.Unlock()
		return false
	}
	old := ss.dtls
	ss.dtls = dc
	ss.mu.Unlock()
	if old != nil {
		old.close()
	}
	return true
}

func (ss *Session) detachDTLS(dc *dtlsConn) {
	ss.mu.Lock()
	if ss.dtls == dc {
		ss.dtls = nil
		ss.dtlsActive.Store(false)
	}
	ss.mu.Unlock()
	dc.close()
}

// readDTLS reads the client's DTLS records until the path dies.
func (ss *Session) readDTLS(dc *dtlsConn) {
	defer ss.detachDTLS(dc)
	cfg := &ss.srv.cfg
	buf := make([]byte, 1+MaxPayload)
	for {
		dc.c.SetReadDeadline(time.Now().Add(2*cfg.DTLSDPD + 2*time.Second))
		n, err := dc.c.Read(buf)
		if err != nil {
			if isTimeout(err) {
				ss.srv.stats.count(ReasonDeadPeer)
			}
			return
		}
		if n == 0 {
			ss.srv.stats.count(ReasonDTLSBadRecord)
			continue
		}
		ss.lastRx.Store(time.Now().UnixNano())
		switch buf[0] {
		case TypeData:
			ss.dtlsActive.Store(true)
			ss.DTLS.RxPackets.Add(1)
			ss.DTLS.RxBytes.Add(uint64(n - 1))
			cfg.Handler.Deliver(ss, buf[1:n])
		case TypeDPDRequest:
			// The client probes the path's MTU with these: the answer
			// must be the same size, byte for byte.
			ss.dtlsActive.Store(true)
			buf[0] = TypeDPDReply
			if _, err := dc.c.Write(buf[:n]); err != nil {
				return
			}
		case TypeDPDReply, TypeKeepalive:
			ss.dtlsActive.Store(true)
		case TypeDisconnect:
			if n > 1 && buf[1] == DisconnectLogout {
				ss.end(TypeDisconnect, "logged out")
			}
			return
		default:
			ss.srv.stats.count(ReasonDTLSBadRecord)
		}
	}
}

type dtlsConn struct {
	c    *dtls.Conn
	peer *dtlsPeer
	wbuf []byte // the writer goroutine's
	once sync.Once
}

func (d *dtlsConn) writeData(b []byte) error {
	d.wbuf = append(append(d.wbuf[:0], TypeData), b...)
	_, err := d.c.Write(d.wbuf)
	return err
}

func (d *dtlsConn) close() {
	d.once.Do(func() {
		d.c.Close()
		d.peer.Close()
	})
}

// dtlsPeer is the PacketConn of one source: the datagrams the server's
// socket read from it, and writes to it.
type dtlsPeer struct {
	ds   *dtlsServer
	key  string
	addr net.Addr
	in   chan []byte

	once   sync.Once
	closed chan struct{}

	dmu      sync.Mutex
	deadline time.Time
}

func (p *dtlsPeer) push(d []byte) {
	b := make([]byte, len(d))
	copy(b, d)
	select {
	case p.in <- b:
	default:
		// The peer's reader is behind: a datagram lost, as on the wire.
		p.ds.srv.stats.count(ReasonQueueFull)
	}
}

func (p *dtlsPeer) ReadFrom(b []byte) (int, net.Addr, error) {
	p.dmu.Lock()
	dl := p.deadline
	p.dmu.Unlock()
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
	case d := <-p.in:
		return copy(b, d), p.addr, nil
	case <-p.closed:
		return 0, nil, net.ErrClosed
	case <-timeout:
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (p *dtlsPeer) WriteTo(b []byte, _ net.Addr) (int, error) {
	select {
	case <-p.closed:
		return 0, net.ErrClosed
	default:
	}
	return p.ds.pc.WriteTo(b, p.addr)
}

func (p *dtlsPeer) Close() error {
	p.once.Do(func() {
		close(p.closed)
		p.ds.removePeer(p)
	})
	return nil
}

func (p *dtlsPeer) LocalAddr() net.Addr { return p.ds.pc.LocalAddr() }

func (p *dtlsPeer) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

func (p *dtlsPeer) SetReadDeadline(t time.Time) error {
	p.dmu.Lock()
	p.deadline = t
	p.dmu.Unlock()
	return nil
}

func (p *dtlsPeer) SetWriteDeadline(time.Time) error { return nil }
