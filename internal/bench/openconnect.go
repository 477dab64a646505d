package bench

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/demo"
	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/probe"
	"github.com/ptun-vpn/ptun/internal/tunnelproc"
	"github.com/ptun-vpn/ptun/openconnect"
)

// OpenConnect candidates: an OpenConnect server in the server host and a
// client in the client host, set up by the bench in a temporary folder of
// their own. Candidate i's pool is 100.64.i.0/24, the server's address in
// it 100.64.i.1 (ocserv's and ptun's gateway's first address of the pool)
// and the client's whatever the server assigns; the server listens for
// TLS and DTLS on the underlay at ocBasePort+i.

// The servers and clients an OpenConnect candidate can pair.
const (
	ServerOcserv      = "ocserv"       // Debian's ocserv
	ServerPtun        = "ptun-gateway" // ptun gateway run, with --tls
	ClientOpenconnect = "openconnect"  // Debian's openconnect
	ClientPtun        = "ptun"         // ptun connect
)

// OpenConnectCandidate is one OpenConnect server and client pairing.
type OpenConnectCandidate struct {
	Name   string
	Server string // ServerOcserv or ServerPtun
	Client string // ClientOpenconnect or ClientPtun
	// DTLS is the data path over DTLS (PSK, as ocserv's dtls-psk and
	// ptun's engine do it); else CSTP, TLS over TCP, only.
	DTLS bool
	// Versus names the candidates this one is meant to be compared with.
	Versus []string
}

// OpenConnectCandidates lists the OpenConnect candidates, in the order
// "all" measures them. ptun-X is ptun at both ends, what a ptun user
// gets; ptun-openconnect-X has Debian's openconnect as the client, so
// that against ocserv-X it compares the servers alone.
var OpenConnectCandidates = []OpenConnectCandidate{
	{Name: "ptun-dtls", Server: ServerPtun, Client: ClientPtun, DTLS: true, Versus: []string{"ocserv-dtls", "ptun"}},
	{Name: "ptun-tls", Server: ServerPtun, Client: ClientPtun, Versus: []string{"ocserv-tls", "ptun-dtls"}},
	{Name: "ptun-openconnect-dtls", Server: ServerPtun, Client: ClientOpenconnect, DTLS: true, Versus: []string{"ocserv-dtls"}},
	{Name: "ptun-openconnect-tls", Server: ServerPtun, Client: ClientOpenconnect, Versus: []string{"ocserv-tls"}},
	{Name: "ocserv-dtls", Server: ServerOcserv, Client: ClientOpenconnect, DTLS: true},
	{Name: "ocserv-tls", Server: ServerOcserv, Client: ClientOpenconnect},
}

// OpenConnectNames lists the names of OpenConnectCandidates, in order.
func OpenConnectNames() []string {
	var n []string
	for _, c := range OpenConnectCandidates {
		n = append(n, c.Name)
	}
	return n
}

func openConnectByName(name string) *OpenConnectCandidate {
	for i := range OpenConnectCandidates {
		if OpenConnectCandidates[i].Name == name {
			return &OpenConnectCandidates[i]
		}
	}
	return nil
}

// tools returns the programs the candidate runs, with their Debian
// packages.
func (o *OpenConnectCandidate) tools() [][2]string {
	var t [][2]string
	if o.Client == ClientOpenconnect {
		t = append(t, [2]string{"openconnect", "openconnect"}, [2]string{"ip", "iproute2"})
	}
	if o.Server == ServerOcserv {
		t = append(t, [2]string{"ocserv", "ocserv"}, [2]string{"ocpasswd", "ocserv"})
	}
	return t
}

// checkTools fails, naming the package to install, if a program o needs
// is not in PATH.
func (o *OpenConnectCandidate) checkTools() error {
	for _, t := range o.tools() {
		if _, err := exec.LookPath(t[0]); err != nil {
			return fmt.Errorf("bench: %s needs %s, not found in PATH: install the %s package (apt-get install %s)", o.Name, t[0], t[1], t[1])
		}
	}
	return nil
}

