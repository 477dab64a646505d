package openconnect

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
)

// An Authenticator decides a login. The server never sees how passwords
// are stored: it hands over what the client typed and gets a verdict.
type Authenticator interface {
	// Authenticate checks user's password. A nil error grants a
	// session with what the Grant says; ErrLoginFailed (or an error
	// wrapping it) refuses it; any other error is the authenticator's own
	// trouble and refuses it too, with a different message to the client.
	Authenticate(ctx context.Context, user, password string, from netip.AddrPort) (*Grant, error)
}

// ErrLoginFailed is an Authenticator's refusal of a login.
var ErrLoginFailed = errors.New("openconnect: login failed")

// A Grant is what a successful login gives its session.
type Grant struct {
	User   string
	Device string // the session's identity in logs, counters and Revoke
	// Tunnel holds the addresses, routes and DNS to push. The server
	// fills in the MTU, the timers and DTLS.
	Tunnel Tunnel
	// Cookie, if set, is the session's cookie (whoever made the grant
	// keeps it, to resume the session later: see ServerConfig.Resume);
	// else the server makes one.
	Cookie string
	// Context is the caller's, carried with the session (Session.Grant).
	Context any
}

// A Handler is where the inner packets go and where sessions are told of.
type Handler interface {
	// SessionUp is called when a session's tunnel (its first CONNECT)
	// starts, SessionDown when the session ends for good.
	SessionUp(s *Session)
	SessionDown(s *Session)
	// Deliver is called with each packet a client sent. It must not keep
	// pkt past the call.
	Deliver(s *Session, pkt []byte)
}

// ServerConfig configures a Server.
type ServerConfig struct {
	TLS     *tls.Config
	Auth    Authenticator
	Handler Handler
	Name    string // X-CSTP-Server-Name and the XML's version

	// DTLS, if set, is the UDP socket DTLS sessions arrive on; DTLSPort
	// is the port to tell clients (the socket's, by default).
	DTLS     net.PacketConn
	DTLSPort int

	MTU         int           // the inner MTU to push at most; default 1400
	DPD         time.Duration // CSTP dead-peer detection; default 30 s
	DTLSDPD     time.Duration // DTLS dead-peer detection; default 10 s
	Keepalive   time.Duration // default 20 s
	IdleTimeout time.Duration // 0: none
	// CookieTTL is how long a session whose connection dropped waits for
	// the client to come back with its cookie; default 5 min.
	CookieTTL time.Duration
	// SetupTimeout bounds a connection's TLS handshake and
	// authentication exchange together; default 30 s.
	SetupTimeout time.Duration
	// MaxSetup bounds the connections in their setup phase at once;
	// default 4096. Past that, new connections are closed at once.
	MaxSetup int
	// SendQueue bounds each session's queue of packets to send; default 512.
	SendQueue int
	// Resume, if set, is asked for the grant of a cookie the server does
	// not know (it was restarted since the login); nil or an error
	// refuses the CONNECT.
	Resume func(ctx context.Context, cookie string) (*Grant, error)

	Logf func(format string, args ...any)
}

func (c *ServerConfig) defaults() {
	if c.Name == "" {
		c.Name = "ptun"
	}
	if c.MTU <= 0 {
		c.MTU = 1400
	}
	if c.DPD <= 0 {
		c.DPD = 30 * time.Second
	}
	if c.DTLSDPD <= 0 {
		c.DTLSDPD = 10 * time.Second
	}
	if c.Keepalive <= 0 {
		c.Keepalive = 20 * time.Second
	}
	if c.CookieTTL <= 0 {
		c.CookieTTL = 5 * time.Minute
	}
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = 30 * time.Second
	}
	if c.MaxSetup <= 0 {
		c.MaxSetup = 4096
	}
	if c.SendQueue <= 0 {
		c.SendQueue = 512
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if c.DTLS != nil && c.DTLSPort == 0 {
		if a, ok := c.DTLS.LocalAddr().(*net.UDPAddr); ok {
			c.DTLSPort = a.Port
		}
	}
}

// A Server serves OpenConnect clients.
type Server struct {
	cfg   ServerConfig
	stats Stats

	setup atomic.Int64 // connections in their setup phase

	mu       sync.Mutex
	sessions map[[32]byte]*Session // by SHA-256 of the cookie
	byAppID  map[string]*Session
	closed   bool
	conns    map[net.Conn]struct{} // every connection, to close them all
	lns      []net.Listener

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	dtls   *dtlsServer
}

