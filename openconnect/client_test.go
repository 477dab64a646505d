package openconnect

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
)

// An in-process OpenConnect server on loopback, ocserv-like: the user
// name and the password in separate forms, a hidden input and a
// webvpncontext cookie it checks, the webvpn cookie at the end, a CONNECT
// with tunnel headers, then whatever the test does with the tunnel.

const (
	fakeUser     = "alice"
	fakePassword = "secret"
	fakeCookie   = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	fakeContext  = "c3RhdGU="
	fakeHidden   = "hidden-42"
)

type fakeServer struct {
	t    *testing.T
	ln   net.Listener
	tls  *tls.Config
	pin  string
	wg   sync.WaitGroup
	done chan struct{}

	// What the test sets before the client connects.
	wrong401 bool                         // a wrong password gets 401 (else the password form again)
	forms    func(round int) *ConfigAuth  // replaces the login exchange's forms
	tunnel   Tunnel                       // what CONNECT answers (DTLS filled in when withDTLS)
	withDTLS bool                         // offer DTLS (listen on loopback UDP)
	onTunnel func(ft *fakeTunnel)         // runs the tunnel; the connection closes when it returns
	connect  func(r *Request) (int, bool) // the CONNECT's status, and whether to hang up after a non-200

	mu       sync.Mutex
	requests []*Request
	conns    []net.Conn
	dtlsLn   net.Listener
	psk      []byte
	appID    []byte
	helloIDs [][]byte // ClientHello session_ids the DTLS server saw
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeServer{
		t: t, ln: ln, pin: PinSHA256(cert), done: make(chan struct{}),
		tls: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		tunnel: Tunnel{
			ServerName: "fake", Address4: netip.MustParsePrefix("100.64.70.10/24"),
			DNS: []netip.Addr{netip.MustParseAddr("100.64.70.1")}, DefaultDomain: []string{"fake.test"},
			Include: []netip.Prefix{netip.MustParsePrefix("100.64.71.0/24")}, MTU: 1400, BaseMTU: 1500,
		},
	}
	fs.wg.Add(1)
	go fs.accept()
	t.Cleanup(fs.close)
	return fs
}

// close stops the server and waits for its goroutines.
func (fs *fakeServer) close() {
	select {
	case <-fs.done:
		return
	default:
	}
	close(fs.done)
	fs.ln.Close()
	fs.mu.Lock()
	for _, c := range fs.conns {
		c.Close()
	}
	if fs.dtlsLn != nil {
		fs.dtlsLn.Close()
	}
	fs.mu.Unlock()
	fs.wg.Wait()
}

func (fs *fakeServer) accept() {
	defer fs.wg.Done()
	for {
		c, err := fs.ln.Accept()
		if err != nil {
			return
		}
		fs.mu.Lock()
		fs.conns = append(fs.conns, c)
		fs.mu.Unlock()
		fs.wg.Add(1)
		go func() {
			defer fs.wg.Done()
			defer c.Close()
			fs.serve(c)
		}()
	}
}

func (fs *fakeServer) config(t *testing.T) ClientConfig {
	return ClientConfig{
		Server: fs.ln.Addr().String(), Pin: fs.pin,
		Username: fakeUser, Password: fakePassword, Hostname: "test-host",
		DTLSTimeout: 5 * time.Second, Logf: t.Logf,
	}
}

func (fs *fakeServer) seen() []*Request {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]*Request(nil), fs.requests...)
}

func respond(w io.Writer, status int, reason string, h Headers, body []byte) {
	w.Write(AppendResponse(nil, status, reason, h, body, false))
}

func xmlHeaders(extra ...Header) Headers {
	return append(Headers{{"Content-Type", "text/xml"}, {"X-Transcend-Version", "1"}}, extra...)
}

func form(msg string, inputs ...Input) *ConfigAuth {
	return &ConfigAuth{
		Client: "vpn", Type: DocAuthRequest, Aggregate: "2",
		Version: &Version{Who: "sg", Text: "fake"},
		Auth:    &AuthBlock{ID: "main", Message: msg, Form: &Form{Method: "post", Action: "/auth", Inputs: inputs}},
	}
}