// describe is the candidate's line for the report's notes.
func (o *OpenConnectCandidate) describe() string {
	server := "Debian's ocserv"
	if o.Server == ServerPtun {
		server = "ptun's gateway (ptun gateway run, OpenConnect engine)"
	}
	client, noDTLS := "Debian's openconnect", "openconnect --no-dtls"
	if o.Client == ClientPtun {
		client, noDTLS = "ptun connect (OpenConnect client engine)", "ptun connect --no-dtls"
	}
	path := "DTLS 1.2 PSK (ocserv's dtls-psk; the client's default)"
	if !o.DTLS {
		path = "CSTP only: TLS over TCP (" + noDTLS
		if o.Server == ServerOcserv {
			path += ", no udp-port in ocserv.conf"
		}
		path += ")"
	}
	return fmt.Sprintf("server %s, client %s, %s", server, client, path)
}

const (
	ocBasePort   = 4430 // candidate i's TLS and DTLS port: ocBasePort+i
	gwAPIBase    = 8400 // its gateway's enrollment API: gwAPIBase+i
	ocUserName   = "bench"
	ocStartLimit = 30 * time.Second // for a server to listen, a client to connect
)

// ocLayout is where candidate index's OpenConnect endpoints live.
type ocLayout struct {
	index      int
	underlay   netip.Addr // the server's underlay address
	pool       netip.Prefix
	serverAddr netip.Addr // the server's address in the pool
	port       int        // TLS (TCP) and DTLS (UDP)
	serverIf   string     // the gateway's interface, or ocserv's device prefix
	clientIf   string     // openconnect's tun
}

func newOCLayout(index int, underlay netip.Addr, ifPrefix string) ocLayout {
	pool := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(index), 0}), 24)
	return ocLayout{
		index: index, underlay: underlay, pool: pool, serverAddr: pool.Addr().Next(),
		port:     ocBasePort + index,
		serverIf: fmt.Sprintf("%s%ds", ifPrefix, index), clientIf: fmt.Sprintf("%s%dc", ifPrefix, index),
	}
}

func (l ocLayout) url() string {
	return "https://" + netip.AddrPortFrom(l.underlay, uint16(l.port)).String() + "/"
}

// ocservConfig is ocserv.conf for a bench candidate: password logins from
// dir/ocpasswd, PSK-only DTLS on the same port as TLS (or no UDP port at
// all), the candidate's pool, and the limits that would get in a bench's
// way (bans, rate limits, worker isolation) off. See
// research/sslvpn.md §3.
func ocservConfig(dir string, l ocLayout, dtls bool) string {
	var b strings.Builder
	kv := func(k string, v any) { fmt.Fprintf(&b, "%s = %v\n", k, v) }
	kv("auth", strconv.Quote("plain[passwd="+filepath.Join(dir, "ocpasswd")+"]"))
	kv("listen-host", l.underlay)
	kv("tcp-port", l.port)
	if dtls {
		kv("udp-port", l.port)
	}
	kv("run-as-user", "nobody")
	kv("run-as-group", "nogroup")
	kv("socket-file", filepath.Join(dir, "ocserv.socket"))
	kv("pid-file", filepath.Join(dir, "ocserv.pid"))
	kv("use-occtl", "true")
	kv("occtl-socket-file", filepath.Join(dir, "occtl.socket"))
	kv("server-cert", filepath.Join(dir, "cert.pem"))
	kv("server-key", filepath.Join(dir, "key.pem"))
	kv("isolate-workers", "false")
	kv("max-clients", 16)
	kv("max-same-clients", 0)
	kv("max-ban-score", 0)
	kv("rate-limit-ms", 0)
	kv("min-reauth-time", 0)
	kv("auth-timeout", 60)
	kv("cookie-timeout", 300)
	kv("keepalive", 20)
	kv("dpd", 30)
	kv("mobile-dpd", 30)
	kv("switch-to-tcp-timeout", 25)
	kv("try-mtu-discovery", "false")
	kv("cisco-client-compat", "false")
	kv("dtls-legacy", "false")
	kv("dtls-psk", "true")
	kv("tls-priorities", strconv.Quote("NORMAL:%SERVER_PRECEDENCE:%COMPAT"))
	kv("match-tls-dtls-ciphers", "false")
	kv("device", l.serverIf)
	kv("predictable-ips", "true")
	kv("ipv4-network", l.pool)
	return b.String()
}

