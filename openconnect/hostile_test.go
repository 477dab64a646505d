package openconnect

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"
)

// The server against clients that misbehave: each one loses its own
// connection, counted by reason, and nobody else notices.

// rawClient speaks the protocol by hand, to say what a real client would not.
type rawClient struct {
	tc *tls.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, s *ocServer) *rawClient {
	t.Helper()
	addr := strings.TrimSuffix(strings.TrimPrefix(s.url, "https://"), "/")
	tc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { tc.Close() })
	return &rawClient{tc: tc, br: NewReader(tc)}
}

func (c *rawClient) do(t *testing.T, method, target string, h Headers, body []byte, connect bool) *Response {
	t.Helper()
	if _, err := c.tc.Write(AppendRequest(nil, method, target, h, body)); err != nil {
		t.Fatal(err)
	}
	resp, err := ReadResponse(c.br, connect)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	return resp
}

// login logs alice in and returns the cookie.
func (c *rawClient) login(t *testing.T) string {
	t.Helper()
	resp := c.do(t, "POST", "/", Headers{{"Content-Type", "application/x-www-form-urlencoded"}},
		[]byte("username=alice&password=correct+horse+battery"), false)
	if resp.Status != 200 {
		t.Fatalf("login: %d %s", resp.Status, resp.Reason)
	}
	for _, v := range resp.Headers.Values("Set-Cookie") {
		if c, ok := strings.CutPrefix(v, CookieName+"="); ok {
			c, _, _ = strings.Cut(c, ";")
			return c
		}
	}
	t.Fatal("no webvpn cookie")
	return ""
}

func (c *rawClient) connect(t *testing.T, cookie string) (*Response, Tunnel) {
	t.Helper()
	req := ConnectRequest{Cookie: cookie, UserAgent: "test", IPv4: true, PSK: true}
	resp := c.do(t, "CONNECT", ConnectPath, req.Headers("vpn.test"), nil, true)
	if resp.Status != 200 {
		return resp, Tunnel{}
	}
	tun, err := ParseTunnel(resp.Headers)
	if err != nil {
		t.Fatal(err)
	}
	return resp, tun
}

func waitReason(t *testing.T, s *ocServer, reason string, n uint64) {
	t.Helper()
	for range 200 {
		if s.srv.Stats().Reasons()[reason] >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("reason %s counted %d times, want %d (%v)", reason, s.srv.Stats().Reasons()[reason], n, s.srv.Stats().Reasons())
}

func TestReconnectKeepsSession(t *testing.T) {
	s := startServer(t, true)
	c1 := dialRaw(t, s)
	cookie := c1.login(t)
	_, tun1 := c1.connect(t, cookie)
	ss := waitSession(t, s)
	if tun1.Address4.String() != "100.64.70.2/24" || tun1.DTLS == nil || len(tun1.DTLS.AppID) != 32 {
		t.Fatalf("tunnel %+v", tun1)
	}
	// The connection dies; the client comes back with its cookie.
	c1.tc.Close()
	c2 := dialRaw(t, s)
	resp, tun2 := c2.connect(t, cookie)
	if resp.Status != 200 || tun2.Address4 != tun1.Address4 {
		t.Fatalf("reconnect: %d, address %v (was %v)", resp.Status, tun2.Address4, tun1.Address4)
	}
	if string(tun2.DTLS.AppID) == string(tun1.DTLS.AppID) {
		t.Error("a new connection kept the old DTLS App-ID (its key changed)")
	}
	select {
	case <-s.h.up:
		t.Fatal("a reconnect started a second session")
	case <-time.After(100 * time.Millisecond):
	}
	if got := s.srv.Sessions(); len(got) != 1 || got[0] != ss {
		t.Fatalf("sessions after reconnect: %v", got)
	}
	// Data flows on the new connection.
	pkt := udpPacket(tun2.Address4.Addr(), tun2.Address4.Addr().Next(), 1, 2, []byte("hello"))
	c2.tc.Write(AppendFrame(nil, TypeData, pkt))
	fr := NewFrameReader(c2.br)
	typ, payload, err := fr.Next()
	if err != nil || typ != TypeData || !strings.HasSuffix(string(payload), "hello") {
		t.Fatalf("echo: %v %v %q", typ, err, payload)
	}
	// A DPD request is answered with the same payload.
	probe := []byte("dpd probe 12345")
	c2.tc.Write(AppendFrame(nil, TypeDPDRequest, probe))
	typ, payload, err = fr.Next()
	if err != nil || typ != TypeDPDReply || string(payload) != string(probe) {
		t.Fatalf("DPD reply: %v %v %q", typ, err, payload)
	}
	// Logging out ends the session, and the cookie with it.
	c2.tc.Write(AppendFrame(nil, TypeDisconnect, append([]byte{DisconnectLogout}, "bye"...)))
	select {
	case <-s.h.down:
	case <-time.After(2 * time.Second):
		t.Fatal("logout did not end the session")
	}
	c3 := dialRaw(t, s)
	if resp, _ := c3.connect(t, cookie); resp.Status != 401 {
		t.Fatalf("the cookie of a logged-out session got %d", resp.Status)
	}
	waitReason(t, s, ReasonBadCookie, 1)
}

func TestMalformedFrameEndsOnlyItsConnection(t *testing.T) {
	s := startServer(t, false)
	good := dialRaw(t, s)
	_, tun := good.connect(t, good.login(t))
	<-s.h.up
	bad := dialRaw(t, s)
	bad.connect(t, bad.login(t))
	<-s.h.up
	bad.tc.Write([]byte("STF\x02\x00\x00\x00\x00")) // a wrong version byte
	waitReason(t, s, ReasonBadFrame, 1)
	bad.tc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := bad.br.ReadByte(); err == nil {
		t.Error("the connection with a malformed frame stayed open")
	}
	// An oversized length, on another connection.
	bad2 := dialRaw(t, s)
	bad2.connect(t, bad2.login(t))
	<-s.h.up
	bad2.tc.Write([]byte("STF\x01\xff\xff\x00\x00"))
	waitReason(t, s, ReasonBadFrame, 2)
	// The good session goes on.
	pkt := udpPacket(tun.Address4.Addr(), tun.Address4.Addr().Next(), 1, 2, []byte("still here"))
	good.tc.Write(AppendFrame(nil, TypeData, pkt))
	typ, payload, err := NewFrameReader(good.br).Next()
	if err != nil || typ != TypeData || !strings.HasSuffix(string(payload), "still here") {
		t.Fatalf("the good session: %v %v", typ, err)
	}
}

func TestBadRequestsAreRefused(t *testing.T) {
	s := startServer(t, false)
	cases := []struct {
		name, raw, reason string
		status            int
	}{
		{"unknown cookie", "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=nope\r\n\r\n", ReasonBadCookie, 401},
		{"no cookie", "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n\r\n", ReasonBadConnect, 401},
		{"wrong path", "CONNECT /other HTTP/1.1\r\nCookie: webvpn=x\r\n\r\n", ReasonBadConnect, 404},
		{"long header", "POST / HTTP/1.1\r\nX-A: " + strings.Repeat("a", MaxLine) + "\r\n\r\n", ReasonOversized, 400},
		{"huge body", "POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", ReasonOversized, 400},
		{"bad xml", "POST / HTTP/1.1\r\nContent-Length: 13\r\n\r\n<config-auth>", ReasonBadAuthBody, 400},
		{"chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", ReasonBadRequest, 400},
		{"bad method", "DELETE / HTTP/1.1\r\n\r\n", ReasonBadRequest, 405},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := s.srv.Stats().Reasons()[tc.reason]
			c := dialRaw(t, s)
			c.tc.Write([]byte(tc.raw))
			resp, err := ReadResponse(c.br, false)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != tc.status {
				t.Errorf("status %d, want %d", resp.Status, tc.status)
			}
			waitReason(t, s, tc.reason, before+1)
			if n := len(s.srv.Sessions()); n != 0 {
				t.Errorf("%d sessions", n)
			}
		})
	}
}

