package openconnect

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// The server is tested against Debian's openconnect client in its
// script-tun mode (-S): openconnect hands its "tun" to a program of ours
// as a datagram socket (VPNFD), one IP packet per datagram. That program
// is this test binary (see TestMain), which passes the socket back to the
// test over a unix socket, with the environment openconnect gave it: what
// the server pushed.

const helperEnv = "OPENCONNECT_TEST_HELPER_SOCK"

func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		os.Exit(scriptTunHelper(sock))
	}
	os.Exit(m.Run())
}

// scriptTunHelper is the script openconnect runs: it sends VPNFD and the
// environment to the test, then waits for the test to let it go.
func scriptTunHelper(sock string) int {
	fdStr := os.Getenv("VPNFD")
	if fdStr == "" {
		return 0 // an invocation that is not the tunnel's
	}
	var fd int
	fmt.Sscan(fdStr, &fd)
	c, err := net.Dial("unix", sock)
	if err != nil {
		return 1
	}
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "INTERNAL_") || strings.HasPrefix(k, "CISCO_") || k == "reason" || k == "TUNDEV" || k == "IDLE_TIMEOUT" {
			env[k] = v
		}
	}
	b, _ := json.Marshal(env)
	if _, _, err := c.(*net.UnixConn).WriteMsgUnix(b, syscall.UnixRights(fd), nil); err != nil {
		return 1
	}
	var one [1]byte
	c.Read(one[:]) // until the test closes it
	return 0
}

// testCert makes a self-signed certificate for 127.0.0.1 and its pin.
func testCert(t testing.TB) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vpn.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"vpn.test"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, "pin-sha256:" + base64.StdEncoding.EncodeToString(sum[:])
}

type testAuth struct{ calls chan string }

func (a *testAuth) Authenticate(_ context.Context, user, pass string, _ netip.AddrPort) (*Grant, error) {
	if a.calls != nil {
		a.calls <- user
	}
	if user != "alice" || pass != "correct horse battery" {
		return nil, ErrLoginFailed
	}
	return &Grant{User: "alice", Device: "alice/oc", Tunnel: Tunnel{
		Address4:      netip.MustParsePrefix("100.64.70.2/24"),
		DNS:           []netip.Addr{netip.MustParseAddr("100.64.70.1")},
		DefaultDomain: []string{"corp.test"},
		Include:       []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24")},
	}}, nil
}

// echoHandler answers each UDP packet to 100.64.70.1 with its mirror.
type echoHandler struct {
	up, down chan *Session
}

func (h *echoHandler) SessionUp(s *Session)   { h.up <- s }
func (h *echoHandler) SessionDown(s *Session) { h.down <- s }
func (h *echoHandler) Deliver(s *Session, pkt []byte) {
	if len(pkt) < 28 || pkt[0]>>4 != 4 || pkt[9] != 17 {
		return
	}
	r := bytes.Clone(pkt)
	copy(r[12:16], pkt[16:20])
	copy(r[16:20], pkt[12:16])
	copy(r[20:22], pkt[22:24])
	copy(r[22:24], pkt[20:22])
	s.Send(r)
}

// udpPacket builds an IPv4/UDP packet (checksums aside: no one checks).
func udpPacket(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 17
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dport)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

type ocServer struct {
	srv       *Server
	url, pin  string
	auth      *testAuth
	h         *echoHandler
	stopped   bool
	closeOnce sync.Once
}