// gatewayInitArgs are the arguments of `ptun gateway init` for a bench
// candidate: the candidate's pool and a route to the gateway's own
// address in it (so that the open user's access rules let the bench's
// traffic in), TLS and DTLS on the underlay, the WireGuard side and
// enrollment API on ports of the candidate's, no admin API, no NAT.
func gatewayInitArgs(state string, l ocLayout) []string {
	hostPort := func(port int) string { return netip.AddrPortFrom(l.underlay, uint16(port)).String() }
	return []string{"gateway", "init", "--state", state, "--name", "bench", "--interface", l.serverIf,
		"--endpoint", hostPort(basePort + l.index), "--api", hostPort(gwAPIBase + l.index), "--admin", "off",
		"--tls", hostPort(l.port), "--pool", l.pool.String(),
		"--route", netip.PrefixFrom(l.serverAddr, 32).String(), "--mtu", strconv.Itoa(tunnelMTU)}
}

// openconnectArgs is the client's command line: a password login as
// ocUserName (the password on stdin), the server's certificate pinned,
// the tun named, script as the network setup and, for CSTP only,
// --no-dtls.
func openconnectArgs(o *OpenConnectCandidate, l ocLayout, pin, script string) []string {
	a := []string{"openconnect", "--non-inter", "--passwd-on-stdin", "-u", ocUserName,
		"--servercert", pin, "-i", l.clientIf, "-s", script}
	if !o.DTLS {
		a = append(a, "--no-dtls")
	}
	return append(a, l.url())
}

// connectScript is openconnect's network setup (-s): on connect it brings
// the tun up with the MTU the server pushed, gives it the pushed address,
// routes the server's pool address (and nothing else) through it, and
// writes its environment to envFile for the bench to read the address
// from. Every other reason is a no-op.
func connectScript(l ocLayout, envFile string) string {
	return fmt.Sprintf(`#!/bin/sh
# Written by ptun bench: openconnect's -s script for %[1]s.
case "$reason" in
connect)
	ip link set dev "$TUNDEV" up mtu "$INTERNAL_IP4_MTU" || exit 1
	ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV" || exit 1
	ip route add %[2]s dev "$TUNDEV" || exit 1
	env > %[3]s.tmp && mv %[3]s.tmp %[3]s
	;;
esac
exit 0
`, l.clientIf, netip.PrefixFrom(l.serverAddr, 32), shellQuote(envFile))
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// parseEnv reads the lines NAME=VALUE of env's output.
func parseEnv(b []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// writeCert makes a self-signed ECDSA P-256 certificate for addr in dir
// (cert.pem, key.pem) and returns its pin.
func writeCert(dir string, addr netip.Addr) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ptun-bench"},
		IPAddresses:  []net.IP{addr.AsSlice()},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", err
	}
	// ocserv reads the key as root, before it drops privileges.
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", err
	}
	return pinOfFile(filepath.Join(dir, "cert.pem"))
}

// pinOfFile returns the pin of the first certificate in a PEM file.
func pinOfFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return "", fmt.Errorf("bench: no certificate in %s", path)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("bench: %s: %w", path, err)
	}
	return openconnect.PinSHA256(cert), nil
}

// ocTunnel is a running OpenConnect candidate.
type ocTunnel struct {
	spec           *OpenConnectCandidate
	layout         ocLayout
	dir            string // its configuration and state; removed by stop
	server, client *process
	mtu            string // what the server pushed
	pathLines      int    // lines of the client's output already checked by pathProblems
}