func (fs *fakeServer) serve(raw net.Conn) {
	tc := tls.Server(raw, fs.tls)
	br := NewReader(tc)
	round := 0
	for {
		req, err := ReadRequest(br)
		if err != nil {
			return
		}
		fs.mu.Lock()
		fs.requests = append(fs.requests, req)
		fs.mu.Unlock()
		switch req.Method {
		case "POST":
			round++
			if !fs.auth(tc, req, round) {
				return
			}
		case "CONNECT":
			fs.serveConnect(tc, br, req)
			return
		default:
			respond(tc, 404, "Not Found", nil, nil)
			return
		}
	}
}

// auth answers one request of the login exchange; false hangs up.
func (fs *fakeServer) auth(w io.Writer, req *Request, round int) bool {
	if fs.forms != nil {
		respond(w, 200, "OK", xmlHeaders(), fs.forms(round).Marshal())
		return true
	}
	a, err := ParseAnswers(req.Body)
	if err != nil {
		respond(w, 400, "Bad Request", nil, nil)
		return false
	}
	switch {
	case a.Type == DocInit:
		respond(w, 200, "OK", xmlHeaders(Header{"Set-Cookie", "webvpncontext=" + fakeContext + "; Max-Age=300; Secure; HttpOnly"}),
			form("Please enter your username.",
				Input{Type: "text", Name: "username", Label: "Username:"},
				Input{Type: "hidden", Name: "state", Value: fakeHidden}).Marshal())
	case req.Headers.Cookie("webvpncontext") != fakeContext:
		respond(w, 400, "No context", nil, nil)
		return false
	case a.Fields["username"] != "":
		if a.Fields["state"] != fakeHidden {
			respond(w, 400, "Lost state", nil, nil)
			return false
		}
		respond(w, 200, "OK", xmlHeaders(), form("Please enter your password.",
			Input{Type: "password", Name: "password", Label: "Password:"}).Marshal())
	case a.Fields["password"] == fakePassword:
		respond(w, 200, "OK", xmlHeaders(
			Header{"Set-Cookie", "webvpncontext=; expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure"},
			Header{"Set-Cookie", CookieName + "=" + fakeCookie + "; Secure; HttpOnly"}),
			LoginComplete("fake", "").Marshal())
	case fs.wrong401:
		respond(w, 401, "Unauthorized", nil, nil)
		return false
	default:
		respond(w, 200, "OK", xmlHeaders(), form("Login failed.",
			Input{Type: "password", Name: "password", Label: "Password:"}).Marshal())
	}
	return true
}

func (fs *fakeServer) serveConnect(tc *tls.Conn, br *bufio.Reader, req *Request) {
	if fs.connect != nil {
		if status, _ := fs.connect(req); status != 200 {
			respond(tc, status, "Refused", nil, nil)
			return
		}
	}
	if req.Target != ConnectPath || req.Headers.Cookie(CookieName) != fakeCookie {
		respond(tc, 401, "Cookie is not acceptable", nil, nil)
		return
	}
	t := fs.tunnel
	if fs.withDTLS && strings.Contains(req.Headers.Get("X-DTLS-CipherSuite"), PSKNegotiate) {
		psk, err := ExportPSK(tc.ConnectionState())
		if err != nil {
			fs.t.Errorf("server: %v", err)
			return
		}
		ln := fs.listenDTLS()
		fs.mu.Lock()
		fs.psk = psk
		fs.mu.Unlock()
		d := *t.DTLS
		d.Port = ln.Addr().(*net.UDPAddr).Port
		d.AppID = fs.appID
		t.DTLS = &d
	} else {
		t.DTLS = nil
	}
	tc.Write(AppendResponse(nil, 200, "CONNECTED", t.Headers(), nil, true))
	if fs.onTunnel != nil {
		fs.onTunnel(&fakeTunnel{fs: fs, tc: tc, br: br})
	}
}

// helloStore captures the ClientHello session_ids the DTLS server looks up.
type helloStore struct{ fs *fakeServer }

func (h helloStore) Set([]byte, dtls.Session) error { return nil }
func (h helloStore) Del([]byte) error               { return nil }
func (h helloStore) Get(id []byte) (dtls.Session, error) {
	h.fs.mu.Lock()
	h.fs.helloIDs = append(h.fs.helloIDs, bytes.Clone(id))
	h.fs.mu.Unlock()
	return dtls.Session{}, nil
}