func TestSetupTimeoutAndLimit(t *testing.T) {
	cert, _ := testCert(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &echoHandler{up: make(chan *Session, 8), down: make(chan *Session, 8)}
	srv, err := NewServer(ServerConfig{
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Auth: &testAuth{}, Handler: h,
		SetupTimeout: 500 * time.Millisecond, MaxSetup: 1200,
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s := &ocServer{srv: srv, url: "https://" + ln.Addr().String() + "/", h: h}

	// 1000 connections that never say anything, and one slowloris that
	// trickles a request a byte at a time.
	var idle []net.Conn
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
	})
	for range 1000 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	slow := dialRaw(t, s)
	go func() {
		for _, b := range []byte("POST / HTTP/1.1\r\nHost: x") {
			if _, err := slow.tc.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	// A real client still logs in meanwhile.
	c := dialRaw(t, s)
	if resp, _ := c.connect(t, c.login(t)); resp.Status != 200 {
		t.Fatalf("login beside 1000 idle connections: %d", resp.Status)
	}
	// The idle ones and the slowloris are cut at the setup timeout.
	waitReason(t, s, ReasonTLSHandshake, 1000)
	slow.tc.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := slow.br.ReadByte(); err == nil {
		t.Error("the slowloris connection was answered")
	}
	if n := srv.setup.Load(); n != 0 {
		t.Errorf("%d connections still in setup", n)
	}
	// The tunnel connection is not in setup and outlived the timeout.
	time.Sleep(600 * time.Millisecond)
	if len(srv.Sessions()) != 1 || srv.Sessions()[0].Path() != "cstp" {
		t.Error("the logged-in client lost its tunnel at the setup timeout")
	}
}

func TestDTLSFromUnknownSourceIsCounted(t *testing.T) {
	s := startServer(t, true)
	c, err := net.Dial("udp", s.srv.cfg.DTLS.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello := make([]byte, 100)
	hello[0], hello[13], hello[59] = 22, 1, 32 // a ClientHello naming no session
	c.Write(hello)
	c.Write([]byte("garbage"))
	waitReason(t, s, ReasonDTLSUnknown, 2)
}