func startServer(t testing.TB, withDTLS bool) *ocServer {
	t.Helper()
	cert, pin := testCert(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ServerConfig{
		TLS:     &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:    &testAuth{},
		Handler: &echoHandler{up: make(chan *Session, 8), down: make(chan *Session, 8)},
		MTU:     1400, DPD: 10 * time.Second, DTLSDPD: 5 * time.Second, CookieTTL: 30 * time.Second,
		Logf: t.Logf,
	}
	if withDTLS {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg.DTLS = pc
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	s := &ocServer{srv: srv, url: "https://" + ln.Addr().String() + "/", pin: pin,
		auth: cfg.Auth.(*testAuth), h: cfg.Handler.(*echoHandler)}
	t.Cleanup(func() { srv.Close() })
	return s
}

// ocClient is a running openconnect and its tunnel socket.
type ocClient struct {
	cmd     *exec.Cmd
	tun     *net.UnixConn
	env     map[string]string
	hold    net.Conn // the helper waits until this closes
	outPath string
	done    chan struct{} // closed when openconnect has exited
	err     error         // its exit status, once done
}

func startOpenconnect(t *testing.T, s *ocServer, password string, extra ...string) (*ocClient, error) {
	t.Helper()
	oc := testenv.RequireTool(t, "openconnect", "openconnect")
	dir := t.TempDir()
	sock := filepath.Join(dir, "helper.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--non-inter", "--passwd-on-stdin", "-u", "alice", "--servercert", s.pin,
		"-S", "--script", "exec " + self, "--reconnect-timeout", "10"}, extra...)
	args = append(args, s.url)
	cmd := exec.Command(oc, args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+sock)
	cmd.Stdin = strings.NewReader(password + "\n")
	// A file, not a buffer: Wait must not wait for a pipe that the
	// script, openconnect's child, may still hold.
	outPath := filepath.Join(dir, "openconnect.log")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &ocClient{cmd: cmd, outPath: outPath, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("openconnect output:\n%s", c.output())
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if c.hold != nil {
			c.hold.Close()
		}
		if c.tun != nil {
			c.tun.Close()
		}
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			t.Errorf("openconnect (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
		}
	})
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		conn, err := ln.AcceptUnix()
		if err == nil {
			accepted <- conn
		}
	}()
	select {
	case <-c.done:
		return c, fmt.Errorf("openconnect exited: %v", c.err)
	case <-time.After(20 * time.Second):
		t.Fatalf("openconnect did not start its tunnel in 20 s")
	case conn := <-accepted:
		c.hold = conn
		buf := make([]byte, 8192)
		oob := make([]byte, 64)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			t.Fatalf("no descriptor from the helper: %v", err)
		}
		fds, err := syscall.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			t.Fatalf("no descriptor from the helper: %v", err)
		}
		f := os.NewFile(uintptr(fds[0]), "vpnfd")
		fc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		c.tun = fc.(*net.UnixConn)
		if err := json.Unmarshal(buf[:n], &c.env); err != nil {
			t.Fatal(err)
		}
	}
	return c, nil
}

func (c *ocClient) output() string {
	b, _ := os.ReadFile(c.outPath)
	return string(b)
}

// exchange sends n packets into the tunnel and reads their echoes.
func (c *ocClient) exchange(t *testing.T, n int) {
	t.Helper()
	src, dst := netip.MustParseAddr("100.64.70.2"), netip.MustParseAddr("100.64.70.1")
	buf := make([]byte, 2048)
	for i := range n {
		payload := fmt.Appendf(nil, "ping %d %s", i, strings.Repeat("x", i*20))
		if _, err := c.tun.Write(udpPacket(src, dst, 4000, 5000, payload)); err != nil {
			t.Fatal(err)
		}
		c.tun.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := c.tun.Read(buf)
		if err != nil {
			t.Fatalf("packet %d: no echo: %v", i, err)
		}
		if m < 28 || !bytes.Equal(buf[28:m], payload) || netip.AddrFrom4([4]byte(buf[16:20])) != src {
			t.Fatalf("packet %d: echo %x", i, buf[:m])
		}
	}
}

