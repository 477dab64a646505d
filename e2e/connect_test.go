package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/engine"
	"github.com/ptun-vpn/ptun/internal/netconf"
	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/openconnect"
)

// The ocserv of TestConnectToOcserv: in the lab's server namespace, in
// front of the lab's lan host.
const (
	ocPort      = 4443
	ocPool      = "100.64.7.0/24"
	ocPool6     = "2001:db8:7::/64"
	ocLanRoute  = "198.18.2.0/24"
	ocLanRoute6 = "2001:db8:2::/64"
	ocDNS       = "198.18.2.53"
	ocDomain    = "corp.example"
	ocExcluded  = "198.18.7.0/24" // bob's full tunnel leaves it out
	ocPasswordA = "correct horse battery staple"
	ocPasswordB = "tr0ub4dor&3"
)

// ocservProc is one ocserv in a namespace.
type ocservProc struct {
	ns, dir, sock string
	pin           string
	log           *bytes.Buffer
	occtlBin      string
}

// startOcserv runs ocserv in ns with two users: alice, who gets the lan
// route (a split tunnel), DNS and search domain; bob, whose file in
// config-per-user gives him a full tunnel less ocExcluded. It is stopped at
// cleanup, its log shown if the test failed.
func startOcserv(t *testing.T, ns string) *ocservProc {
	t.Helper()
	bin := testenv.RequireTool(t, "ocserv", "ocserv")
	ocpasswd := testenv.RequireTool(t, "ocpasswd", "ocserv")
	o := &ocservProc{ns: ns, log: &bytes.Buffer{}, occtlBin: testenv.RequireTool(t, "occtl", "ocserv")}
	// Not t.TempDir: its parent is 0700, and ocserv's workers run as
	// nobody.
	dir, err := os.MkdirTemp("", "ptun-e2e-ocserv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	o.dir, o.sock = dir, filepath.Join(dir, "occtl.socket")
	o.pin = writeOcservCert(t, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	for user, pw := range map[string]string{"alice": ocPasswordA, "bob": ocPasswordB} {
		cmd := exec.Command(ocpasswd, "-c", filepath.Join(dir, "ocpasswd"), user)
		cmd.Stdin = strings.NewReader(pw + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ocpasswd %s: %v\n%s", user, err, out)
		}
	}
	users := filepath.Join(dir, "users")
	if err := os.Mkdir(users, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(users, "bob"), []byte("route = default\nno-route = "+ocExcluded+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`auth = "plain[passwd=%[1]s/ocpasswd]"
tcp-port = %[2]d
udp-port = %[2]d
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
idle-timeout = 300
keepalive = 30
dpd = 10
mobile-dpd = 10
switch-to-tcp-timeout = 25
try-mtu-discovery = false
cisco-client-compat = false
dtls-legacy = false
dtls-psk = true
tls-priorities = "NORMAL:%%SERVER_PRECEDENCE:%%COMPAT"
match-tls-dtls-ciphers = false
device = vpns
predictable-ips = true
ipv4-network = %[3]s
ipv6-network = %[8]s
ipv6-subnet-prefix = 128
dns = %[4]s
route = %[5]s
route = %[9]s
default-domain = %[6]s
config-per-user = %[7]s/
`, dir, ocPort, ocPool, ocDNS, ocLanRoute, ocDomain, users, ocPool6, ocLanRoute6)
	confFile := filepath.Join(dir, "ocserv.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := nsCommand(ctx, ns, bin, "-f", "-d", "2", "-c", confFile)
	cmd.Stdout, cmd.Stderr = o.log, o.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// ocserv, sec-mod and the workers share the process group.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("ocserv's log:\n%s", lastLines(o.log.String(), 80))
		}
	})
	waitFor(t, 10*time.Second, "ocserv to listen", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("ocserv exited: %v\n%s", cmd.ProcessState, o.log.String())
		default:
		}
		out, err := run("", "ss", "-N", ns, "-Htln", "sport = :"+strconv.Itoa(ocPort))
		return err == nil && strings.Contains(out, "LISTEN"), out
	})
	return o
}