// startOpenConnect sets up c's server and client, waits for the tunnel and
// a first echo through it, and finds the processes of both ends.
func (c *candidate) startOpenConnect(ctx context.Context, tb *demo.Testbed, ifPrefix, ptunBinary string) error {
	l := newOCLayout(c.index, tb.UnderlayB.V4, ifPrefix)
	t := &ocTunnel{spec: c.oc, layout: l}
	c.tunnel = t
	// Not under a 0700 parent: ocserv's workers run as nobody.
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-%s-", ifPrefix, c.index, c.oc.Name))
	if err != nil {
		return err
	}
	t.dir = dir
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	var pw [12]byte
	rand.Read(pw[:])
	password := hex.EncodeToString(pw[:])

	var pin string
	switch c.oc.Server {
	case ServerOcserv:
		if pin, err = writeCert(dir, l.underlay); err != nil {
			return err
		}
		if err := runStep(ctx, nil, password+"\n", "ocpasswd", "-c", filepath.Join(dir, "ocpasswd"), ocUserName); err != nil {
			return err
		}
		conf := filepath.Join(dir, "ocserv.conf")
		if err := os.WriteFile(conf, []byte(ocservConfig(dir, l, c.oc.DTLS)), 0o644); err != nil {
			return err
		}
		if t.server, err = startProcess(tb.B, "ocserv in host server", []string{"ocserv", "-f", "-d", "1", "-c", conf}, ""); err != nil {
			return err
		}
	case ServerPtun:
		state := filepath.Join(dir, "gateway")
		if err := runStep(ctx, tb.B, "", ptunBinary, gatewayInitArgs(state, l)...); err != nil {
			return err
		}
		if err := runStep(ctx, tb.B, "", ptunBinary, "gateway", "user", "add", ocUserName, "--state", state); err != nil {
			return err
		}
		if err := runStep(ctx, tb.B, password+"\n", ptunBinary, "gateway", "user", "passwd", ocUserName, "--state", state); err != nil {
			return err
		}
		if pin, err = pinOfFile(filepath.Join(state, "cert.pem")); err != nil {
			return err
		}
		argv := []string{ptunBinary, "gateway", "run", "--state", state, "--foreground"}
		if t.server, err = startProcess(tb.B, "ptun gateway in host server", argv, ""); err != nil {
			return err
		}
	default:
		return fmt.Errorf("bench: unknown OpenConnect server %q", c.oc.Server)
	}
	c.roots[1] = t.server.cmd.Process.Pid
	if err := waitListening(ctx, tb.A, netip.AddrPortFrom(l.underlay, uint16(l.port)), t.server); err != nil {
		return err
	}

	var addr netip.Addr
	switch c.oc.Client {
	case ClientOpenconnect:
		addr, err = t.startOpenconnect(ctx, tb.A, pin, password)
	case ClientPtun:
		addr, err = t.startPtunConnect(ctx, tb.A, ptunBinary, pin, password)
	default:
		err = fmt.Errorf("bench: unknown OpenConnect client %q", c.oc.Client)
	}
	if err != nil {
		return err
	}
	c.roots[0] = t.client.cmd.Process.Pid
	t.pathProblems() // what the set-up printed is not news
	c.client, c.server = addr, l.serverAddr
	c.refreshPIDs()
	for i, name := range []string{"client", "server"} {
		if len(c.pids[i]) == 0 {
			return fmt.Errorf("no process of the %s found", name)
		}
	}
	for range 5 {
		if _, err = probe.Ping(ctx, tb.A, c.server, 1, 0, time.Second); err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("no echo through the tunnel: %w", err)
	}
	return t.failed()
}

// startOpenconnect runs Debian's openconnect in ns with a -s script of
// the bench's and returns the address the server pushed, once the tunnel
// (and, for a DTLS candidate, DTLS) is up.
func (t *ocTunnel) startOpenconnect(ctx context.Context, ns *netns.NS, pin, password string) (netip.Addr, error) {
	l := t.layout
	envFile := filepath.Join(t.dir, "connect.env")
	script := filepath.Join(t.dir, "connect.sh")
	if err := os.WriteFile(script, []byte(connectScript(l, envFile)), 0o755); err != nil {
		return netip.Addr{}, err
	}
	var err error
	argv := openconnectArgs(t.spec, l, pin, script)
	if t.client, err = startProcess(ns, "openconnect in host client", argv, password+"\n"); err != nil {
		return netip.Addr{}, err
	}
	var env map[string]string
	err = waitUntil(ctx, ocStartLimit, "openconnect's tunnel", t.failed, func() bool {
		b, err := os.ReadFile(envFile)
		if err == nil {
			env = parseEnv(b)
		}
		return err == nil
	})
	if err != nil {
		return netip.Addr{}, err
	}
	addr, err := netip.ParseAddr(env["INTERNAL_IP4_ADDRESS"])
	if err != nil || !l.pool.Contains(addr) {
		return netip.Addr{}, fmt.Errorf("the server pushed the address %q, want one of %v", env["INTERNAL_IP4_ADDRESS"], l.pool)
	}
	t.mtu = env["INTERNAL_IP4_MTU"]
	const dtlsUp = "Established DTLS connection"
	if t.spec.DTLS {
		err := waitUntil(ctx, 20*time.Second, "DTLS", t.failed, func() bool {
			return strings.Contains(t.client.output(), dtlsUp)
		})
		if err != nil {
			return netip.Addr{}, err
		}
	} else if strings.Contains(t.client.output(), dtlsUp) {
		return netip.Addr{}, errors.New("openconnect set up DTLS on a CSTP-only candidate")
	}
	return addr, nil
}

