//go:build linux

package openconnect

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/testenv"
)

// A real ocserv (Debian's 1.1.6) in a network namespace of its own,
// reached over a veth from a second namespace where the client's sockets
// live. Nothing is added to the root namespace.

const (
	ocservAddr  = "198.18.60.1" // the server's end of the veth
	ocClientIP  = "198.18.60.2" // the client's
	ocservPort  = "4443"
	ocUser      = "alice"
	ocPassword  = "correct horse battery staple"
	ocNetwork   = "100.64.60.0/24"
	ocDNS       = "100.64.60.1"
	ocRoute     = "100.64.61.0/24"
	ocDomain    = "ptun.test"
	ocKeepalive = 5
	ocDPD       = 10
)

// syncBuffer collects a process's output for the test's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type ocservHarness struct {
	dir      string
	srv, cli *netns.NS
	pin      string
	occtlBin string
	sock     string // occtl's socket
	log      *syncBuffer
	exited   chan struct{}
}

// newOcservNS makes a namespace that is deleted, with what still runs in
// it, when t ends.
func newOcservNS(t *testing.T, role string) *netns.NS {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	ns, err := netns.New("ptun-oc" + role + "-" + hex.EncodeToString(b[:]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.KillProcesses(); err != nil {
			t.Error(err)
		}
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

// writeCert makes a self-signed ECDSA P-256 certificate for the server's
// address and returns its pin.
func writeCert(t *testing.T, certFile, keyFile string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "vpn.ptun.test"},
		DNSNames:     []string{"vpn.ptun.test"},
		IPAddresses:  []net.IP{net.ParseIP(ocservAddr)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return PinSHA256(cert)
}

// startOcserv runs ocserv in a namespace and returns once it listens.
func startOcserv(t *testing.T) *ocservHarness {
	t.Helper()
	testenv.RequireRoot(t)
	ocserv := testenv.RequireTool(t, "ocserv", "ocserv")
	ocpasswd := testenv.RequireTool(t, "ocpasswd", "ocserv")
	h := &ocservHarness{occtlBin: testenv.RequireTool(t, "occtl", "ocserv"), log: &syncBuffer{}, exited: make(chan struct{})}
	testenv.RequireTool(t, "ip", "iproute2")

	// Not t.TempDir: its parent is 0700, and ocserv's workers run as
	// nobody.
	dir, err := os.MkdirTemp("", "ptun-ocserv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.dir = dir
	h.sock = filepath.Join(dir, "occtl.socket")
	h.pin = writeCert(t, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))

	pw := exec.Command(ocpasswd, "-c", filepath.Join(dir, "ocpasswd"), ocUser)
	pw.Stdin = strings.NewReader(ocPassword + "\n")
	if out, err := pw.CombinedOutput(); err != nil {
		t.Fatalf("ocpasswd: %v\n%s", err, out)
	}

	conf := fmt.Sprintf(`auth = "plain[passwd=%[1]s/ocpasswd]"
tcp-port = %[2]s
udp-port = %[2]s
run-as-user = nobody
run-as-group = nogroup
socket-file = %[1]s/ocserv.socket
pid-file = %[1]s/ocserv.pid
use-occtl = true
occtl-socket-file = %[1]s/occtl.socket
server-cert = %[1]s/cert.pem
server-key = %[1]s/key.pem
isolate-workers = false
max-clients = 16
max-same-clients = 0
max-ban-score = 0
rate-limit-ms = 0
min-reauth-time = 0
auth-timeout = 60
cookie-timeout = 60
idle-timeout = 120
keepalive = %[3]d
dpd = %[4]d
mobile-dpd = %[4]d
switch-to-tcp-timeout = 25
try-mtu-discovery = false
cisco-client-compat = false
dtls-legacy = false
dtls-psk = true
tls-priorities = "NORMAL:%%SERVER_PRECEDENCE:%%COMPAT"
match-tls-dtls-ciphers = false
device = vpns
predictable-ips = true
ipv4-network = %[5]s
dns = %[6]s
route = %[7]s
default-domain = %[8]s
`, dir, ocservPort, ocKeepalive, ocDPD, ocNetwork, ocDNS, ocRoute, ocDomain)
	confFile := filepath.Join(dir, "ocserv.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	h.srv = newOcservNS(t, "s")
	h.cli = newOcservNS(t, "c")
	if err := netns.Veth(h.srv, "oc-srv", h.cli, "oc-cli", 1500); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.AddAddr("oc-srv", netip.MustParsePrefix(ocservAddr+"/24")); err != nil {
		t.Fatal(err)
	}
	if err := h.cli.AddAddr("oc-cli", netip.MustParsePrefix(ocClientIP+"/24")); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(ocserv, "-f", "-d", "2", "-c", confFile)
	cmd.Stdout, cmd.Stderr = h.log, h.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.srv.Start(cmd); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(h.exited) }()
	t.Cleanup(func() {
		// ocserv, sec-mod and the workers share the process group.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(3 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-h.exited
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("ocserv's log:\n%s", h.log.String())
		}
	})

	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := h.dial(context.Background(), "tcp", net.JoinHostPort(ocservAddr, ocservPort))
		if err == nil {
			c.Close()
			return h
		}
		select {
		case <-h.exited:
			t.Fatalf("ocserv exited: %v\n%s", cmd.ProcessState, h.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ocserv does not listen after 10 s: %v\n%s", err, h.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dial opens a socket in the client's namespace (ClientConfig.Dial).
func (h *ocservHarness) dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.cli.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

func (h *ocservHarness) config(t *testing.T, password string) ClientConfig {
	return ClientConfig{
		Server:   net.JoinHostPort(ocservAddr, ocservPort),
		Pin:      h.pin,
		Username: ocUser,
		Password: password,
		Hostname: "ptun-test",
		Dial:     h.dial,
		Logf:     t.Logf,
	}
}

// occtl runs occtl -j against the server and decodes its JSON into out
// (unless nil). It runs in
// the server's namespace, where it finds the tun devices it reports on.
func (h *ocservHarness) occtl(t *testing.T, out any, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.srv.Name, h.occtlBin, "-j", "-s", h.sock}, args...)...)
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("occtl %v: %v\n%s%s", args, err, b, stderr.Bytes())
	}
	if out == nil {
		return
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("occtl %v: %v\n%s", args, err, b)
	}
}

// users returns the users ocserv has connected.
func (h *ocservHarness) users(t *testing.T) []map[string]any {
	var users []map[string]any
	h.occtl(t, &users, "show", "users")
	return users
}

// tunAddr finds the address ocserv gave its end of the tun device that
// serves the client at peer.
func (h *ocservHarness) tunAddr(t *testing.T, peer netip.Addr) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := exec.Command("ip", "-j", "-n", h.srv.Name, "-4", "addr", "show").Output()
		if err != nil {
			t.Fatalf("ip addr: %v", err)
		}
		var links []struct {
			Ifname   string `json:"ifname"`
			AddrInfo []struct {
				Local   string `json:"local"`
				Address string `json:"address"`
			} `json:"addr_info"`
		}
		if err := json.Unmarshal(b, &links); err != nil {
			t.Fatalf("ip -j addr: %v\n%s", err, b)
		}
		for _, l := range links {
			for _, a := range l.AddrInfo {
				if strings.HasPrefix(l.Ifname, "vpns") && a.Address == peer.String() {
					return netip.MustParseAddr(a.Local)
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no vpns device for %v in the server's namespace:\n%s", peer, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClientAgainstOcserv logs in to a real ocserv (a wrong password, then
// the right one), connects, checks what it pushed, pings its tun address
// through the tunnel over DTLS and, with DTLS disabled, over CSTP, and
// logs out.
func TestClientAgainstOcserv(t *testing.T) {
	h := startOcserv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	_, err := Login(ctx, h.config(t, "wrong password"))
	var ae *AuthError
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &ae) {
		t.Fatalf("Login with a wrong password: %v, want an AuthError", err)
	}
	t.Logf("wrong password: %v", err)

	t.Run("DTLS", func(t *testing.T) { h.session(ctx, t, false) })
	t.Run("CSTP", func(t *testing.T) { h.session(ctx, t, true) })
	t.Run("Kick", func(t *testing.T) { h.kick(ctx, t) })
}

// kick has occtl disconnect the user: the session must end with the
// server's DISCONNECT.
func (h *ocservHarness) kick(ctx context.Context, t *testing.T) {
	before := goroutines()
	s, err := LoginAndConnect(ctx, h.config(t, ocPassword))
	if err != nil {
		t.Fatalf("LoginAndConnect: %v", err)
	}
	defer s.Close()
	h.occtl(t, nil, "disconnect", "user", ocUser)
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session outlived occtl disconnect by 5 s")
	}
	t.Logf("after occtl disconnect: %v", s.Err())
	if !errors.Is(s.Err(), ErrServerDisconnect) {
		t.Errorf("Err %v, want ErrServerDisconnect", s.Err())
	}
	// Packets that came before the DISCONNECT (ocserv's tun sends IPv6
	// link-local ones) may still be read; then the session's error.
	var rerr error
	for range 100 {
		if _, rerr = s.ReadPacket(make([]byte, 2048)); rerr != nil {
			break
		}
	}
	if !errors.Is(rerr, s.Err()) {
		t.Errorf("ReadPacket after the kick: %v", rerr)
	}
	s.Close()
	checkNoLeak(t, before)
}

func (h *ocservHarness) session(ctx context.Context, t *testing.T, noDTLS bool) {
	before := goroutines()
	cfg := h.config(t, ocPassword)
	cfg.DisableDTLS = noDTLS
	cookie, err := Login(ctx, cfg)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	s, err := Connect(ctx, cfg, cookie)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { s.Close() })

	tun := s.Tunnel()
	t.Logf("pushed: address %v, DNS %v, domains %v, routes %v, MTU %d (base %d), DPD %d, keepalive %d, DTLS %+v",
		tun.Address4, tun.DNS, tun.DefaultDomain, tun.Include, tun.MTU, tun.BaseMTU, tun.DPD, tun.Keepalive, tun.DTLS)
	if !netip.MustParsePrefix(ocNetwork).Contains(tun.Address4.Addr()) {
		t.Errorf("address %v, want one in %s", tun.Address4, ocNetwork)
	}
	if !slices.Contains(tun.DNS, netip.MustParseAddr(ocDNS)) {
		t.Errorf("DNS %v, want %s", tun.DNS, ocDNS)
	}
	if !slices.Contains(tun.Include, netip.MustParsePrefix(ocRoute)) {
		t.Errorf("routes %v, want %s", tun.Include, ocRoute)
	}
	if !slices.Contains(tun.DefaultDomain, ocDomain) {
		t.Errorf("domains %v, want %s", tun.DefaultDomain, ocDomain)
	}
	if tun.MTU < 1200 || tun.MTU > 1500 {
		t.Errorf("MTU %d, want one in [1200, 1500] on a 1500-byte link", tun.MTU)
	}
	if tun.DPD != ocDPD || tun.Keepalive != ocKeepalive {
		t.Errorf("DPD %d keepalive %d, want %d and %d", tun.DPD, tun.Keepalive, ocDPD, ocKeepalive)
	}

	if noDTLS {
		if tun.DTLS != nil {
			t.Errorf("DTLS offered to a client that asked for none: %+v", tun.DTLS)
		}
	} else {
		if tun.DTLS == nil {
			t.Fatal("ocserv offered no DTLS")
		}
		deadline := time.Now().Add(5 * time.Second)
		for s.Path() != PathDTLS {
			if time.Now().After(deadline) {
				t.Fatalf("DTLS not up after 5 s (stats %v)", s.Stats())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Ping ocserv's end of the tunnel.
	me := tun.Address4.Addr()
	peer := h.tunAddr(t, me)
	replies := make(chan []byte, 16)
	go func() {
		for {
			b := make([]byte, 2048)
			n, err := s.ReadPacket(b)
			if err != nil {
				close(replies)
				return
			}
			select {
			case replies <- b[:n]:
			case <-s.Done():
			}
		}
	}()
	const pings = 5
	got := 0
	payload := bytes.Repeat([]byte("ptun"), 250) // a 1028-byte packet: no fragment, no tiny record
	for seq := uint16(1); seq <= pings; seq++ {
		if err := s.WritePacket(icmpEcho(me, peer, 0x7074, seq, payload)); err != nil {
			t.Fatalf("WritePacket: %v", err)
		}
		timeout := time.After(3 * time.Second)
	wait:
		for {
			select {
			case p, ok := <-replies:
				if !ok {
					t.Fatalf("session ended: %v", s.Err())
				}
				src, dst, id, rseq, data, ok := parseEchoReply(p)
				if ok && src == peer && dst == me && id == 0x7074 && rseq == seq && bytes.Equal(data, payload) {
					got++
					break wait
				}
				t.Logf("ignoring a packet of %d bytes: % x…", len(p), p[:min(len(p), 24)])
			case <-timeout:
				t.Fatalf("no reply to echo request %d (stats %v)", seq, s.Stats())
			}
		}
	}
	t.Logf("%d/%d echo replies from %v over %s; stats %v", got, pings, peer, s.Path(), s.Stats())

	dtlsTx, dtlsRx := counterValue(s, "dtls_tx_packets"), counterValue(s, "dtls_rx_packets")
	cstpTx, cstpRx := counterValue(s, "cstp_tx_packets"), counterValue(s, "cstp_rx_packets")
	users := h.users(t)
	if len(users) != 1 {
		t.Fatalf("occtl show users: %v, want one user", users)
	}
	cipher, _ := users[0]["DTLS cipher"].(string)
	t.Logf("occtl: user %v, TLS %q, DTLS %q", users[0]["Username"], users[0]["TLS ciphersuite"], cipher)
	if noDTLS {
		if s.Path() != PathCSTP || cstpTx < pings || cstpRx < pings || dtlsTx+dtlsRx != 0 {
			t.Errorf("path %s, CSTP %d/%d packets, DTLS %d/%d: want all on CSTP", s.Path(), cstpTx, cstpRx, dtlsTx, dtlsRx)
		}
	} else {
		if s.Path() != PathDTLS || dtlsTx < pings || dtlsRx < pings || cstpTx != 0 {
			t.Errorf("path %s, DTLS %d/%d packets, CSTP %d/%d: want all on DTLS", s.Path(), dtlsTx, dtlsRx, cstpTx, cstpRx)
		}
		if !strings.Contains(cipher, "DTLS") || !strings.Contains(cipher, "PSK") {
			t.Errorf("occtl reports DTLS cipher %q, want a DTLS PSK one", cipher)
		}
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !errors.Is(s.Err(), ErrSessionClosed) {
		t.Errorf("Err after Close: %v", s.Err())
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(h.users(t)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("ocserv still has users 5 s after Close: %v", h.users(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The logout ended the cookie.
	if _, err := Connect(ctx, cfg, cookie); !errors.Is(err, ErrCookieRejected) {
		t.Errorf("Connect with the logged-out cookie: %v, want ErrCookieRejected", err)
	}
	checkNoLeak(t, before)
}
