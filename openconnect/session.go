package openconnect

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
)

// A Session is one logged-in client: it outlives its TLS connections (a
// client that reconnects with its cookie gets the same session and
// addresses) until the client logs out, is revoked, or stays away longer
// than the cookie's lifetime.
type Session struct {
	srv   *Server
	key   [32]byte
	grant *Grant

	queue chan []byte   // packets to send to the client
	frame []byte        // the writer's frame buffer
	done  chan struct{} // closed when the session ends

	mu         sync.Mutex
	cstp       *cstpConn     // nil while the client is away
	attached   chan struct{} // closed (and replaced) when a connection is attached
	dtls       *dtlsConn     // nil without a DTLS path
	appID      string        // hex of the current X-DTLS-App-ID
	psk        []byte        // the current DTLS key
	detachedAt time.Time
	ended      bool
	upCalled   bool

	// queued counts the packets Send queued that the writer has not yet
	// sealed (DTLS: under the records' sendMu), sent or dropped: while it
	// is 0, SendBatch may send on its own without overtaking them.
	queued atomic.Int64

	dtlsActive atomic.Bool  // send on DTLS
	lastRx     atomic.Int64 // unix nanoseconds of the last frame from the client
	started    time.Time

	CSTP, DTLS PathCounters
	Drops      atomic.Uint64 // packets to the client that were dropped (queue full, no path)
}

type cstpConn struct {
	appID  string // the App-ID its CONNECT answer gave out ("" for none)
	tc     *tls.Conn
	bc     *batchConn
	closed chan struct{}
	once   sync.Once
}

func (c *cstpConn) close() {
	c.once.Do(func() {
		close(c.closed)
		c.tc.Close()
	})
}

func newSession(srv *Server, key [32]byte, g *Grant) *Session {
	ss := &Session{
		srv: srv, key: key, grant: g,
		queue: make(chan []byte, srv.cfg.SendQueue), done: make(chan struct{}), attached: make(chan struct{}),
		detachedAt: time.Now(), started: time.Now(),
	}
	ss.lastRx.Store(time.Now().UnixNano())
	srv.wg.Go(ss.writer)
	return ss
}

// User is the session's user.
func (ss *Session) User() string { return ss.grant.User }

// Device is the session's identity, as the Grant gave it.
func (ss *Session) Device() string { return ss.grant.Device }

// CookieHash is the SHA-256 of the session's cookie, in hex: what may be
// logged or told to others of it.
func (ss *Session) CookieHash() string { return hex.EncodeToString(ss.key[:]) }

// Grant is what the login granted.
func (ss *Session) Grant() *Grant { return ss.grant }

// Addresses are the session's tunnel addresses.
func (ss *Session) Addresses() []netip.Addr {
	var a []netip.Addr
	if p := ss.grant.Tunnel.Address4; p.IsValid() {
		a = append(a, p.Addr())
	}
	if p := ss.grant.Tunnel.Address6; p.IsValid() {
		a = append(a, p.Addr())
	}
	return a
}

// Path names the path packets to the client take now: "dtls", "cstp",
// or "" while the client is away.
func (ss *Session) Path() string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch {
	case ss.dtls != nil && ss.dtlsActive.Load():
		return "dtls"
	case ss.cstp != nil:
		return "cstp"
	}
	return ""
}

// LastReceived is when the client last sent anything.
func (ss *Session) LastReceived() time.Time { return time.Unix(0, ss.lastRx.Load()) }

// Started is when the session was made (the login, or the resume).
func (ss *Session) Started() time.Time { return ss.started }

// Done is closed when the session has ended.
func (ss *Session) Done() <-chan struct{} { return ss.done }

func (ss *Session) isEnded() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.ended
}

func (ss *Session) expired(now time.Time, ttl, idle time.Duration) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ended {
		return false
	}
	if ss.cstp == nil && now.Sub(ss.detachedAt) > ttl {
		return true
	}
	return idle > 0 && now.Sub(ss.LastReceived()) > idle
}

// Send queues an inner packet for the client. It never blocks: when the
// session's queue is full the packet is dropped and counted, so a slow
// client cannot hold up the others. pkt is copied.
func (ss *Session) Send(pkt []byte) bool {
	b := getBuf(len(pkt))
	copy(b, pkt)
	ss.queued.Add(1)
	select {
	case ss.queue <- b:
		return true
	default:
		ss.release(b)
		ss.Drops.Add(1)
		ss.srv.stats.count(ReasonQueueFull)
		return false
	}
}