// ptunConnectArgs is ptun connect's command line for the candidate: a
// password login as ocUserName (on stdin), the server's certificate
// pinned, the tunnel named after the candidate's client interface (its
// interface is pt-NAME), its state in stateDir, in the foreground and,
// for CSTP only, --no-dtls. The gateway pushes only a route to its own
// pool address, so the client host's other routes stay as they are.
func ptunConnectArgs(o *OpenConnectCandidate, l ocLayout, ptunBinary, pin, stateDir string) []string {
	a := []string{ptunBinary, "connect", l.url(), "--user", ocUserName, "--servercert", pin,
		"--name", l.clientIf, "--state", stateDir, "--foreground"}
	if !o.DTLS {
		a = append(a, "--no-dtls")
	}
	return a
}

// startPtunConnect runs ptun connect in ns and returns the address the
// server pushed, once the session is up on the candidate's path (DTLS,
// or CSTP).
func (t *ocTunnel) startPtunConnect(ctx context.Context, ns *netns.NS, ptunBinary, pin, password string) (netip.Addr, error) {
	l := t.layout
	state := filepath.Join(t.dir, "client")
	var err error
	argv := ptunConnectArgs(t.spec, l, ptunBinary, pin, state)
	if t.client, err = startProcess(ns, "ptun connect in host client", argv, password+"\n"); err != nil {
		return netip.Addr{}, err
	}
	want := "cstp"
	if t.spec.DTLS {
		want = "dtls"
	}
	var st *client.State
	err = waitUntil(ctx, ocStartLimit, "ptun connect's session on "+want, t.failed, func() bool {
		s, err := client.StatusOf(l.clientIf, client.Options{State: state})
		if err != nil {
			return false
		}
		st = s.State
		return st.Path == want && len(st.Addresses) > 0
	})
	if err != nil {
		return netip.Addr{}, err
	}
	addr := st.Addresses[0].Addr()
	if !addr.Is4() || !l.pool.Contains(addr) {
		return netip.Addr{}, fmt.Errorf("the server pushed the addresses %v, want one of %v first", st.Addresses, l.pool)
	}
	ns.Do(func() error {
		ifi, err := net.InterfaceByName(st.Interface)
		if err == nil {
			t.mtu = strconv.Itoa(ifi.MTU)
		}
		return err
	})
	return addr, nil
}

// checkPath records in c's errors what the client said of its data path
// since the last check (see pathProblems); when says when that was.
func (c *candidate) checkPath(when string) {
	if c.tunnel == nil {
		return
	}
	for _, l := range c.tunnel.pathProblems() {
		c.res.Errors = append(c.res.Errors, fmt.Sprintf("%s: the client said %q", when, l))
	}
}

// noteCores records how much of a core each of c's processes used during
// test, from their CPU ticks before and after and the test's wall time.
// Processes with the same label (ocserv's workers) are summed.
func (c *candidate) noteCores(test string, before, after map[int]uint64, wall time.Duration) {
	if wall <= 0 {
		return
	}
	share := map[string]float64{}
	for pid, t := range after {
		label := processLabel(pid, c.ptunBinary)
		share[label] += float64(t-min(t, before[pid])) / userHZ / wall.Seconds()
	}
	if c.cores == nil {
		c.cores = map[string]map[string][]float64{}
	}
	if c.cores[test] == nil {
		c.cores[test] = map[string][]float64{}
		c.coreTests = append(c.coreTests, test)
	}
	for label, v := range share {
		c.cores[test][label] = append(c.cores[test][label], v)
	}
}