// writeOcservCert makes ocserv's self-signed certificate and returns its pin.
func writeOcservCert(t *testing.T, certFile, keyFile string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vpn.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"vpn.test"}, IPAddresses: []net.IP{serverLink4.AsSlice()},
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
	return openconnect.PinSHA256(cert)
}

// users is occtl's list of connected users.
func (o *ocservProc) users(t *testing.T) []map[string]any {
	t.Helper()
	out, err := runTimeout(10*time.Second, o.ns, o.occtlBin, "-j", "-s", o.sock, "show", "users")
	if err != nil {
		t.Fatalf("occtl show users: %v\n%s", err, out)
	}
	var users []map[string]any
	if err := json.Unmarshal([]byte(out), &users); err != nil {
		t.Fatalf("occtl show users: %v\n%s", err, out)
	}
	return users
}

// user is occtl's entry of user name, or nil.
func (o *ocservProc) user(t *testing.T, name string) map[string]any {
	for _, u := range o.users(t) {
		if u["Username"] == name {
			return u
		}
	}
	return nil
}

// ocEngines returns the pids of the confined OpenConnect engines of
// interface ifname (the second stage, after Confine re-executed it).
func ocEngines(t *testing.T, ifname string) []int {
	t.Helper()
	return processes(t, func(pid int) bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return processAlive(pid) && strings.Contains(string(b), "\x00--oc-client-engine-of\x00"+ifname+"\x00--confined")
	})
}

// uidOf is the real uid of process pid, or -1.
func uidOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return -1
}

// captureUnderlay captures what the lab's client sends to the server's
// side of the underlay; the function it returns stops it and counts the
// packets to the OpenConnect server's port (TCP and UDP), and lists the
// others but neighbour discovery and ARP.
func captureUnderlay(t *testing.T, l *lab) func() (toServer int, other []string) {
	t.Helper()
	tcpdump := testenv.RequireTool(t, "tcpdump", "tcpdump")
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	ctx, cancel := context.WithCancel(context.Background())
	capture := nsCommand(ctx, l.server.ns, tcpdump, "-i", "eth0", "-n", "-U", "-w", pcap,
		"src", "host", l.client.link4.String(), "or", "src", "host", l.client.link6.String())
	capture.Cancel = func() error { return capture.Process.Signal(syscall.SIGINT) }
	capture.WaitDelay = 5 * time.Second
	var capOut syncWriter
	capture.Stderr = &capOut
	if err := capture.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() (int, []string) {
		if stopped {
			return 0, nil
		}
		stopped = true
		cancel()
		capture.Wait()
		out := mustRun(t, "", tcpdump, "-n", "-r", pcap)
		n := 0
		var other []string
		server := " > " + l.server.link4.String() + "." + strconv.Itoa(ocPort) + ": "
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			switch {
			case line == "" || strings.Contains(line, "ARP") || strings.HasPrefix(line, "reading from file") ||
				strings.Contains(line, "ICMP6, neighbor") || strings.Contains(line, "ICMP6, router solicitation"):
			case strings.Contains(line, server):
				n++
			default:
				other = append(other, line)
			}
		}
		return n, other
	}
	t.Cleanup(func() { stop() })
	waitFor(t, 5*time.Second, "tcpdump to listen", func() (bool, string) {
		return strings.Contains(capOut.String(), "listening"), capOut.String()
	})
	return stop
}

