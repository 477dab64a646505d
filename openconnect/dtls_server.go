package openconnect

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"golang.org/x/sys/cpu"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/transport/udp"
)

// DTLS on the server: one UDP socket for every client, read in batches by
// one goroutine that tells the clients apart by source. A datagram from a
// source with no DTLS conversation yet must be a ClientHello whose
// session_id is the App-ID a CONNECT answer gave out; it picks the
// session, and so the key (PSK-NEGOTIATE: the session's TLS exporter).
// Anything else from an unknown source is dropped and counted. Each
// source's conversation runs over a dtlsLink (dtls_link.go): pion does the
// handshake, then the record layer takes the data over; the session's
// writer sends bursts of records with one sendmmsg each (sendDTLS).

// dtlsHandshakeTimeout bounds a DTLS handshake.
const dtlsHandshakeTimeout = 10 * time.Second

// maxDTLSPeers bounds the sources with a DTLS conversation at once.
const maxDTLSPeers = 8192

// dtlsSuites are the PSK suites pion offers a GnuTLS client that asks for
// PSK-NEGOTIATE (see suitesFor); the record layer knows both.
var dtlsSuites = []dtls.CipherSuiteID{
	dtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
	dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256,
}

type dtlsServer struct {
	srv  *Server
	pc   net.PacketConn
	sock dtlsSocket

	mu     sync.Mutex
	peers  map[netip.AddrPort]*dtlsLink
	closed bool
}

func newDTLSServer(srv *Server, pc net.PacketConn) *dtlsServer {
	return &dtlsServer{srv: srv, pc: pc, sock: newDTLSSocket(pc, srv.cfg.Logf), peers: map[netip.AddrPort]*dtlsLink{}}
}

func (ds *dtlsServer) close() {
	ds.mu.Lock()
	ds.closed = true
	peers := ds.peers
	ds.peers = map[netip.AddrPort]*dtlsLink{}
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
	suites := suitesFor(d)
	p.push(d)
	ds.srv.wg.Go(func() { ds.handshake(p, ss, suites) })
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

// ClientHelloCipherSuites returns the cipher suites, in the client's order
// of preference, of a datagram that starts with a DTLS record holding the
// start of a ClientHello (ok is false if the list is not all in it).
func ClientHelloCipherSuites(d []byte) (suites []uint16, ok bool) {
	id, ok := ClientHelloSessionID(d)
	if !ok {
		return nil, false
	}
	// After the session_id: the cookie, then the suites.
	at := 13 + 12 + 2 + 32 + 1 + len(id)
	end := min(len(d), 13+int(binary.BigEndian.Uint16(d[11:13])))
	if at >= end {
		return nil, false
	}
	at += 1 + int(d[at])
	if at+2 > end {
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(d[at:]))
	at += 2
	if n%2 != 0 || at+n > end {
		return nil, false
	}
	for i := at; i < at+n; i += 2 {
		suites = append(suites, binary.BigEndian.Uint16(d[i:]))
	}
	return suites, true
}

// suitesFor picks the suites to offer a client, from its ClientHello:
// pion takes the client's first choice among them, but a client whose
// first choice of AEAD is AES-GCM (GnuTLS asks for AES-256-GCM, which
// pion lacks, then ChaCha20-Poly1305, then AES-128-GCM) is given
// AES-128-GCM when this host has AES hardware: on this project's VMs
// GnuTLS seals 3.5 GB/s with AES-128-GCM and 0.37 with ChaCha20-Poly1305,
// and the client is the busier end.
func suitesFor(hello []byte) []dtls.CipherSuiteID {
	if !hasAESGCMHardware {
		return dtlsSuites
	}
	suites, ok := ClientHelloCipherSuites(hello)
	if !ok {
		return dtlsSuites
	}
	for _, id := range suites {
		switch aeadOf(id) {
		case "chacha20":
			return dtlsSuites
		case "aes-gcm":
			if slices.Contains(suites, uint16(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256)) {
				return []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_GCM_SHA256}
			}
			return dtlsSuites
		}
	}
	return dtlsSuites
}