// NewServer makes a server; Serve gives it connections.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLS == nil || cfg.Auth == nil || cfg.Handler == nil {
		return nil, errors.New("openconnect: a server needs TLS, Auth and Handler")
	}
	cfg.defaults()
	t := cfg.TLS.Clone()
	// One CSTP frame per TLS record: never let crypto/tls cut a frame
	// into small early records.
	t.DynamicRecordSizingDisabled = true
	t.Renegotiation = tls.RenegotiateNever
	if t.MinVersion < tls.VersionTLS12 {
		t.MinVersion = tls.VersionTLS12
	}
	cfg.TLS = t
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, sessions: map[[32]byte]*Session{}, byAppID: map[string]*Session{},
		conns: map[net.Conn]struct{}{}, ctx: ctx, cancel: cancel,
	}
	if cfg.DTLS != nil {
		s.dtls = newDTLSServer(s, cfg.DTLS)
		s.wg.Go(s.dtls.run)
	}
	s.wg.Go(s.expireLoop)
	return s, nil
}

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// goFn runs f on a goroutine Close waits for.
func (s *Server) goFn(f func()) { s.wg.Go(f) }

// DTLSSocketStats returns the DTLS socket's counters (datagrams and
// syscalls each way, offloads, drops by errno; see transport/udp), or nil
// without DTLS or batched I/O.
func (s *Server) DTLSSocketStats() []metrics.Counter {
	if s.dtls == nil {
		return nil
	}
	return s.dtls.stats()
}

// Serve accepts TCP connections from ln until the server closes. ln is a
// plain listener: the server does TLS itself.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		if s.setup.Add(1) > int64(s.cfg.MaxSetup) {
			s.setup.Add(-1)
			s.stats.count(ReasonSetupLimit)
			c.Close()
			continue
		}
		if !s.track(c) {
			s.setup.Add(-1)
			c.Close()
			return nil
		}
		s.wg.Go(func() { s.serveConn(c) })
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close ends every session and connection and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	lns := s.lns
	var sessions []*Session
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	s.cancel()
	for _, ln := range lns {
		ln.Close()
	}
	for _, ss := range sessions {
		ss.end(TypeTerminate, "server shutting down")
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	if s.dtls != nil {
		s.dtls.close()
	}
	s.wg.Wait()
	return nil
}

// Revoke ends every session of device at once; their cookies stop
// working. It returns how many there were.
func (s *Server) Revoke(device string) int {
	var victims []*Session
	s.mu.Lock()
	for _, ss := range s.sessions {
		if ss.grant.Device == device {
			victims = append(victims, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range victims {
		ss.end(TypeDisconnect, "revoked")
	}
	return len(victims)
}

// Sessions returns the live sessions.
func (s *Server) Sessions() []*Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		out = append(out, ss)
	}
	return out
}

func (s *Server) expireLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			var old []*Session
			s.mu.Lock()
			for _, ss := range s.sessions {
				if ss.expired(now, s.cfg.CookieTTL, s.cfg.IdleTimeout) {
					old = append(old, ss)
				}
			}
			s.mu.Unlock()
			for _, ss := range old {
				ss.end(TypeDisconnect, "expired")
			}
		}
	}
}

func cookieKey(cookie string) [32]byte { return sha256.Sum256([]byte(cookie)) }

func (s *Server) lookup(cookie string) *Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[cookieKey(cookie)]
}

func (s *Server) forget(ss *Session) {
	s.mu.Lock()
	if s.sessions[ss.key] == ss {
		delete(s.sessions, ss.key)
	}
	if ss.appID != "" && s.byAppID[ss.appID] == ss {
		delete(s.byAppID, ss.appID)
	}
	s.mu.Unlock()
}

