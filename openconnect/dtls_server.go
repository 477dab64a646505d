package openconnect

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/transport/udp"
)

// DTLS on the server: one UDP socket for every client, read in batches by
// one goroutine that tells the clients apart by source. A datagram from a
// source with no DTLS conversation yet must be a ClientHello whose
// session_id is the App-ID a CONNECT answer gave out; it picks the
// session, and so the key (PSK-NEGOTIATE: the session's TLS exporter).
// Anything else from an unknown source is dropped and counted.
//
// pion/dtls does the handshake, over a per-source PacketConn this file
// feeds. Once it completes, ptun's own record layer (dtls_record.go) takes
// epoch 1 over (dtls_fast.go): application data is opened in place by
// the socket's reader and delivered from there, and the session's writer
// seals bursts of records and sends each burst with one sendmmsg. pion
// never reads application data: records that arrive before the takeover
// wait for it. What pion still reads (handshake retransmissions, alerts)
// and writes (a retransmitted last flight, alerts) goes on through it, and
// what it writes at epoch 1 is sealed again with the record layer's
// sequence numbers, so that no two records share a nonce.

// dtlsHandshakeTimeout bounds a DTLS handshake.
const dtlsHandshakeTimeout = 10 * time.Second

// maxDTLSPeers bounds the sources with a DTLS conversation at once.
const maxDTLSPeers = 8192

// maxHeldRecords bounds a peer's application data records that arrived
// before the takeover (beyond it they are dropped, as the wire may).
const maxHeldRecords = 32

// dtlsSuites are the PSK suites pion offers a GnuTLS client that asks for
// PSK-NEGOTIATE; the record layer knows both.
var dtlsSuites = []dtls.CipherSuiteID{
	dtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
	dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256,
}

type dtlsServer struct {
	srv  *Server
	pc   net.PacketConn
	sock dtlsSocket

	mu     sync.Mutex
	peers  map[netip.AddrPort]*dtlsPeer
	closed bool
}

func newDTLSServer(srv *Server, pc net.PacketConn) *dtlsServer {
	return &dtlsServer{srv: srv, pc: pc, sock: newDTLSSocket(pc, srv.cfg.Logf), peers: map[netip.AddrPort]*dtlsPeer{}}
}

func (ds *dtlsServer) close() {
	ds.mu.Lock()
	ds.closed = true
	peers := ds.peers
	ds.peers = map[netip.AddrPort]*dtlsPeer{}
	ds.mu.Unlock()
	ds.sock.Close()
	for _, p := range peers {
		p.Close()
	}
}

// run reads the socket until it closes.
func (ds *dtlsServer) run() {
	bufs := make([][]byte, udp.BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, transport.MaxDatagramSize)
	}
	sizes := make([]int, udp.BatchSize)
	eps := make([]transport.Endpoint, udp.BatchSize)
	for {
		n, err := ds.sock.Receive(bufs, sizes, eps)
		if err != nil {
			if ds.srv.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // no spinning on a persistent error
			continue
		}
		now := time.Now().UnixNano()
		for i := range n {
			ds.datagram(bufs[i][:sizes[i]], eps[i], now)
		}
	}
}

// datagram handles one datagram. d is the reader's buffer: it may be
// changed (decrypted in place) but not kept.
func (ds *dtlsServer) datagram(d []byte, ep transport.Endpoint, now int64) {
	ds.mu.Lock()
	p := ds.peers[ep.Remote]
	ds.mu.Unlock()
	if p != nil {
		p.receive(d, now)
		return
	}
	ss := ds.sessionFor(d)
	if ss == nil {
		ds.srv.stats.count(ReasonDTLSUnknown)
		return
	}
	p = ds.newPeer(ep)
	if p == nil {
		ds.srv.stats.count(ReasonDTLSUnknown)
		return
	}
	p.push(d)
	ds.srv.wg.Go(func() { ds.handshake(p, ss) })
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

func (ds *dtlsServer) newPeer(ep transport.Endpoint) *dtlsPeer {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.closed || len(ds.peers) >= maxDTLSPeers {
		return nil
	}
	p := &dtlsPeer{
		ds: ds, ep: ep, addr: net.UDPAddrFromAddrPort(ep.Remote),
		in: make(chan []byte, 256), closed: make(chan struct{}),
	}
	ds.peers[ep.Remote] = p
	return p
}

func (ds *dtlsServer) removePeer(p *dtlsPeer) {
	ds.mu.Lock()
	if ds.peers[p.ep.Remote] == p {
		delete(ds.peers, p.ep.Remote)
	}
	ds.mu.Unlock()
}

// stats are the socket's counters.
func (ds *dtlsServer) stats() []metrics.Counter { return ds.sock.Stats() }

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
	dc := &dtlsConn{c: c, peer: p}
	f, err := p.takeOverSend(c, ss, dc)
	if err != nil {
		ds.srv.cfg.Logf("openconnect: DTLS with %v: %v", p.ep.Remote, err)
		ds.srv.stats.count(ReasonDTLSHandshake)
		dc.close()
		return
	}
	if !ss.attachDTLS(dc, appID) {
		dc.close()
		return
	}
	p.takeOverReceive(f)
	ss.watchDTLS(dc)
}

// dtlsAttachWait bounds how long a DTLS handshake that finished before
// its CSTP connection was attached (the client starts it as soon as it
// reads the CONNECT answer) waits for that connection.
const dtlsAttachWait = 2 * time.Second