func (fs *fakeServer) listenDTLS() net.Listener {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.dtlsLn != nil {
		return fs.dtlsLn
	}
	fs.appID = make([]byte, 32)
	rand.Read(fs.appID)
	ln, err := dtls.ListenWithOptions("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)},
		dtls.WithPSK(func([]byte) ([]byte, error) {
			fs.mu.Lock()
			defer fs.mu.Unlock()
			return fs.psk, nil
		}),
		dtls.WithCipherSuites(dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256),
		dtls.WithSessionStore(helloStore{fs}),
	)
	if err != nil {
		fs.t.Fatal(err)
	}
	fs.dtlsLn = ln
	return ln
}

// fakeTunnel is the server's side of one tunnel.
type fakeTunnel struct {
	fs   *fakeServer
	tc   *tls.Conn
	br   *bufio.Reader
	dtls net.Conn
}

// readFrame reads one CSTP frame and checks it filled one TLS record
// exactly, as ocserv requires. The payload is a copy.
func (ft *fakeTunnel) readFrame() (byte, []byte, error) {
	if ft.br.Buffered() > 0 {
		return 0, nil, errors.New("frames read with the CONNECT request")
	}
	buf := make([]byte, 1<<15)
	ft.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := ft.tc.Read(buf)
	if err != nil {
		return 0, nil, err
	}
	typ, payload, err := ParseFrame(buf[:n])
	return typ, payload, err
}

func (ft *fakeTunnel) writeFrame(typ byte, payload []byte) error {
	_, err := ft.tc.Write(AppendFrame(nil, typ, payload))
	return err
}

// acceptDTLS waits for the client's DTLS handshake.
func (ft *fakeTunnel) acceptDTLS() error {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ft.fs.dtlsLn.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return r.err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.c.(*dtls.Conn).HandshakeContext(ctx); err != nil {
			r.c.Close()
			return err
		}
		ft.dtls = r.c
		return nil
	case <-time.After(5 * time.Second):
		ft.fs.dtlsLn.Close()
		<-ch
		return errors.New("no DTLS handshake within 5 s")
	}
}

func (ft *fakeTunnel) readDTLS() (byte, []byte, error) {
	buf := make([]byte, 1<<15)
	ft.dtls.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := ft.dtls.Read(buf)
	if err != nil {
		return 0, nil, err
	}
	if n == 0 {
		return 0, nil, errors.New("an empty DTLS record")
	}
	return buf[0], bytes.Clone(buf[1:n]), nil
}

func (ft *fakeTunnel) writeDTLS(typ byte, payload []byte) error {
	_, err := ft.dtls.Write(append([]byte{typ}, payload...))
	return err
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestClientLogin(t *testing.T) {
	fs := newFakeServer(t)
	cookie, err := Login(testContext(t), fs.config(t))
	if err != nil {
		t.Fatal(err)
	}
	if cookie != fakeCookie {
		t.Errorf("cookie %q, want %q", cookie, fakeCookie)
	}
	reqs := fs.seen()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3 (init, username, password)", len(reqs))
	}
	for i, r := range reqs {
		for _, h := range []Header{{"User-Agent", DefaultUserAgent}, {"X-Transcend-Version", "1"}, {"X-Aggregate-Auth", "1"},
			{"Accept-Encoding", "identity"}} {
			if got := r.Headers.Get(h.Name); got != h.Value {
				t.Errorf("request %d: %s %q, want %q", i, h.Name, got, h.Value)
			}
		}
		if len(r.Body)%64 == 0 && r.Headers.Get("X-Pad") == "" {
			t.Errorf("request %d: no X-Pad", i)
		}
	}
	if reqs[0].Target != "/" || reqs[1].Target != "/auth" {
		t.Errorf("targets %q, %q: want / then the form's action /auth", reqs[0].Target, reqs[1].Target)
	}
	// The expired webvpncontext is not sent back.
	if c := reqs[2].Headers.Get("Cookie"); c != "webvpncontext="+fakeContext {
		t.Errorf("third request's Cookie %q", c)
	}
}

func TestClientWrongPassword(t *testing.T) {
	for _, use401 := range []bool{false, true} {
		fs := newFakeServer(t)
		fs.wrong401 = use401
		cfg := fs.config(t)
		cfg.Password = "wrong"
		_, err := Login(testContext(t), cfg)
		var ae *AuthError
		if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &ae) {
			t.Fatalf("401=%v: %v, want an AuthError", use401, err)
		}
		t.Logf("401=%v: %v", use401, err)
	}
}