// aeadOf names the AEAD of the (PSK) suites that have one ptun knows of.
func aeadOf(id uint16) string {
	switch id {
	case 0x00a8, 0x00a9, 0x00aa, 0x00ab, 0x00ac, 0x00ad, 0xd001, 0xd002: // (DHE-, RSA-, ECDHE-)PSK AES-GCM
		return "aes-gcm"
	case 0xccab, 0xccac, 0xccad, 0xccae: // (ECDHE-, DHE-, RSA-)PSK ChaCha20-Poly1305
		return "chacha20"
	}
	return ""
}

// hasAESGCMHardware reports AES and carry-less multiplication
// instructions, which make Go's AES-GCM fast and constant-time.
var hasAESGCMHardware = cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ || cpu.ARM64.HasAES && cpu.ARM64.HasPMULL

func (ds *dtlsServer) newPeer(ep transport.Endpoint) *dtlsLink {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.closed || len(ds.peers) >= maxDTLSPeers {
		return nil
	}
	var l *dtlsLink
	l = newDTLSLink(ds.sock, ep, ds.pc.LocalAddr(), ds.srv.stats.count, func() { ds.removePeer(l) })
	ds.peers[ep.Remote] = l
	return l
}

func (ds *dtlsServer) removePeer(l *dtlsLink) {
	ds.mu.Lock()
	if ds.peers[l.ep.Remote] == l {
		delete(ds.peers, l.ep.Remote)
	}
	ds.mu.Unlock()
}

// stats are the socket's counters.
func (ds *dtlsServer) stats() []metrics.Counter { return ds.sock.Stats() }