// attachDTLS makes dc the session's DTLS path once the session has the
// connection whose CONNECT answer gave out the App-ID the client used;
// false if it never does (another connection came, or the session ended).
func (ss *Session) attachDTLS(dc *dtlsConn, appID string) bool {
	timeout := time.NewTimer(dtlsAttachWait)
	defer timeout.Stop()
	for {
		ss.mu.Lock()
		if ss.ended || ss.appID != appID {
			ss.mu.Unlock()
			return false
		}
		if ss.cstp != nil && ss.cstp.appID == appID {
			break
		}
		attached := ss.attached
		ss.mu.Unlock()
		select {
		case <-attached:
		case <-timeout.C:
			return false
		case <-ss.done:
			return false
		}
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

// watchDTLS reads what pion still reads (it returns only alerts, as
// errors, once the record layer took application data over) and declares
// the path dead when nothing came over it for twice its DPD interval.
func (ss *Session) watchDTLS(dc *dtlsConn) {
	defer ss.detachDTLS(dc)
	cfg := &ss.srv.cfg
	dead := 2*cfg.DTLSDPD + 2*time.Second
	buf := make([]byte, 1+MaxPayload)
	for {
		deadline := time.Unix(0, dc.fast.lastRx.Load()).Add(dead)
		if !time.Now().Before(deadline) {
			ss.srv.stats.count(ReasonDeadPeer)
			return
		}
		dc.c.SetReadDeadline(deadline)
		n, err := dc.c.Read(buf)
		switch {
		case err == nil:
			// Not expected (pion is given no application data), but a
			// frame is a frame.
			if dc.fast.frame(buf[:n], time.Now().UnixNano()) {
				return
			}
		case isTimeout(err):
		default:
			return
		}
	}
}

// dtlsConn is a session's DTLS path: pion's connection, its source, and
// the record layer that took it over.
type dtlsConn struct {
	c    *dtls.Conn
	peer *dtlsPeer
	fast *dtlsFast
	once sync.Once
}

func (d *dtlsConn) close() {
	d.once.Do(func() {
		if d.fast != nil {
			d.fast.closed.Store(true)
		}
		d.c.Close() // its close_notify goes out sealed by the record layer
		d.peer.Close()
	})
}

// dtlsPeer is one source: pion's PacketConn (the datagrams the socket's
// reader gave it, and its writes), and, once the record layer took the
// connection over, the way to it.
type dtlsPeer struct {
	ds   *dtlsServer
	ep   transport.Endpoint // the source, and the local address it wrote to
	addr net.Addr           // ep.Remote, for pion
	in   chan []byte

	// fast is set once the record layer takes received application data
	// over; mu guards held and the moment fast is set.
	fast atomic.Pointer[dtlsFast]
	mu   sync.Mutex
	held [][]byte // application data records that came before fast

	// wmu serializes pion's writes; tx, set under it, is the record layer
	// that seals them again once it took over.
	wmu sync.Mutex
	tx  *dtlsFast

	once   sync.Once
	closed chan struct{}

	dmu      sync.Mutex
	deadline time.Time
}

// takeOverSend derives the record layer from pion's state and, from now
// on, seals pion's epoch-1 writes again with its sequence numbers. pion's
// writes wait meanwhile, so the sequence numbers it took before are all
// below the snapshot's and any it takes after go out sealed again.
func (p *dtlsPeer) takeOverSend(c *dtls.Conn, ss *Session, dc *dtlsConn) (*dtlsFast, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	ps, err := pionStateOf(c)
	if err != nil {
		return nil, err
	}
	rl, err := newRecordLayer(ps)
	if err != nil {
		return nil, err
	}
	f := newDTLSFast(p, ss, dc, rl)
	dc.fast = f
	p.tx = f
	return f, nil
}

// takeOverReceive hands received application data to f, first the
// records that waited for it.
func (p *dtlsPeer) takeOverReceive(f *dtlsFast) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now().UnixNano()
	for _, rec := range p.held {
		f.record(rec, now)
	}
	p.held = nil
	p.fast.Store(f)
}

// receive handles a datagram from the peer.
func (p *dtlsPeer) receive(d []byte, now int64) {
	if f := p.fast.Load(); f != nil {
		f.receive(d, now)
		return
	}
	p.mu.Lock()
	if f := p.fast.Load(); f != nil {
		p.mu.Unlock()
		f.receive(d, now)
		return
	}
	defer p.mu.Unlock()
	// Before the takeover: application data waits for it, pion gets the
	// rest.
	if !hasApplicationData(d) {
		p.push(d)
		return
	}
	var rest []byte
	for len(d) > 0 {
		rec, r, ok := nextRecord(d)
		if !ok {
			p.ds.srv.stats.count(ReasonDTLSBadRecord)
			break
		}
		d = r
		if !isApplicationData(rec) {
			rest = append(rest, rec...)
			continue
		}
		if len(p.held) >= maxHeldRecords {
			p.ds.srv.stats.count(ReasonQueueFull)
			continue
		}
		p.held = append(p.held, append([]byte(nil), rec...))
	}
	if len(rest) > 0 {
		p.pushOwned(rest)
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
func (p *dtlsPeer) push(d []byte) { p.pushOwned(append([]byte(nil), d...)) }

func (p *dtlsPeer) pushOwned(b []byte) {
	select {
	case p.in <- b:
	default:
		// pion is behind: a datagram lost, as on the wire.
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
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if p.tx != nil {
		return len(b), p.tx.sendPion(b)
	}
	return len(b), p.ds.sock.Send([][]byte{b}, p.ep)
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