func TestClientUnsupportedForm(t *testing.T) {
	fs := newFakeServer(t)
	fs.forms = func(int) *ConfigAuth {
		return form("Second factor", Input{Type: "text", Name: "username"},
			Input{Type: "password", Name: "secondary_password", Label: "Token:"})
	}
	_, err := Login(testContext(t), fs.config(t))
	if !errors.Is(err, ErrUnsupportedForm) || !strings.Contains(err.Error(), "secondary_password") {
		t.Fatalf("%v, want ErrUnsupportedForm naming the field", err)
	}
}

func TestClientLoginRoundsBounded(t *testing.T) {
	fs := newFakeServer(t)
	fs.forms = func(int) *ConfigAuth { return form("again", Input{Type: "hidden", Name: "x", Value: "1"}) }
	_, err := Login(testContext(t), fs.config(t))
	if err == nil || !strings.Contains(err.Error(), "rounds") {
		t.Fatalf("%v, want a give-up after %d rounds", err, maxAuthRounds)
	}
	if n := len(fs.seen()); n != maxAuthRounds {
		t.Errorf("%d requests, want %d", n, maxAuthRounds)
	}
}

func TestClientPin(t *testing.T) {
	fs := newFakeServer(t)
	cfg := fs.config(t)
	cfg.Pin = "pin-sha256:" + strings.Repeat("A", 43) + "="
	if _, err := Login(testContext(t), cfg); !errors.Is(err, ErrPinMismatch) {
		t.Fatalf("%v, want ErrPinMismatch", err)
	}
	cfg.Pin = "sha1:abcd"
	if _, err := Login(testContext(t), cfg); err == nil {
		t.Fatal("a malformed pin was accepted")
	}
	// No pin: the system roots, which do not know the test certificate.
	cfg.Pin = ""
	if _, err := Login(testContext(t), cfg); err == nil {
		t.Fatal("an unknown self-signed certificate was accepted without a pin")
	}
}