func (ds *dtlsServer) handshake(p *dtlsLink, ss *Session, suites []dtls.CipherSuiteID) {
	ss.mu.Lock()
	psk, appID := ss.psk, ss.appID
	ss.mu.Unlock()
	cfg := &dtls.Config{
		PSK:                  func([]byte) ([]byte, error) { return psk, nil },
		CipherSuites:         suites,
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
	dc := &dtlsConn{c: c, link: p, ss: ss}
	r, err := p.takeOverSend(c, dc, ds.srv.goFn)
	if err != nil {
		ds.srv.cfg.Logf("openconnect: DTLS with %v: %v", p.ep.Remote, err)
		ds.srv.stats.count(ReasonDTLSHandshake)
		dc.close()
		return
	}
	dc.records.Store(r)
	if !ss.attachDTLS(dc, appID) {
		dc.close()
		return
	}
	p.takeOverReceive(r)
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
	// The writer takes the new path once the client has used it.
	ss.dtlsActive.Store(false)
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
		deadline := time.Unix(0, dc.records.Load().lastRx.Load()).Add(dead)
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
			if n > 0 {
				dc.dtlsFrame(dc.records.Load(), buf[:n], time.Now().UnixNano())
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
	c       *dtls.Conn
	link    *dtlsLink
	ss      *Session
	records atomic.Pointer[dtlsRecords] // set before the path is attached
	once    sync.Once
}

func (d *dtlsConn) close() {
	d.once.Do(func() {
		if r := d.records.Load(); r != nil {
			r.closed.Store(true)
		}
		d.c.Close() // its close_notify goes out sealed by the record layer
		d.link.Close()
	})
}

// dtlsFrame implements dtlsFrameHandler: the frames a client sends.
func (d *dtlsConn) dtlsFrame(r *dtlsRecords, b []byte, now int64) {
	ss := d.ss
	ss.lastRx.Store(now)
	switch b[0] {
	case TypeData:
		ss.dtlsUp()
		ss.DTLS.RxPackets.Add(1)
		ss.DTLS.RxBytes.Add(uint64(len(b) - 1))
		ss.srv.cfg.Handler.Deliver(ss, b[1:])
	case TypeDPDRequest:
		// The client probes the path's MTU with these: the answer
		// must be the same size, byte for byte.
		ss.dtlsUp()
		b[0] = TypeDPDReply
		r.sendControl(b)
	case TypeDPDReply, TypeKeepalive:
		ss.dtlsUp()
	case TypeDisconnect:
		logout := len(b) > 1 && b[1] == DisconnectLogout
		ss.srv.wg.Go(func() {
			if logout {
				ss.end(TypeDisconnect, "logged out")
			}
			ss.detachDTLS(d)
		})
	default:
		ss.srv.stats.count(ReasonDTLSBadRecord)
	}
}

// dtlsUp marks DTLS as the path to send on.
func (ss *Session) dtlsUp() {
	if !ss.dtlsActive.Load() {
		ss.dtlsActive.Store(true)
	}
}

// sendDTLS sends b and whatever else is queued on DTLS: each packet is
// sealed into a burst, each burst of up to udp.BatchSize records goes out
// with one sendmmsg. If the path closed meanwhile, the packet in hand goes
// on CSTP; if the socket refuses a burst (counted there by errno and here
// as write_failed), DTLS is left until the client sends on it again.
func (ss *Session) sendDTLS(d *dtlsConn, b []byte) {
	r := d.records.Load()
	bt := dtlsBatches.Get().(*dtlsBatch)
	failed := false
	flush := func() {
		n, bytes, err := r.flush(bt)
		if err != nil {
			failed = true
			return
		}
		ss.DTLS.TxPackets.Add(uint64(n))
		ss.DTLS.TxBytes.Add(bytes)
	}
	r.sendMu.Lock()
	for !r.closed.Load() {
		if !bt.fits(len(b)) {
			if flush(); failed {
				break
			}
		}
		if r.seal(bt, TypeData, b) != nil {
			break
		}
		ss.release(b)
		b = nil
		select {
		case b = <-ss.queue:
			continue
		default:
		}
		break
	}
	flush()
	r.sendMu.Unlock()
	dtlsBatches.Put(bt)
	if b == nil && !failed {
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
	ss.release(b)
}

// SendBatch sends packets to the client as Send does, except that while
// DTLS is the path and nothing of the session waits in its queue, it
// seals them at once on the caller's goroutine and sends them in bursts
// of one sendmmsg each: no copy, no hand-off to the writer. It may then
// wait, as the writer would, while the DTLS socket's send buffer is full
// (boundedly: see transport/udp), which holds the caller back rather than
// dropping. pkts are not kept. Otherwise (CSTP, or packets already
// queued, which it must not overtake) they are queued.
func (ss *Session) SendBatch(pkts [][]byte) {
	if !ss.sendNow(pkts) {
		for _, p := range pkts {
			ss.Send(p)
		}
	}
}

func (ss *Session) sendNow(pkts [][]byte) bool {
	if !ss.dtlsActive.Load() || ss.queued.Load() != 0 {
		return false
	}
	ss.mu.Lock()
	d := ss.dtls
	ss.mu.Unlock()
	if d == nil {
		return false
	}
	r := d.records.Load()
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	if r.closed.Load() || ss.queued.Load() != 0 {
		return false
	}
	bt := dtlsBatches.Get().(*dtlsBatch)
	defer dtlsBatches.Put(bt)
	flush := func() bool {
		n, bytes, err := r.flush(bt)
		if err != nil {
			ss.dtlsActive.Store(false) // until the client sends on DTLS again
			return false
		}
		ss.DTLS.TxPackets.Add(uint64(n))
		ss.DTLS.TxBytes.Add(bytes)
		return true
	}
	for i, p := range pkts {
		if !bt.fits(len(p)) && !flush() || r.seal(bt, TypeData, p) != nil {
			// The rest take the queue (and so CSTP, if DTLS failed).
			r.sendMu.Unlock()
			for _, p := range pkts[i:] {
				ss.Send(p)
			}
			r.sendMu.Lock()
			return true
		}
	}
	flush()
	return true
}