// tunnelFor fills in what the server decides for this CONNECT.
func (ss *Session) tunnelFor(creq ConnectRequest, cs tls.ConnectionState) Tunnel {
	cfg := &ss.srv.cfg
	t := ss.grant.Tunnel
	t.ServerName = cfg.Name
	t.Hostname = cleanHostname(creq.Hostname)
	if !creq.IPv6 {
		t.Address6 = netip.Prefix{}
	}
	if !creq.IPv4 && t.Address6.IsValid() {
		t.Address4 = netip.Prefix{}
	}
	mtu := cfg.MTU
	if creq.BaseMTU > 0 {
		// The worst case on the DTLS path: outer IPv6 and UDP, the DTLS
		// record header, an explicit nonce, a tag and the type byte.
		mtu = min(mtu, creq.BaseMTU-40-8-13-8-16-1)
		t.BaseMTU = creq.BaseMTU
	} else if creq.MTU > 0 {
		mtu = min(mtu, creq.MTU)
	}
	t.MTU = max(mtu, 576)
	t.DPD = int(cfg.DPD / time.Second)
	t.Keepalive = int(cfg.Keepalive / time.Second)
	t.IdleTimeout = int(cfg.IdleTimeout / time.Second)
	t.DTLS = nil
	if ss.srv.dtls != nil && creq.PSK {
		if psk, err := ExportPSK(cs); err == nil {
			var id [32]byte
			rand.Read(id[:])
			ss.setDTLSKey(hex.EncodeToString(id[:]), psk)
			t.DTLS = &DTLSParams{
				Port: cfg.DTLSPort, AppID: id[:],
				DPD: int(cfg.DTLSDPD / time.Second), Keepalive: int(cfg.Keepalive / time.Second),
			}
		}
	}
	return t
}