// coresNotes says, for each test noteCores saw, each process's median
// share of a core, the busiest first: a process near 1.00 is what limits
// the tunnel.
func (c *candidate) coresNotes() []string {
	var notes []string
	for _, test := range c.coreTests {
		type proc struct {
			label string
			cores float64
		}
		var ps []proc
		for label, v := range c.cores[test] {
			ps = append(ps, proc{label, median(v)})
		}
		slices.SortFunc(ps, func(a, b proc) int {
			if a.cores != b.cores {
				return cmp.Compare(b.cores, a.cores)
			}
			return strings.Compare(a.label, b.label)
		})
		var parts []string
		for _, p := range ps {
			parts = append(parts, fmt.Sprintf("%s %.2f", p.label, p.cores))
		}
		notes = append(notes, fmt.Sprintf("cores used during %s (median): %s", test, strings.Join(parts, ", ")))
	}
	return notes
}

// Settling: a client that queued what it could not send (openconnect
// over CSTP, under a UDP test faster than the path) goes on sending after
// the test; the next test must not measure that.
const (
	settleQuiet  = 0.05 // of a core, over settleWindow: idle
	settleWindow = 200 * time.Millisecond
	settleLimit  = 15 * time.Second
)

// settle waits, bounded by limit (settleLimit), until c's processes are
// idle (use at most settleQuiet of a core over settleWindow), and notes a
// wait of more than a second: how long the tunnel stayed busy after test.
func (c *candidate) settle(ctx context.Context, test string, round int, limit time.Duration) {
	start := time.Now()
	for time.Since(start) < limit {
		c0 := cpuSeconds(c.allPIDs())
		select {
		case <-ctx.Done():
			return
		case <-time.After(settleWindow):
		}
		if (cpuSeconds(c.allPIDs())-c0)/settleWindow.Seconds() <= settleQuiet {
			break
		}
	}
	if busy := time.Since(start) - settleWindow; busy > time.Second {
		how := "the next test waited"
		if busy >= limit-settleWindow {
			how = "still busy: the next test started anyway"
		}
		c.res.Errors = append(c.res.Errors, fmt.Sprintf("round %d, %s: the tunnel's processes stayed busy for %.1f s after the test (%s)",
			round, test, busy.Seconds(), how))
	}
}

// processTicks reads the CPU ticks of each of pids that still exists.
func processTicks(pids []int) map[int]uint64 {
	m := make(map[int]uint64, len(pids))
	for _, pid := range pids {
		if st, err := readProcStat(pid); err == nil {
			m[pid] = st.cpuTicks
		}
	}
	return m
}

// processLabel names a process for the report: ptun's by its role
// ("ptun gateway run", "ptun --tls-engine-of"), others by their command
// name ("openconnect", "ocserv-worker").
func processLabel(pid int, ptunBinary string) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return labelOf(args, strings.TrimSpace(string(comm)), ptunBinary)
}

// labelOf is processLabel's answer for a process with args and comm.
func labelOf(args []string, comm, ptunBinary string) string {
	if len(args) > 1 && ptunBinary != "" && filepath.Base(args[0]) == filepath.Base(ptunBinary) {
		if args[1] == "gateway" && len(args) > 2 {
			return "ptun gateway " + args[2]
		}
		return "ptun " + args[1]
	}
	if comm == "" && len(args) > 0 {
		return filepath.Base(args[0])
	}
	return comm
}

// command is the server's and the client's command, for the report.
func (t *ocTunnel) command() string {
	var parts []string
	for _, p := range []*process{t.server, t.client} {
		if p != nil {
			parts = append(parts, commandString(p.cmd.Args, nil))
		}
	}
	return strings.Join(parts, " <-> ")
}

// notes are what the report says of a running candidate.
func (t *ocTunnel) notes() []string {
	n := []string{t.spec.describe()}
	if t.mtu != "" {
		n = append(n, "tunnel MTU "+t.mtu+" (pushed by the server)")
	}
	return n
}

// failed returns why the candidate's processes stopped, or nil.
func (t *ocTunnel) failed() error {
	for _, p := range []*process{t.client, t.server} {
		if p != nil && p.exited() {
			return p.exitError()
		}
	}
	return nil
}