func TestClientConnectHeaders(t *testing.T) {
	for _, noDTLS := range []bool{false, true} {
		fs := newFakeServer(t)
		cfg := fs.config(t)
		cfg.DisableDTLS = noDTLS
		cfg.BaseMTU = 1500
		s, err := LoginAndConnect(testContext(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		reqs := fs.seen()
		c := reqs[len(reqs)-1]
		if c.Method != "CONNECT" || c.Target != ConnectPath {
			t.Fatalf("last request %s %s", c.Method, c.Target)
		}
		if len(reqs) != 4 {
			t.Errorf("%d requests on %d connections: want Login and CONNECT on one", len(reqs), 1)
		}
		want := []Header{{"Cookie", CookieName + "=" + fakeCookie}, {"X-CSTP-Version", "1"}, {"X-CSTP-Hostname", "test-host"},
			{"X-CSTP-Base-MTU", "1500"}, {"X-CSTP-MTU", "1390"}, {"X-CSTP-Address-Type", "IPv6,IPv4"},
			{"X-CSTP-Full-IPv6-Capability", "true"}, {"User-Agent", DefaultUserAgent}}
		if !noDTLS {
			want = append(want, Header{"X-DTLS-CipherSuite", PSKNegotiate})
		}
		for _, w := range want {
			found := false
			for _, h := range c.Headers {
				// Exact case: ocserv's header table is case-sensitive.
				if h.Name == w.Name {
					found = true
					if h.Value != w.Value {
						t.Errorf("%s: %q, want %q", w.Name, h.Value, w.Value)
					}
				}
			}
			if !found {
				t.Errorf("no header named exactly %s in %v", w.Name, c.Headers)
			}
		}
		if noDTLS && c.Headers.Get("X-DTLS-CipherSuite") != "" {
			t.Errorf("DTLS offered with DisableDTLS")
		}
	}
}

func TestClientCookieRejected(t *testing.T) {
	fs := newFakeServer(t)
	_, err := Connect(testContext(t), fs.config(t), "bm90IGEgY29va2ll")
	if !errors.Is(err, ErrCookieRejected) {
		t.Fatalf("%v, want ErrCookieRejected", err)
	}
	fs.connect = func(*Request) (int, bool) { return 503, true }
	if _, err := Connect(testContext(t), fs.config(t), fakeCookie); err == nil || errors.Is(err, ErrCookieRejected) {
		t.Fatalf("503: %v", err)
	}
}

// connectFake logs in to fs and connects, with fs.onTunnel running the
// server's side.
func connectFake(t *testing.T, fs *fakeServer, cfg ClientConfig) *ClientSession {
	t.Helper()
	s, err := LoginAndConnect(testContext(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// readPacket reads with a bound.
func readPacket(t *testing.T, s *ClientSession) ([]byte, error) {
	t.Helper()
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b := make([]byte, 2048)
		n, err := s.ReadPacket(b)
		ch <- result{b[:n], err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-time.After(5 * time.Second):
		t.Fatal("ReadPacket: nothing within 5 s")
		return nil, nil
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestClientSessionCSTP(t *testing.T) {
	before := goroutines()
	fs := newFakeServer(t)
	toClient := [][]byte{randomBytes(1400), randomBytes(40)}
	fromClient := [][]byte{randomBytes(1400), randomBytes(1)}
	dpd := randomBytes(333)
	serverDone := make(chan error, 1)
	fs.onTunnel = func(ft *fakeTunnel) {
		serverDone <- func() error {
			for _, p := range toClient {
				if err := ft.writeFrame(TypeData, p); err != nil {
					return err
				}
			}
			// Frames the client ignores or only notes.
			ft.writeFrame(TypeKeepalive, nil)
			ft.writeFrame(TypeCompressed, []byte{1, 2, 3})
			if err := ft.writeFrame(TypeDPDRequest, dpd); err != nil {
				return err
			}
			var data [][]byte
			for len(data) < len(fromClient) || dpd != nil {
				typ, p, err := ft.readFrame()
				if err != nil {
					return err
				}
				switch typ {
				case TypeData:
					data = append(data, p)
				case TypeDPDReply:
					if !bytes.Equal(p, dpd) {
						return errors.New("DPD-RESP does not echo the DPD-REQ's payload")
					}
					dpd = nil
				}
			}
			for i := range data {
				if !bytes.Equal(data[i], fromClient[i]) {
					return errors.New("data from the client changed on the way")
				}
			}
			typ, p, err := ft.readFrame()
			if err != nil {
				return err
			}
			if typ != TypeDisconnect || !bytes.Equal(p, append([]byte{DisconnectLogout}, logoutReason...)) {
				return errors.New("Close sent no logout DISCONNECT")
			}
			return nil
		}()
	}
	s := connectFake(t, fs, fs.config(t))
	if s.Path() != PathCSTP {
		t.Errorf("path %s with no DTLS offered", s.Path())
	}
	tun := s.Tunnel()
	if tun.Address4 != fs.tunnel.Address4 || tun.MTU != 1400 || tun.DNS[0] != fs.tunnel.DNS[0] {
		t.Errorf("tunnel %+v", tun)
	}
	for _, want := range toClient {
		got, err := readPacket(t, s)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("ReadPacket: %d bytes, %v", len(got), err)
		}
	}
	for _, p := range fromClient {
		if err := s.WritePacket(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.WritePacket(make([]byte, 1401)); !errors.Is(err, ErrPacketTooBig) {
		t.Errorf("WritePacket above the MTU: %v", err)
	}
	// The DPD answer is on its way; wait for the server to have it.
	deadline := time.Now().Add(5 * time.Second)
	for counterValue(s, "dpd_answered") == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-serverDone; err != nil {
		t.Fatalf("server: %v", err)
	}
	if err := s.WritePacket(fromClient[0]); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("WritePacket after Close: %v", err)
	}
	if _, err := s.ReadPacket(make([]byte, 2048)); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("ReadPacket after Close: %v", err)
	}
	s.Close()
	for name, want := range map[string]uint64{
		"cstp_rx_packets": 2, "cstp_rx_bytes": 1440, "cstp_tx_packets": 2, "cstp_tx_bytes": 1401,
		"dpd_answered": 1, "drop_rx_bad_type": 1, "drop_tx_too_big": 1, "dtls_tx_packets": 0,
	} {
		if got := counterValue(s, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	fs.close()
	checkNoLeak(t, before)
}

func TestClientServerEnds(t *testing.T) {
	for _, c := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"disconnect", AppendFrame(nil, TypeDisconnect, []byte("\xb0kicked")), ErrServerDisconnect},
		{"terminate", AppendFrame(nil, TypeTerminate, nil), ErrServerTerminate},
		{"oversized", []byte{'S', 'T', 'F', 1, 0xff, 0xff, 0, 0}, ErrFrameTooBig},
		{"bad magic", []byte{'S', 'T', 'X', 1, 0, 0, 0, 0}, ErrBadMagic},
		{"hang-up", nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := goroutines()
			fs := newFakeServer(t)
			fs.onTunnel = func(ft *fakeTunnel) {
				ft.tc.Write(c.frame)
				time.Sleep(50 * time.Millisecond)
			}
			s := connectFake(t, fs, fs.config(t))
			_, err := readPacket(t, s)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("ReadPacket: %v, want %v", err, c.want)
			}
			if !errors.Is(s.Err(), err) {
				t.Errorf("Err() %v, ReadPacket %v", s.Err(), err)
			}
			t.Logf("%v", err)
			if err := s.WritePacket([]byte{0x45}); err == nil {
				t.Error("WritePacket works after the end")
			}
			s.Close()
			fs.close()
			checkNoLeak(t, before)
		})
	}
}

func TestClientDPD(t *testing.T) {
	fs := newFakeServer(t)
	fs.tunnel.DPD = 1
	seen := make(chan byte, 64)
	fs.onTunnel = func(ft *fakeTunnel) {
		// Answers nothing: the client must probe, then give up.
		for {
			typ, _, err := ft.readFrame()
			if err != nil {
				close(seen)
				return
			}
			seen <- typ
		}
	}
	start := time.Now()
	s := connectFake(t, fs, fs.config(t))
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session outlived 2×DPD of silence")
	}
	if !errors.Is(s.Err(), ErrDeadPeer) {
		t.Fatalf("Err %v, want ErrDeadPeer", s.Err())
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("declared dead after %v, before 2×DPD", d)
	}
	got := map[byte]int{}
	for typ := range seen {
		got[typ]++
	}
	if got[TypeDPDRequest] < 2 {
		t.Errorf("frames seen %v: want DPD requests (at DPD, then DPD/2 later)", got)
	}
}

func TestClientKeepalive(t *testing.T) {
	fs := newFakeServer(t)
	fs.tunnel.Keepalive = 1
	seen := make(chan time.Time, 64)
	fs.onTunnel = func(ft *fakeTunnel) {
		for {
			typ, _, err := ft.readFrame()
			if err != nil {
				return
			}
			if typ == TypeKeepalive {
				seen <- time.Now()
			}
		}
	}
	start := time.Now()
	s := connectFake(t, fs, fs.config(t))
	for i := range 2 {
		select {
		case at := <-seen:
			if d := at.Sub(start); d < time.Duration(i+1)*900*time.Millisecond {
				t.Errorf("keepalive %d after %v, before the interval", i+1, d)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("no keepalive %d", i+1)
		}
	}
	// The count follows the write the server has seen.
	for deadline := time.Now().Add(time.Second); counterValue(s, "keepalives_sent") < 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if s.Err() != nil || counterValue(s, "keepalives_sent") < 2 {
		t.Errorf("session %v, keepalives_sent %d", s.Err(), counterValue(s, "keepalives_sent"))
	}
}

func TestClientCloseBounded(t *testing.T) {
	fs := newFakeServer(t)
	hold := make(chan struct{})
	fs.onTunnel = func(*fakeTunnel) { <-hold } // never reads, never hangs up
	defer close(hold)
	s := connectFake(t, fs, fs.config(t))
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > closeTimeout+time.Second {
		t.Errorf("Close took %v against a server that does not hang up", d)
	}
}

func TestClientDTLS(t *testing.T) {
	before := goroutines()
	fs := newFakeServer(t)
	fs.withDTLS = true
	fs.tunnel.DTLS = &DTLSParams{DPD: 30, Keepalive: 30}
	step := make(chan string)
	serverErr := make(chan error, 1)
	toClient := [][]byte{randomBytes(1200), randomBytes(20)}
	fromClient := [][]byte{randomBytes(1200), randomBytes(30)}
	fs.onTunnel = func(ft *fakeTunnel) {
		serverErr <- func() error {
			if err := ft.acceptDTLS(); err != nil {
				return err
			}
			defer ft.dtls.Close()
			// The client's first probe, answered.
			typ, p, err := ft.readDTLS()
			if err != nil || typ != TypeDPDRequest {
				return errors.Join(errors.New("no DPD request first on DTLS"), err)
			}
			if err := ft.writeDTLS(TypeDPDReply, p); err != nil {
				return err
			}
			step <- "up"
			typ, p, err = ft.readDTLS()
			if err != nil || typ != TypeData || !bytes.Equal(p, fromClient[0]) {
				return errors.Join(errors.New("no data over DTLS"), err)
			}
			// Incoming on both channels.
			ft.writeDTLS(TypeData, toClient[0])
			ft.writeFrame(TypeData, toClient[1])
			probe := randomBytes(1000)
			ft.writeDTLS(TypeDPDRequest, probe)
			typ, p, err = ft.readDTLS()
			if err != nil || typ != TypeDPDReply || !bytes.Equal(p, probe) {
				return errors.Join(errors.New("DTLS DPD-RESP does not echo the request"), err)
			}
			step <- "echoed"
			// DTLS dies: the client goes back to CSTP.
			ft.dtls.Close()
			<-step
			typ, p, err = ft.readFrame()
			if err != nil || typ != TypeData || !bytes.Equal(p, fromClient[1]) {
				return errors.Join(errors.New("no data over CSTP after DTLS died"), err)
			}
			return nil
		}()
	}
	s := connectFake(t, fs, fs.config(t))
	select {
	case <-step:
	case err := <-serverErr:
		t.Fatalf("server: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Path() != PathDTLS {
		if time.Now().After(deadline) {
			t.Fatal("DTLS not up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	fs.mu.Lock()
	ids, appID := fs.helloIDs, fs.appID
	fs.mu.Unlock()
	if len(ids) == 0 || !bytes.Equal(ids[0], appID) {
		t.Errorf("ClientHello session_ids %x, want the App-ID %x", ids, appID)
	}
	if err := s.WritePacket(fromClient[0]); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range toClient {
		p, err := readPacket(t, s)
		if err != nil {
			t.Fatal(err)
		}
		got[string(p)] = true
	}
	for _, p := range toClient {
		if !got[string(p)] {
			t.Errorf("a packet of %d bytes did not arrive", len(p))
		}
	}
	select {
	case <-step:
	case err := <-serverErr:
		t.Fatalf("server: %v", err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for s.Path() != PathCSTP {
		if time.Now().After(deadline) {
			t.Fatal("still on DTLS after the server closed it")
		}
		time.Sleep(5 * time.Millisecond)
	}
	step <- "go on"
	if err := s.WritePacket(fromClient[1]); err != nil {
		t.Fatal(err)
	}
	if err := <-serverErr; err != nil {
		t.Fatalf("server: %v", err)
	}
	s.Close()
	for name, want := range map[string]uint64{
		"dtls_tx_packets": 1, "dtls_rx_packets": 1, "cstp_tx_packets": 1, "cstp_rx_packets": 1,
		"dtls_handshakes": 1, "dtls_dead": 1, "dpd_answered": 1,
	} {
		if got := counterValue(s, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	fs.close()
	checkNoLeak(t, before)
}

func TestClientDTLSDeadPeer(t *testing.T) {
	fs := newFakeServer(t)
	fs.withDTLS = true
	fs.tunnel.DTLS = &DTLSParams{DPD: 1}
	fs.onTunnel = func(ft *fakeTunnel) {
		if err := ft.acceptDTLS(); err != nil {
			t.Errorf("server: %v", err)
			return
		}
		defer ft.dtls.Close()
		// Never answers on DTLS; keeps the CSTP side until it hangs up.
		for {
			if _, _, err := ft.readFrame(); err != nil && !isTimeout(err) {
				return
			}
		}
	}
	s := connectFake(t, fs, fs.config(t))
	deadline := time.Now().Add(5 * time.Second)
	for s.Path() != PathDTLS {
		if time.Now().After(deadline) {
			t.Fatal("DTLS not up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	up := time.Now()
	for s.Path() != PathCSTP {
		if time.Since(up) > 5*time.Second {
			t.Fatal("DTLS still in use 5 s into a DTLS DPD of 1 s with no answer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(up); d < 1500*time.Millisecond {
		t.Errorf("DTLS declared dead after %v, before 2×DPD", d)
	}
	if counterValue(s, "dtls_dead") != 1 || s.Err() != nil {
		t.Errorf("dtls_dead %d, session %v: want DTLS dead and the session alive", counterValue(s, "dtls_dead"), s.Err())
	}
}