// cleanHostname keeps a client's hostname printable and short.
func cleanHostname(h string) string {
	h = strings.Map(func(r rune) rune {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, h)
	return clip(h)
}

func (ss *Session) setDTLSKey(appID string, psk []byte) {
	s := ss.srv
	s.mu.Lock()
	if ss.appID != "" && s.byAppID[ss.appID] == ss {
		delete(s.byAppID, ss.appID)
	}
	s.byAppID[appID] = ss
	s.mu.Unlock()
	ss.mu.Lock()
	ss.appID, ss.psk = appID, psk
	ss.mu.Unlock()
}

// attach makes c the session's connection, replacing an older one.
func (ss *Session) attach(c *cstpConn) bool {
	ss.mu.Lock()
	if ss.ended {
		ss.mu.Unlock()
		return false
	}
	old, oldDTLS := ss.cstp, ss.dtls
	ss.cstp, ss.dtls = c, nil
	c.appID = ss.appID
	close(ss.attached)
	ss.attached = make(chan struct{})
	ss.dtlsActive.Store(false)
	first := !ss.upCalled
	ss.upCalled = true
	ss.mu.Unlock()
	if old != nil {
		old.close()
	}
	if oldDTLS != nil {
		oldDTLS.close()
	}
	if first {
		ss.srv.cfg.Handler.SessionUp(ss)
	}
	return true
}

// detach forgets c if it is still the session's connection.
func (ss *Session) detach(c *cstpConn) {
	ss.mu.Lock()
	var d *dtlsConn
	if ss.cstp == c {
		ss.cstp, d = nil, ss.dtls
		ss.dtls = nil
		ss.dtlsActive.Store(false)
		ss.detachedAt = time.Now()
	}
	ss.mu.Unlock()
	c.close()
	if d != nil {
		d.close()
	}
}

// end ends the session for good, telling the client why if it is there.
func (ss *Session) end(typ byte, reason string) {
	ss.mu.Lock()
	if ss.ended {
		ss.mu.Unlock()
		return
	}
	ss.ended = true
	c, d := ss.cstp, ss.dtls
	ss.cstp, ss.dtls = nil, nil
	up := ss.upCalled
	ss.mu.Unlock()
	ss.srv.forget(ss)
	if c != nil {
		payload := append([]byte{DisconnectLogout}, reason...)
		if typ == TypeTerminate {
			payload = nil
		}
		c.bc.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		c.tc.Write(AppendFrame(nil, typ, payload))
		c.bc.end() // out now, even if the writer was in the middle of a batch
		c.close()
	}
	if d != nil {
		d.close()
	}
	close(ss.done)
	if up {
		ss.srv.cfg.Handler.SessionDown(ss)
	}
}

// runCSTP runs the tunnel on a connection whose CONNECT was answered.
func (ss *Session) runCSTP(tc *tls.Conn, bc *batchConn, br *bufio.Reader, creq ConnectRequest) {
	c := &cstpConn{tc: tc, bc: bc, closed: make(chan struct{})}
	if !ss.attach(c) {
		tc.Close()
		return
	}
	defer ss.detach(c)
	cfg := &ss.srv.cfg
	fr := NewFrameReader(br)
	var dpd [64]byte
	for {
		bc.Conn.SetReadDeadline(time.Now().Add(2*cfg.DPD + 5*time.Second))
		typ, payload, err := fr.Next()
		if err != nil {
			switch {
			case errors.Is(err, ErrBadMagic), errors.Is(err, ErrFrameTooBig), errors.Is(err, ErrBadReserved):
				ss.srv.stats.count(ReasonBadFrame)
			case isTimeout(err):
				ss.srv.stats.count(ReasonDeadPeer)
			}
			return
		}
		ss.lastRx.Store(time.Now().UnixNano())
		switch typ {
		case TypeData:
			// Data on CSTP while DTLS was in use: the client has left
			// DTLS, so answer on CSTP too.
			ss.dtlsActive.Store(false)
			ss.CSTP.RxPackets.Add(1)
			ss.CSTP.RxBytes.Add(uint64(len(payload)))
			cfg.Handler.Deliver(ss, payload)
		case TypeDPDRequest:
			var reply []byte
			if len(payload) <= len(dpd)-HeaderLen {
				reply = AppendFrame(dpd[:0], TypeDPDReply, payload)
			} else {
				reply = AppendFrame(nil, TypeDPDReply, payload)
			}
			if _, err := tc.Write(reply); err != nil {
				return
			}
		case TypeDPDReply, TypeKeepalive:
		case TypeDisconnect:
			if len(payload) > 0 && payload[0] == DisconnectLogout {
				ss.end(TypeDisconnect, "logged out")
			}
			return
		default:
			ss.srv.stats.count(ReasonBadType)
			return
		}
	}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// writer sends the session's queue on its current path, for the
// session's whole life.
func (ss *Session) writer() {
	for {
		var b []byte
		select {
		case <-ss.done:
			ss.drain()
			return
		case b = <-ss.queue:
		}
		ss.mu.Lock()
		c, d := ss.cstp, ss.dtls
		ss.mu.Unlock()
		switch {
		case d != nil && ss.dtlsActive.Load():
			ss.sendDTLS(d, b)
		case c != nil:
			ss.sendCSTP(c, b)
		default:
			ss.Drops.Add(1)
			ss.srv.stats.count(ReasonNoPath)
			ss.release(b)
		}
	}
}

// release is the end of a queued packet: sent, sealed or dropped.
func (ss *Session) release(b []byte) {
	putBuf(b)
	ss.queued.Add(-1)
}

// sendCSTP sends b and whatever else is queued on CSTP, one frame per
// TLS record, the records of a burst in one write.
func (ss *Session) sendCSTP(c *cstpConn, b []byte) {
	c.bc.begin()
	frame := ss.frame[:0]
	defer func() { ss.frame = frame[:0] }()
	failed := false
	for {
		if !failed {
			frame = AppendFrame(frame[:0], TypeData, b)
			if _, err := c.tc.Write(frame); err != nil {
				failed = true
			} else {
				ss.CSTP.TxPackets.Add(1)
				ss.CSTP.TxBytes.Add(uint64(len(b)))
			}
		}
		if failed {
			ss.Drops.Add(1)
			ss.srv.stats.count(ReasonWriteFailed)
		}
		ss.release(b)
		if ss.dtlsActive.Load() {
			break
		}
		select {
		case b = <-ss.queue:
			continue
		default:
		}
		break
	}
	if err := c.bc.end(); err != nil || failed {
		c.close()
	}
}

func (ss *Session) drain() {
	for {
		select {
		case b := <-ss.queue:
			ss.release(b)
		default:
			return
		}
	}
}

// smallBuf fits a packet of any usual MTU; larger ones are allocated.
const smallBuf = 2048

var bufPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}

func getBuf(n int) []byte {
	if n > smallBuf {
		return make([]byte, n)
	}
	p := bufPool.Get().(*[]byte)
	return (*p)[:n]
}

func putBuf(b []byte) {
	if cap(b) != smallBuf {
		return
	}
	b = b[:cap(b)]
	bufPool.Put(&b)
}