// atLeast waits up to a second for a counter to reach n and returns it.
func atLeast(c *atomic.Uint64, n uint64) uint64 {
	for range 100 {
		if c.Load() >= n {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c.Load()
}

func waitSession(t *testing.T, s *ocServer) *Session {
	t.Helper()
	select {
	case ss := <-s.h.up:
		return ss
	case <-time.After(10 * time.Second):
		t.Fatal("no session came up")
	}
	return nil
}

func TestOpenconnectClientCSTP(t *testing.T) {
	s := startServer(t, true)
	c, err := startOpenconnect(t, s, "correct horse battery", "--no-dtls")
	if err != nil {
		t.Fatal(err)
	}
	ss := waitSession(t, s)
	want := map[string]string{
		"INTERNAL_IP4_ADDRESS": "100.64.70.2", "INTERNAL_IP4_NETMASK": "255.255.255.0",
		"INTERNAL_IP4_DNS": "100.64.70.1", "CISCO_DEF_DOMAIN": "corp.test",
		"CISCO_SPLIT_INC": "1", "CISCO_SPLIT_INC_0_ADDR": "198.18.5.0", "CISCO_SPLIT_INC_0_MASKLEN": "24",
	}
	for k, v := range want {
		if c.env[k] != v {
			t.Errorf("%s = %q, want %q (env %v)", k, c.env[k], v, c.env)
		}
	}
	if c.env["INTERNAL_IP4_MTU"] == "" {
		t.Errorf("no INTERNAL_IP4_MTU pushed: %v", c.env)
	}
	c.exchange(t, 50)
	if got := ss.CSTP.RxPackets.Load(); got < 50 {
		t.Errorf("CSTP received %d packets, want >= 50", got)
	}
	if got := atLeast(&ss.CSTP.TxPackets, 50); got < 50 {
		t.Errorf("CSTP sent %d packets, want >= 50", got)
	}
	if ss.DTLS.RxPackets.Load() != 0 || ss.Path() != "cstp" {
		t.Errorf("with --no-dtls: path %q, %d DTLS packets", ss.Path(), ss.DTLS.RxPackets.Load())
	}
	// A clean exit logs out: the session ends at once.
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.h.down:
	case <-time.After(5 * time.Second):
		t.Fatal("the session did not end after openconnect's BYE")
	}
	if n := len(s.srv.Sessions()); n != 0 {
		t.Errorf("%d sessions after logout", n)
	}
}

func TestOpenconnectClientDTLS(t *testing.T) {
	s := startServer(t, true)
	c, err := startOpenconnect(t, s, "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	ss := waitSession(t, s)
	deadline := time.Now().Add(15 * time.Second)
	for ss.Path() != "dtls" {
		if time.Now().After(deadline) {
			t.Fatalf("DTLS did not come up in 15 s (path %q, reasons %v)", ss.Path(), s.srv.Stats().Reasons())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cstpBefore := ss.CSTP.RxPackets.Load()
	c.exchange(t, 50)
	if got := ss.DTLS.RxPackets.Load(); got < 50 {
		t.Errorf("DTLS received %d packets, want >= 50", got)
	}
	// The writer counts a packet after its write returns, which may be
	// after the client read it.
	if got := atLeast(&ss.DTLS.TxPackets, 50); got < 50 {
		t.Errorf("DTLS sent %d packets, want >= 50", got)
	}
	if got := ss.CSTP.RxPackets.Load() - cstpBefore; got != 0 {
		t.Errorf("%d packets came on CSTP once DTLS was up", got)
	}
	// Revocation ends the session and openconnect with it.
	if n := s.srv.Revoke("alice/oc"); n != 1 {
		t.Fatalf("Revoke ended %d sessions, want 1", n)
	}
	select {
	case <-s.h.down:
	case <-time.After(2 * time.Second):
		t.Fatal("the session did not end at revocation")
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("openconnect did not exit after revocation")
	}
}

func TestOpenconnectWrongPassword(t *testing.T) {
	s := startServer(t, false)
	_, err := startOpenconnect(t, s, "wrong password here")
	if err == nil {
		t.Fatal("openconnect connected with a wrong password")
	}
	if got := s.srv.Stats().LoginsFailed.Load(); got != 1 {
		t.Errorf("LoginsFailed = %d, want 1", got)
	}
	if n := len(s.srv.Sessions()); n != 0 {
		t.Errorf("%d sessions after a failed login", n)
	}
}