// serveConn runs one TCP connection: TLS, the authentication exchange,
// and, after a CONNECT, the tunnel.
func (s *Server) serveConn(raw net.Conn) {
	defer s.untrack(raw)
	inSetup := true
	defer func() {
		if inSetup {
			s.setup.Add(-1)
		}
		raw.Close()
	}()
	tuneCSTP(raw)
	bc := newBatchConn(raw)
	deadline := time.Now().Add(s.cfg.SetupTimeout)
	raw.SetDeadline(deadline)
	tc := tls.Server(bc, s.cfg.TLS)
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		s.stats.count(ReasonTLSHandshake)
		return
	}
	from := addrPort(raw.RemoteAddr())
	br := NewReader(tc)
	w := &respWriter{c: tc}
	for {
		req, err := ReadRequest(br)
		if err != nil {
			switch reason := reasonFor(err); {
			case isEOF(err):
			case reason == ReasonSetupTimeout:
				s.stats.count(reason) // no answer to a client that took too long
			default:
				s.stats.count(reason)
				w.plain(400, "Bad Request")
			}
			return
		}
		if req.Method == "CONNECT" {
			ss, creq, ok := s.connectSession(w, req, tc.ConnectionState())
			if !ok {
				return
			}
			inSetup = false
			s.setup.Add(-1)
			raw.SetDeadline(time.Time{})
			ss.runCSTP(tc, bc, br, creq)
			return
		}
		if !s.authStep(ctx, w, req, from) {
			return
		}
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// respWriter writes whole responses.
type respWriter struct{ c net.Conn }

func (w *respWriter) write(status int, reason string, h Headers, body []byte) error {
	_, err := w.c.Write(AppendResponse(nil, status, reason, h, body, false))
	return err
}

func (w *respWriter) plain(status int, reason string) {
	w.write(status, reason, Headers{{"Connection", "close"}}, nil)
}

func (w *respWriter) xml(doc *ConfigAuth, extra ...Header) error {
	h := Headers{
		{"Content-Type", "text/xml; charset=utf-8"},
		{"X-Transcend-Version", "1"},
		{"Cache-Control", "no-store"},
	}
	h = append(h, extra...)
	return w.write(200, "OK", h, doc.Marshal())
}

// authStep answers one request of the authentication exchange. It
// returns false when the connection must end.
func (s *Server) authStep(ctx context.Context, w *respWriter, req *Request, from netip.AddrPort) bool {
	path, _, _ := strings.Cut(req.Target, "?")
	switch {
	case req.Method != "GET" && req.Method != "POST":
		s.stats.count(ReasonBadRequest)
		w.plain(405, "Method Not Allowed")
		return false
	case path != "/" && path != "/auth" && !strings.EqualFold(path, "/VPN"):
		w.plain(404, "Not Found")
		return false
	}
	a, err := ParseAnswers(req.Body)
	if err != nil {
		s.stats.count(ReasonBadAuthBody)
		w.plain(400, "Bad Request")
		return false
	}
	user, pass := a.Fields["username"], a.Fields["password"]
	if user == "" || pass == "" {
		return w.xml(LoginForm(s.cfg.Name, "")) == nil
	}
	g, err := s.cfg.Auth.Authenticate(ctx, user, pass, from)
	if err != nil {
		if errors.Is(err, ErrLoginFailed) {
			s.stats.LoginsFailed.Add(1)
			w.plain(401, "Unauthorized")
		} else {
			s.stats.count(ReasonAuthError)
			w.plain(503, "Service Unavailable")
		}
		return false
	}
	s.stats.Logins.Add(1)
	cookie, err := s.newSession(g)
	if err != nil {
		w.plain(503, "Service Unavailable")
		return false
	}
	return w.xml(LoginComplete(s.cfg.Name, g.Tunnel.Banner),
		Header{"Set-Cookie", CookieName + "=" + cookie + "; Secure; HttpOnly"},
		Header{"Set-Cookie", "webvpncontext=; expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure"},
	) == nil
}

// newSession makes a session for g and returns its cookie.
func (s *Server) newSession(g *Grant) (string, error) {
	cookie := g.Cookie
	if cookie == "" {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		cookie = base64.RawURLEncoding.EncodeToString(b[:])
	}
	if s.addSession(cookie, g) == nil {
		return "", net.ErrClosed
	}
	return cookie, nil
}

// addSession makes the session of cookie (nil once the server closed). A
// session the cookie had already is ended first.
func (s *Server) addSession(cookie string, g *Grant) *Session {
	key := cookieKey(cookie)
	s.mu.Lock()
	old := s.sessions[key]
	s.mu.Unlock()
	if old != nil {
		old.end(TypeDisconnect, "replaced")
	}
	ss := newSession(s, key, g)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.sessions[key] = ss
	return ss
}

// connectSession answers a CONNECT: the session of its cookie gets this
// connection. ok is false when the connection must end.
func (s *Server) connectSession(w *respWriter, req *Request, cs tls.ConnectionState) (*Session, ConnectRequest, bool) {
	creq, err := ParseConnect(req)
	if err != nil {
		s.stats.count(ReasonBadConnect)
		if errors.Is(err, ErrBadConnect) && req.Target != ConnectPath {
			w.plain(404, "Not Found")
		} else {
			w.plain(401, "Cookie is not acceptable")
		}
		return nil, creq, false
	}
	ss := s.lookup(creq.Cookie)
	if ss == nil && s.cfg.Resume != nil {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		if g, err := s.cfg.Resume(ctx, creq.Cookie); err == nil && g != nil {
			g.Cookie = creq.Cookie
			ss = s.addSession(creq.Cookie, g)
		}
		cancel()
	}
	if ss == nil || ss.isEnded() {
		s.stats.count(ReasonBadCookie)
		w.plain(401, "Cookie is not acceptable")
		return nil, creq, false
	}
	t := ss.tunnelFor(creq, cs)
	if _, err := w.c.Write(AppendResponse(nil, 200, "CONNECTED", t.Headers(), nil, true)); err != nil {
		return nil, creq, false
	}
	return ss, creq, true
}

// reasonFor names a parse error for the counters.
func reasonFor(err error) string {
	switch {
	case errors.Is(err, ErrLineTooLong), errors.Is(err, ErrHeaderTooBig), errors.Is(err, ErrTooManyHeaders), errors.Is(err, ErrBodyTooBig):
		return ReasonOversized
	case errors.Is(err, ErrMalformedHTTP):
		return ReasonBadRequest
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ReasonSetupTimeout
	}
	return ReasonBadRequest
}