// pathProblems returns the lines the client printed since the last call
// that say the data path changed: DTLS lost or re-established, a
// reconnection. A DTLS candidate measured over CSTP would be mislabelled.
func (t *ocTunnel) pathProblems() []string {
	if t.client == nil {
		return nil
	}
	lines := strings.Split(strings.TrimRight(t.client.output(), "\n"), "\n")
	if len(lines) < t.pathLines {
		t.pathLines = 0 // the tail buffer dropped its start
	}
	var out []string
	for _, line := range lines[t.pathLines:] {
		if isPathLine(line) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	t.pathLines = len(lines)
	return out
}

// isPathLine reports whether a line of openconnect's output says that the
// data path changed.
func isPathLine(line string) bool {
	l := strings.ToLower(line)
	for _, w := range []string{"dtls", "dead peer", "reconnect", "disconnect", "failed", "lost"} {
		if strings.Contains(l, w) {
			return true
		}
	}
	return false
}

// stop ends the client (openconnect says BYE on SIGTERM), then the
// server, then removes the folder.
func (t *ocTunnel) stop() error {
	var errs []error
	if t.client != nil {
		errs = append(errs, t.client.stop(5*time.Second))
	}
	if t.server != nil {
		// The gateway restores the host's settings and stops its engines.
		errs = append(errs, t.server.stop(10*time.Second))
	}
	if t.dir != "" {
		errs = append(errs, os.RemoveAll(t.dir))
	}
	return errors.Join(errs...)
}

// runStep runs a set-up command to its end, in ns (nil: this process's
// namespace), with stdin, and fails with its output if it fails.
func runStep(ctx context.Context, ns *netns.NS, stdin string, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = childProcAttr()
	cmd.WaitDelay = time.Second
	cmd.Stdin = strings.NewReader(stdin)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	var err error
	if ns != nil {
		err = ns.Start(cmd)
	} else {
		err = cmd.Start()
	}
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// waitUntil polls done every 50 ms until it is true, fails stops being
// nil, ctx ends or limit passes.
func waitUntil(ctx context.Context, limit time.Duration, what string, fails func() error, done func() bool) error {
	deadline := time.Now().Add(limit)
	for {
		if done() {
			return nil
		}
		if err := fails(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s within %v", what, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitListening waits until addr accepts TCP connections from ns.
func waitListening(ctx context.Context, ns *netns.NS, addr netip.AddrPort, p *process) error {
	return waitUntil(ctx, ocStartLimit, "listener on "+addr.String(), func() error {
		if p.exited() {
			return p.exitError()
		}
		return nil
	}, func() bool {
		return ns.Do(func() error {
			conn, err := net.DialTimeout("tcp", addr.String(), time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		}) == nil
	})
}

// process is a server or client the bench started for an OpenConnect
// candidate, in a process group of its own (with whatever it forks:
// ocserv's workers, the gateway's engines).
type process struct {
	name string // for messages
	cmd  *exec.Cmd
	out  *tunnelproc.TailBuffer
	done chan struct{}
	err  error // what Wait returned; read only after done is closed
}

// startProcess runs argv in ns with stdin.
func startProcess(ns *netns.NS, name string, argv []string, stdin string) (*process, error) {
	p := &process{name: name, out: tunnelproc.NewTailBuffer(256 << 10), done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdin = strings.NewReader(stdin)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.WaitDelay = 2 * time.Second
	p.cmd.SysProcAttr = childProcAttr()
	if err := ns.Start(p.cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) output() string { return string(p.out.Bytes()) }

// exitError describes the exit with the last lines the process wrote.
// Call only once it has exited.
func (p *process) exitError() error {
	how := "with status 0"
	if p.err != nil {
		how = p.err.Error()
	}
	msg := fmt.Sprintf("%s exited (%s)", p.name, how)
	if tail := p.out.LastLines(15); len(tail) > 0 {
		msg += "; its last output:\n    " + strings.Join(tail, "\n    ")
	}
	return errors.New(msg)
}

// stop sends SIGTERM, then after grace SIGKILL to the process group, and
// waits (bounded) for the process. What is left of its group (a worker, an
// engine) is killed too.
func (p *process) stop(grace time.Duration) error {
	pid := p.cmd.Process.Pid
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) did not die after SIGKILL", p.name, pid)
	}
}