// syncWriter is a bytes.Buffer safe for a writer and a reader.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// ptunConnect runs ptun connect in the client's namespace with the
// password on its stdin and returns its output.
func ptunConnect(t *testing.T, ns, password string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := nsCommand(ctx, ns, append([]string{ptun.bin, "connect"}, args...)...)
	cmd.Stdin = strings.NewReader(password + "\n")
	cmd.Env = append(os.Environ(), "LOG_LEVEL=verbose")
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// TestConnectToOcserv: ptun connect against Debian's ocserv, in real
// namespaces: ocserv on the lab's server in front of the lan host.
//
//   - alice (a split tunnel: the lan route, DNS, search domain) with the
//     kill switch, over DTLS: connect returns once the session is up;
//     ping and iperf3 TCP both ways reach the lan host; the pushed DNS and
//     search domain are in the namespace's resolv.conf; ptun status shows
//     the server and path dtls, and occtl a DTLS PSK cipher; the kill
//     switch refuses what is not for the tunnel or the server; ocserv's
//     worker killed (the TLS connection dies), the daemon connects again
//     with the cookie on the same interface with the kill switch on all
//     along (a capture of the underlay sees nothing from the client but
//     its packets to the server's port while applications try to get
//     around the tunnel); the engine killed, the front starts another that connects
//     with the cookie; occtl disconnect (the cookie refused): the daemon gives up
//     and status says so; ptun down removes everything. The engine runs
//     as its own uid, and the password is in no log and no record.
//   - bob (a full tunnel less an excluded route) with --no-dtls, over
//     CSTP: routes, ping and iperf3 both ways, status path cstp, occtl
//     without DTLS, down removes the rules, routes and resolver change.
//   - with --ipc shm (packets through the front), ping.
//   - a wrong pin (it names the right one), no pin (a certificate of no
//     system CA) and a wrong password fail ptun connect, saying why, and
//     leave nothing behind.
func TestConnectToOcserv(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	lan := l.addLan(t)
	mustRun(t, lan.ns, "ip", "route", "add", "default", "via", "198.18.2.1")
	mustRun(t, l.server.ns, "ip", "addr", "add", "2001:db8:2::1/64", "dev", "lan0", "nodad")
	mustRun(t, lan.ns, "ip", "addr", "add", "2001:db8:2::2/64", "dev", "lan0", "nodad")
	mustRun(t, lan.ns, "ip", "-6", "route", "add", "default", "via", "2001:db8:2::1")
	mustRun(t, l.server.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	oc := startOcserv(t, l.server.ns)

	nsEtc := filepath.Join("/etc/netns", l.client.ns)
	if err := os.MkdirAll(nsEtc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(nsEtc) })
	resolv := filepath.Join(nsEtc, "resolv.conf")
	const resolvBefore = "nameserver 198.18.0.53\n"
	if err := os.WriteFile(resolv, []byte(resolvBefore), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	url := fmt.Sprintf("https://%s:%d", l.server.link4, ocPort)
	lanHost := netip.MustParseAddr("198.18.2.2")
	lanHost6 := netip.MustParseAddr("2001:db8:2::2")
	name := "oc" + l.id
	ifname := client.Interface(name)
	down := func(t *testing.T) {
		t.Helper()
		out := mustRun(t, l.client.ns, ptun.bin, "down", name, "--state", state)
		if !strings.Contains(out, "is down") {
			t.Errorf("down: %s", out)
		}
		if _, err := run(l.client.ns, "ip", "link", "show", ifname); err == nil {
			t.Errorf("interface %s left after down", ifname)
		}
		if tables := mustRun(t, l.client.ns, "nft", "list", "tables"); strings.Contains(tables, "ptun") {
			t.Errorf("nftables tables left after down:\n%s", tables)
		}
		if rules := mustRun(t, l.client.ns, "ip", "rule"); strings.Contains(rules, "0xca6c") || strings.Contains(rules, "suppress_prefixlength") {
			t.Errorf("rules left after down:\n%s", rules)
		}
		if routes := mustRun(t, l.client.ns, "ip", "route", "show", "table", "all"); strings.Contains(routes, ifname) || strings.Contains(routes, "throw") {
			t.Errorf("routes left after down:\n%s", routes)
		}
		if b, _ := os.ReadFile(resolv); string(b) != resolvBefore {
			t.Errorf("resolv.conf not restored:\n%s", b)
		}
		if _, err := os.Stat(filepath.Join(state, name+".json")); !os.IsNotExist(err) {
			t.Errorf("state record left after down: %v", err)
		}
	}
	t.Cleanup(func() { run(l.client.ns, ptun.bin, "down", name, "--state", state) })
	status := func(t *testing.T) string {
		t.Helper()
		return mustRun(t, l.client.ns, ptun.bin, "status", name, "--state", state)
	}
	throughput := func(t *testing.T, what string) {
		t.Helper()
		mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanHost.String())
		mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanHost6.String())
		upR := iperf3(t, l.client, lan, lanHost, "-t", "3")
		downR := iperf3(t, l.client, lan, lanHost, "-t", "3", "-R")
		requireFlow(t, what+" TCP up", upR)
		requireFlow(t, what+" TCP down", downR)
		t.Logf("%s: iperf3 TCP up %.0f Mbit/s, down %.0f Mbit/s", what, upR.mbits(), downR.mbits())
	}

	logFile := filepath.Join(t.TempDir(), "connect.log")
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("ptun connect's log:\n%s", tail(logFile, 12000))
		}
	})

	t.Run("DTLS", func(t *testing.T) {
		t.Cleanup(func() { run(l.client.ns, ptun.bin, "down", name, "--state", state) })
		start := time.Now()
		out, err := ptunConnect(t, l.client.ns, ocPasswordA, url, "--user", "alice", "--servercert", oc.pin,
			"--name", name, "--kill-switch", "--state", state, "--log", logFile)
		if err != nil {
			t.Fatalf("ptun connect: %v\n%s", err, out)
		}
		t.Logf("ptun connect: %s (%v)", strings.TrimSpace(out), time.Since(start).Round(time.Millisecond))
		if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver "+ocDNS+"\n") || !strings.Contains(string(b), "search "+ocDomain+"\n") {
			t.Errorf("resolv.conf after connect:\n%s", b)
		}
		for _, h := range []netip.Addr{lanHost, lanHost6} {
			if r := mustRun(t, l.client.ns, "ip", "route", "get", h.String()); !strings.Contains(r, "dev "+ifname) {
				t.Errorf("the pushed route does not go into the tunnel: %s", r)
			}
		}
		if r, _ := run(l.client.ns, "ip", "route", "get", "198.18.9.9"); strings.Contains(r, ifname) {
			t.Errorf("a split tunnel takes a destination outside its routes: %s", r)
		}
		waitFor(t, 15*time.Second, "status to show the session over DTLS", func() (bool, string) {
			s := status(t)
			return strings.Contains(s, "path dtls"), s
		})
		s := status(t)
		t.Logf("ptun status:\n%s", s)
		if !strings.Contains(s, "up on "+ifname) || !strings.Contains(s, url) || !strings.Contains(s, "as alice") ||
			!strings.Contains(s, "100.64.7.") || !strings.Contains(s, "2001:db8:7:") {
			t.Errorf("status:\n%s", s)
		}
		u := oc.user(t, "alice")
		if u == nil {
			t.Fatalf("occtl does not list alice: %v", oc.users(t))
		}
		cipher, _ := u["DTLS cipher"].(string)
		t.Logf("occtl: TLS %q, DTLS %q", u["TLS ciphersuite"], cipher)
		if !strings.Contains(cipher, "DTLS") || !strings.Contains(cipher, "PSK") {
			t.Errorf("occtl reports DTLS cipher %q, want a DTLS PSK one", cipher)
		}
		throughput(t, "DTLS")
		if s := status(t); !strings.Contains(s, "path dtls") {
			t.Errorf("status after the transfers:\n%s", s)
		}

		// The split: the engine runs confined, as its own uid; the
		// password is in no log and no record.
		engines := ocEngines(t, ifname)
		if len(engines) != 1 {
			t.Fatalf("engines of %s: %v, want one", ifname, engines)
		}
		if uid := uidOf(engines[0]); uid != engine.UID(ifname) {
			t.Errorf("the engine %d runs as uid %d, want its own %d", engines[0], uid, engine.UID(ifname))
		}
		for _, f := range []string{logFile, filepath.Join(state, name+".json")} {
			if b, err := os.ReadFile(f); err != nil || bytes.Contains(b, []byte(ocPasswordA)) {
				t.Errorf("%s holds the password (or cannot be read: %v)", f, err)
			}
		}

		// The kill switch: the server's own host, but not its port, is
		// refused; the tunnel passes.
		if tables := mustRun(t, l.client.ns, "nft", "list", "tables"); !strings.Contains(tables, netconf.KillSwitchTable(ifname)) {
			t.Errorf("no kill switch table:\n%s", tables)
		}
		if out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", l.server.link4.String()); err == nil {
			t.Errorf("the kill switch let a ping to the server's host through:\n%s", out)
		}

		// From here on a capture on the server's side of the underlay
		// sees what the client sends while its sessions break and come
		// back, and applications keep trying to get around the tunnel.
		stopCapture := captureUnderlay(t, l)
		leaking := make(chan struct{})
		leakDone := make(chan struct{})
		go func() {
			defer close(leakDone)
			for {
				select {
				case <-leaking:
					return
				default:
				}
				run(l.client.ns, "ping", "-c", "1", "-W", "1", l.server.link4.String())
				run(l.client.ns, "ping", "-c", "1", "-W", "1", l.server.link6.String())
				run(l.client.ns, "sh", "-c", "echo leak >/dev/udp/"+l.server.link4.String()+"/9; echo leak >/dev/tcp/"+l.server.link4.String()+"/22")
				time.Sleep(100 * time.Millisecond)
			}
		}()

		// The TLS connection dies (ocserv's worker is killed): the daemon
		// connects again with the cookie, on the same interface, and the
		// kill switch never went.
		linkBefore := mustRun(t, l.client.ns, "ip", "-o", "link", "show", ifname)
		pid, _ := u["ID"].(float64) // the worker's process
		if pid <= 0 {
			t.Fatalf("occtl gives alice's worker no ID: %v", u)
		}
		killed := time.Now()
		if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
			t.Fatalf("killing ocserv's worker %d: %v", int(pid), err)
		}
		waitFor(t, 30*time.Second, "the daemon to connect again", func() (bool, string) {
			s := status(t)
			return strings.Contains(s, "1 reconnections") && strings.Contains(s, "path "), s
		})
		t.Logf("connected again %v after the worker was killed", time.Since(killed).Round(time.Millisecond))
		if tables := mustRun(t, l.client.ns, "nft", "list", "tables"); !strings.Contains(tables, netconf.KillSwitchTable(ifname)) {
			t.Errorf("the kill switch went with the connection:\n%s", tables)
		}
		if after := mustRun(t, l.client.ns, "ip", "-o", "link", "show", ifname); strings.Fields(after)[0] != strings.Fields(linkBefore)[0] {
			t.Errorf("the interface was made again: %s, then %s", linkBefore, after)
		}
		mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanHost.String())

		// The engine dies: the front starts another, which connects with
		// the cookie (it never had the password).
		if err := syscall.Kill(engines[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "a new engine to connect again", func() (bool, string) {
			s := status(t)
			n := ocEngines(t, ifname)
			return len(n) == 1 && n[0] != engines[0] && strings.Contains(s, "2 reconnections") && strings.Contains(s, "path "), s
		})
		mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanHost.String())

		// occtl disconnect ends the session on the server: the cookie is
		// refused, the daemon gives up and says so; the kill switch stays.
		mustRun(t, l.server.ns, oc.occtlBin, "-s", oc.sock, "disconnect", "user", "alice")
		waitFor(t, 20*time.Second, "the daemon to give up", func() (bool, string) {
			s := status(t)
			return strings.Contains(s, "GAVE UP"), s
		})
		t.Logf("after occtl disconnect: %s", strings.TrimSpace(status(t)))
		if tables := mustRun(t, l.client.ns, "nft", "list", "tables"); !strings.Contains(tables, netconf.KillSwitchTable(ifname)) {
			t.Errorf("the kill switch went when the daemon gave up:\n%s", tables)
		}
		close(leaking)
		<-leakDone
		toServer, other := stopCapture()
		t.Logf("captured from the client across two reconnects and the give-up: %d packets to the server's port, %d others", toServer, len(other))
		if len(other) > 0 {
			t.Errorf("the kill switch let these reach the underlay:\n%s", strings.Join(other, "\n"))
		}
		if toServer == 0 {
			t.Errorf("the capture saw nothing of the tunnel (is it capturing?)")
		}
		down(t)
	})

	t.Run("CSTP", func(t *testing.T) {
		// A host with a default route of its own, for the excluded route
		// to fall back to.
		mustRun(t, l.client.ns, "ip", "route", "add", "default", "via", l.server.link4.String())
		t.Cleanup(func() {
			run(l.client.ns, ptun.bin, "down", name, "--state", state)
			run(l.client.ns, "ip", "route", "del", "default")
		})
		out, err := ptunConnect(t, l.client.ns, ocPasswordB, url, "--user", "bob", "--servercert", oc.pin,
			"--name", name, "--no-dtls", "--state", state, "--log", logFile)
		if err != nil {
			t.Fatalf("ptun connect --no-dtls: %v\n%s", err, out)
		}
		t.Logf("ptun connect --no-dtls: %s", strings.TrimSpace(out))
		for _, dst := range []string{"198.18.9.9", "2001:db8:9::9"} {
			if r := mustRun(t, l.client.ns, "ip", "route", "get", dst); !strings.Contains(r, "dev "+ifname) {
				t.Errorf("a full tunnel does not take a destination outside every route: %s", r)
			}
		}
		if r := mustRun(t, l.client.ns, "ip", "route", "get", "198.18.7.1"); !strings.Contains(r, "dev eth0") {
			t.Errorf("the excluded route goes into the tunnel: %s", r)
		}
		if r := mustRun(t, l.client.ns, "ip", "route", "get", l.server.link4.String(), "mark", strconv.Itoa(client.FwMark)); !strings.Contains(r, "dev eth0") {
			t.Errorf("the tunnel's own connection would loop: %s", r)
		}
		throughput(t, "CSTP")
		s := status(t)
		t.Logf("ptun status:\n%s", s)
		if !strings.Contains(s, "path cstp") || !strings.Contains(s, "as bob") {
			t.Errorf("status:\n%s", s)
		}
		u := oc.user(t, "bob")
		if u == nil {
			t.Fatalf("occtl does not list bob: %v", oc.users(t))
		}
		if cipher, _ := u["DTLS cipher"].(string); strings.Contains(cipher, "DTLS") {
			t.Errorf("--no-dtls, but occtl reports DTLS cipher %q", cipher)
		}
		down(t)
		waitFor(t, 10*time.Second, "ocserv to see bob log out", func() (bool, string) {
			return oc.user(t, "bob") == nil, fmt.Sprint(oc.users(t))
		})
	})

	t.Run("ShmFlow", func(t *testing.T) {
		// Packets through the front (--ipc shm): it writes to the TUN only
		// what is for the addresses the server gave.
		t.Cleanup(func() { run(l.client.ns, ptun.bin, "down", name, "--state", state) })
		out, err := ptunConnect(t, l.client.ns, ocPasswordA, url, "--user", "alice", "--servercert", oc.pin,
			"--name", name, "--ipc", "shm", "--state", state, "--log", logFile)
		if err != nil {
			t.Fatalf("ptun connect --ipc shm: %v\n%s", err, out)
		}
		mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanHost.String())
		down(t)
	})

	t.Run("Refused", func(t *testing.T) {
		// A wrong pin, no pin (the self-signed certificate is no system
		// CA's), a wrong password: each fails ptun connect, saying why,
		// and leaves nothing behind.
		otherPin := "pin-sha256:" + strings.Repeat("A", 43) + "="
		for _, tc := range []struct {
			what, password string
			flags          []string
			says           []string
		}{
			{"a wrong pin", ocPasswordA, []string{"--servercert", otherPin}, []string{"does not match the pin", oc.pin}},
			{"no pin", ocPasswordA, nil, []string{"certificate"}},
			{"a wrong password", "not the password", []string{"--servercert", oc.pin}, []string{"authentication failed"}},
		} {
			out, err := ptunConnect(t, l.client.ns, tc.password, append([]string{url, "--user", "alice", "--name", name, "--state", state}, tc.flags...)...)
			if err == nil {
				t.Errorf("ptun connect with %s succeeded:\n%s", tc.what, out)
				run(l.client.ns, ptun.bin, "down", name, "--state", state)
				continue
			}
			t.Logf("with %s: %s", tc.what, strings.TrimSpace(out))
			for _, want := range tc.says {
				if !strings.Contains(out, want) {
					t.Errorf("ptun connect with %s does not say %q:\n%s", tc.what, want, out)
				}
			}
			if _, err := run(l.client.ns, "ip", "link", "show", ifname); err == nil {
				t.Errorf("interface %s left after %s", ifname, tc.what)
			}
			if _, err := os.Stat(filepath.Join(state, name+".json")); !os.IsNotExist(err) {
				t.Errorf("state record left after %s: %v", tc.what, err)
			}
		}
	})
}
