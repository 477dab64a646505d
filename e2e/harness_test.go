package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// Addresses. Every lab has its own pair of namespaces, so all labs use the
// same ones.
var (
	clientLink4 = netip.MustParseAddr("198.18.0.1")
	serverLink4 = netip.MustParseAddr("198.18.0.2")
	clientLink6 = netip.MustParseAddr("2001:db8:ff::1")
	serverLink6 = netip.MustParseAddr("2001:db8:ff::2")

	clientTun4 = netip.MustParseAddr("100.64.0.1")
	serverTun4 = netip.MustParseAddr("100.64.0.2")
	clientTun6 = netip.MustParseAddr("2001:db8:100::1")
	serverTun6 = netip.MustParseAddr("2001:db8:100::2")

	// tunnelNets is what each side allows from, and routes to, the other
	// by default.
	tunnelNets = []string{"100.64.0.0/24", "2001:db8:100::/64"}
)

const (
	clientPort = 51821
	serverPort = 51820
	iperfPort  = 5201
	defaultMTU = 1420

	// cmdTimeout bounds every short command (ip, wg, ping, ptun show).
	cmdTimeout = 30 * time.Second
	// startTimeout bounds how long a daemon may take to create its socket.
	startTimeout = 10 * time.Second
)

// impl is a WireGuard implementation under test: a binary that takes
// `-f IFNAME` and serves /var/run/wireguard/IFNAME.sock.
type impl struct {
	name  string   // "ptun" or "wireguard-go", for messages
	short string   // two letters, for interface names
	bin   string   // absolute path
	env   []string // added to every start
}

// The binaries, built once on first use so that `go test -list` and
// `-run=^$` cost nothing.
var (
	setupOnce sync.Once
	skipWhy   string // no root or a missing tool: skip (fail under CI=true)
	setupErr  error  // a build failed: every test fails with it
	binDir    string
	ptun      *impl
	wgGo      *impl
)

// iperfMu runs one iperf3 measurement at a time across parallel tests: the
// machine may have 2 cores, and UDP loss figures mean little when two
// tunnels fight for them.
var iperfMu sync.Mutex

func TestMain(m *testing.M) {
	// Every tunnel a test brings up writes a namespace's resolver file
	// (/etc/netns/NS/resolv.conf), never the host's: a test whose client
	// namespace lacks one would, and every other namespace would see it.
	before, _ := os.Stat("/etc/resolv.conf")
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if after, _ := os.Stat("/etc/resolv.conf"); before != nil && after != nil && !after.ModTime().Equal(before.ModTime()) {
		fmt.Fprintln(os.Stderr, "e2e: the host's /etc/resolv.conf was written during the tests (a client namespace without /etc/netns/NS/resolv.conf?)")
		code = 1
	}
	os.Exit(code)
}

// requireLab skips the test when the machine cannot run it (fails instead
// under CI=true) and fails it when the binaries did not build.
func requireLab(t *testing.T) {
	t.Helper()
	setupOnce.Do(setup)
	if skipWhy != "" {
		if testenv.UnderCI() {
			t.Fatalf("CI=true and %s", skipWhy)
		}
		t.Skip(skipWhy)
	}
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

func setup() {
	if os.Geteuid() != 0 {
		skipWhy = "e2e tests need root (network namespaces, TUN devices)"
		return
	}
	for _, tool := range []struct{ bin, pkg string }{
		{"ip", "iproute2"}, {"ss", "iproute2"}, {"wg", "wireguard-tools"},
		{"iperf3", "iperf3"}, {"ping", "iputils-ping"},
	} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			skipWhy = fmt.Sprintf("%s is not installed (apt-get install %s)", tool.bin, tool.pkg)
			return
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		setupErr = fmt.Errorf("the go command is needed to build the binaries: %w", err)
		return
	}
	binDir, err = os.MkdirTemp("", "ptun-e2e-bin-")
	if err != nil {
		setupErr = err
		return
	}
	build := func(out, pkg string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
		return nil
	}
	wgGo = &impl{name: "wireguard-go", short: "wg", bin: filepath.Join(binDir, "wireguard-go"),
		env: []string{"WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=verbose"}}
	ptun = &impl{name: "ptun", short: "pt", bin: filepath.Join(binDir, "ptun"),
		env: []string{"LOG_LEVEL=verbose"}}
	if err := build(wgGo.bin, "golang.zx2c4.com/wireguard"); err != nil {
		setupErr = err
		return
	}
	if alt := os.Getenv("PTUN_E2E_PTUN"); alt != "" {
		if ptun.bin, err = filepath.Abs(alt); err != nil {
			setupErr = err
		}
		return
	}
	setupErr = build(ptun.bin, "github.com/ptun-vpn/ptun/cmd/ptun")
}

// ---------------------------------------------------------------------------
// Labs: two namespaced hosts joined by a veth pair.

// lab is one test's private network: namespaces "client" and "server", each
// with eth0 facing the other (198.18.0.1-2/24, 2001:db8:ff::1-2/64).
// Everything it creates is removed in t.Cleanup, processes first.
type lab struct {
	t              *testing.T
	id             string // 6 hex digits, unique per lab
	dir            string // keys and logs
	client, server *host
}

// host is one network namespace of a lab.
type host struct {
	lab          *lab
	role         string // "client" or "server"
	ns           string
	link4, link6 netip.Addr // eth0's addresses
}

func newLab(t *testing.T) *lab {
	t.Helper()
	requireLab(t)
	var id [3]byte
	rand.Read(id[:])
	l := &lab{t: t, id: hex.EncodeToString(id[:]), dir: t.TempDir()}
	l.client = &host{lab: l, role: "client", ns: "ptun-e2e-" + l.id + "-client", link4: clientLink4, link6: clientLink6}
	l.server = &host{lab: l, role: "server", ns: "ptun-e2e-" + l.id + "-server", link4: serverLink4, link6: serverLink6}
	for _, h := range []*host{l.client, l.server} {
		mustRun(t, "", "ip", "netns", "add", h.ns)
		t.Cleanup(func() { h.destroy(t) })
		mustRun(t, h.ns, "ip", "link", "set", "lo", "up")
	}
	l.addLink("eth0", "198.18.0.%d/24", "2001:db8:ff::%d/64")
	return l
}

// addLink joins the two hosts with a new veth pair called name on both
// sides; addr4 and addr6 are formats taking 1 (client) or 2 (server).
func (l *lab) addLink(name, addr4, addr6 string) {
	t := l.t
	t.Helper()
	mustRun(t, "", "ip", "-n", l.client.ns, "link", "add", name, "type", "veth",
		"peer", "name", name, "netns", l.server.ns)
	for i, h := range []*host{l.client, l.server} {
		mustRun(t, h.ns, "ip", "addr", "add", fmt.Sprintf(addr4, i+1), "dev", name)
		mustRun(t, h.ns, "ip", "addr", "add", fmt.Sprintf(addr6, i+1), "dev", name, "nodad")
		mustRun(t, h.ns, "ip", "link", "set", name, "up")
	}
}

// destroy kills whatever still runs in the namespace (daemons that detached
// from us included), then deletes it.
func (h *host) destroy(t *testing.T) {
	out, _ := run("", "ip", "netns", "pids", h.ns)
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	killPIDs(pids)
	if out, err := run("", "ip", "netns", "del", h.ns); err != nil {
		t.Errorf("deleting namespace %s: %v: %s", h.ns, err, out)
	}
}

// killPIDs sends SIGTERM to each process, waits up to 3 s for them to go
// away, then SIGKILLs the rest.
func killPIDs(pids []int) {
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(3 * time.Second)
	for _, pid := range pids {
		for processAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if processAlive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// processAlive reports whether pid exists and is not a zombie (a detached
// daemon's zombie may linger when PID 1 does not reap).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// ---------------------------------------------------------------------------
// Nodes: one WireGuard interface served by a daemon.

// node is a WireGuard interface in a host, served by a foreground daemon
// that the test started and kills in t.Cleanup.
type node struct {
	h          *host
	impl       *impl
	ifname     string
	port       int
	priv, pub  key
	tun4, tun6 netip.Addr
	d          *daemon
}

// startOpts tunes start.
type startOpts struct {
	env []string // extra environment for the daemon, e.g. PTUN_REKEY_AFTER_TIME=3s
	mtu int      // tunnel MTU; 0 means defaultMTU
}

// start runs im in the foreground in h and brings its interface up with a
// fresh private key, the role's listen port and tunnel addresses. Interface
// names embed the lab id, so parallel tests never share a UAPI socket.
func (h *host) start(im *impl, o startOpts) *node {
	t := h.lab.t
	t.Helper()
	n := &node{h: h, impl: im, ifname: im.short + h.lab.id + h.role[:1]}
	if h.role == "client" {
		n.port, n.tun4, n.tun6 = clientPort, clientTun4, clientTun6
	} else {
		n.port, n.tun4, n.tun6 = serverPort, serverTun4, serverTun6
	}
	n.d = startDaemon(t, h, im, n.ifname, o.env)
	n.priv, n.pub = newKeyPair(t)
	n.wg(t, "listen-port", strconv.Itoa(n.port), "private-key", h.lab.keyFile(t, n.priv))
	mtu := o.mtu
	if mtu == 0 {
		mtu = defaultMTU
	}
	mustRun(t, h.ns, "ip", "link", "set", n.ifname, "mtu", strconv.Itoa(mtu))
	mustRun(t, h.ns, "ip", "addr", "add", n.tun4.String()+"/24", "dev", n.ifname)
	mustRun(t, h.ns, "ip", "addr", "add", n.tun6.String()+"/64", "dev", n.ifname, "nodad")
	mustRun(t, h.ns, "ip", "link", "set", n.ifname, "up")
	return n
}

func (n *node) String() string { return n.impl.name + "/" + n.ifname }

// peerOpts says how a node knows a peer.
type peerOpts struct {
	endpoint bool     // set the peer's eth0 IPv4 address and port as endpoint
	psk      *key     // preshared key, or nil
	allowed  []string // allowed IPs; nil means tunnelNets
}

// addPeer configures p as a peer of n.
func (n *node) addPeer(t *testing.T, p *node, o peerOpts) {
	t.Helper()
	allowed := o.allowed
	if allowed == nil {
		allowed = tunnelNets
	}
	args := []string{"peer", p.pub.String(), "allowed-ips", strings.Join(allowed, ",")}
	if o.endpoint {
		args = append(args, "endpoint", netip.AddrPortFrom(p.h.link4, uint16(p.port)).String())
	}
	if o.psk != nil {
		args = append(args, "preshared-key", n.h.lab.keyFile(t, *o.psk))
	}
	n.wg(t, args...)
}

// pairOpts describes a two-node tunnel for lab.pair.
type pairOpts struct {
	client, server       *impl
	clientEnv, serverEnv []string
	// initiator is "client" or "server" when only that side knows the
	// other's endpoint (so only it can start the handshake); "" means both
	// know each other's.
	initiator string
	psk       bool
	mtu       int
}

// pair starts a client and a server node that are each other's peer. It
// does not send any traffic.
func (l *lab) pair(o pairOpts) (c, s *node) {
	l.t.Helper()
	c = l.client.start(o.client, startOpts{env: o.clientEnv, mtu: o.mtu})
	s = l.server.start(o.server, startOpts{env: o.serverEnv, mtu: o.mtu})
	var psk *key
	if o.psk {
		k := randomKey(l.t)
		psk = &k
	}
	c.addPeer(l.t, s, peerOpts{endpoint: o.initiator != "server", psk: psk})
	s.addPeer(l.t, c, peerOpts{endpoint: o.initiator != "client", psk: psk})
	return c, s
}

// ---------------------------------------------------------------------------
// Daemons.

// daemon is a process the test started and will stop.
type daemon struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, valid once done is closed
}

// socketPath is where wg(8) looks for a userspace interface's UAPI socket.
func socketPath(ifname string) string { return "/var/run/wireguard/" + ifname + ".sock" }

// startDaemon runs `im -f ifname` in h and waits until its UAPI socket
// answers. In t.Cleanup it stops the process (SIGTERM, then SIGKILL),
// removes a socket it may have left behind, and logs the daemon's output if
// the test failed.
func startDaemon(t *testing.T, h *host, im *impl, ifname string, env []string) *daemon {
	t.Helper()
	d := &daemon{logPath: filepath.Join(h.lab.dir, ifname+".log"), done: make(chan struct{})}
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command("ip", "netns", "exec", h.ns, im.bin, "-f", ifname)
	d.cmd.Env = append(append(os.Environ(), im.env...), env...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting %s %s: %v", im.name, ifname, err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop()
		os.Remove(socketPath(ifname))
		if t.Failed() {
			t.Logf("%s %s output (tail):\n%s", im.name, ifname, tail(d.logPath, 6000))
		}
	})
	waitFor(t, startTimeout, fmt.Sprintf("%s to serve %s", im.name, socketPath(ifname)), func() (bool, string) {
		select {
		case <-d.done:
			t.Fatalf("%s %s exited during start-up (%v):\n%s", im.name, ifname, d.err, tail(d.logPath, 4000))
		default:
		}
		_, err := uapiRequest(ifname, "get=1\n\n")
		return err == nil, fmt.Sprint(err)
	})
	return d
}

// stop ends the daemon (SIGTERM, SIGKILL after 5 s) and waits for it.
func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

func tail(path string, max int) string {
	b, _ := os.ReadFile(path)
	if len(b) > max {
		b = append([]byte("..."), b[len(b)-max:]...)
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// Commands.

// run runs argv in namespace ns ("" for the test's own) with cmdTimeout and
// returns its combined output.
func run(ns string, argv ...string) (string, error) {
	return runTimeout(cmdTimeout, ns, argv...)
}

func runTimeout(timeout time.Duration, ns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	b, err := nsCommand(ctx, ns, argv...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%v (timed out after %v)", err, timeout)
	}
	return string(b), err
}

func nsCommand(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

// mustRun is run that fails the test on error.
func mustRun(t *testing.T, ns string, argv ...string) string {
	t.Helper()
	out, err := run(ns, argv...)
	if err != nil {
		t.Fatalf("%s (netns %q): %v\n%s", strings.Join(argv, " "), ns, err, out)
	}
	return out
}

// waitFor polls cond every 100 ms until it holds, failing the test after
// timeout with what cond last said.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (ok bool, detail string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, detail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Keys.

// key is a Curve25519 key or a preshared key.
type key [32]byte

func (k key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }
func (k key) hex() string    { return hex.EncodeToString(k[:]) }

func newKeyPair(t *testing.T) (priv, pub key) {
	t.Helper()
	sk, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	copy(priv[:], sk.Bytes())
	copy(pub[:], sk.PublicKey().Bytes())
	return priv, pub
}

func randomKey(t *testing.T) key {
	var k key
	rand.Read(k[:])
	return k
}

// keyFile writes k to a new file (mode 0600) for wg(8) and returns its path.
func (l *lab) keyFile(t *testing.T, k key) string {
	t.Helper()
	f, err := os.CreateTemp(l.dir, "key-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// ---------------------------------------------------------------------------
// wg(8).

// wg runs `wg set IFNAME args...` in n's namespace and fails the test on
// error.
func (n *node) wg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := n.wgErr(args...); err != nil {
		t.Fatalf("wg set %s %s: %v\n%s", n.ifname, strings.Join(args, " "), err, out)
	}
}

// wgErr runs `wg set IFNAME args...` and returns its error.
func (n *node) wgErr(args ...string) (string, error) {
	return run(n.h.ns, append([]string{"wg", "set", n.ifname}, args...)...)
}

// wgDump is `wg show IFNAME dump`, parsed.
type wgDump struct {
	PublicKey  string
	ListenPort int
	Peers      map[string]wgPeer // by base64 public key
	raw        string
}

type wgPeer struct {
	PresharedKey    string // base64 or "(none)"
	Endpoint        string // "(none)" when unknown
	AllowedIPs      string // comma-separated or "(none)"
	LatestHandshake int64  // Unix seconds, 0 when none
	RxBytes         uint64
	TxBytes         uint64
}

// show runs `wg show IFNAME dump` in n's namespace.
func (n *node) show(t *testing.T) wgDump {
	t.Helper()
	out := mustRun(t, n.h.ns, "wg", "show", n.ifname, "dump")
	d, err := parseDump(out)
	if err != nil {
		t.Fatalf("wg show %s dump: %v\n%s", n.ifname, err, out)
	}
	return d
}

func parseDump(out string) (wgDump, error) {
	d := wgDump{Peers: map[string]wgPeer{}, raw: out}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 {
		return d, errors.New("empty output")
	}
	f := strings.Split(lines[0], "\t")
	if len(f) != 4 {
		return d, fmt.Errorf("interface line has %d fields, want 4", len(f))
	}
	d.PublicKey = f[1]
	d.ListenPort, _ = strconv.Atoi(f[2])
	for _, line := range lines[1:] {
		f := strings.Split(line, "\t")
		if len(f) != 8 {
			return d, fmt.Errorf("peer line %q has %d fields, want 8", line, len(f))
		}
		hs, _ := strconv.ParseInt(f[4], 10, 64)
		rx, _ := strconv.ParseUint(f[5], 10, 64)
		tx, _ := strconv.ParseUint(f[6], 10, 64)
		d.Peers[f[0]] = wgPeer{PresharedKey: f[1], Endpoint: f[2], AllowedIPs: f[3],
			LatestHandshake: hs, RxBytes: rx, TxBytes: tx}
	}
	return d, nil
}

// peer returns what n's `wg show` says about p, failing the test if p is
// not listed.
func (n *node) peer(t *testing.T, p *node) wgPeer {
	t.Helper()
	d := n.show(t)
	pp, ok := d.Peers[p.pub.String()]
	if !ok {
		t.Fatalf("%v does not list peer %v:\n%s", n, p, d.raw)
	}
	return pp
}

// waitHandshake waits until n reports a handshake with p newer than after
// (Unix seconds) and returns its time.
func (n *node) waitHandshake(t *testing.T, p *node, after int64) int64 {
	t.Helper()
	var hs int64
	waitFor(t, 10*time.Second, fmt.Sprintf("%v to complete a handshake with %v", n, p), func() (bool, string) {
		hs = n.peer(t, p).LatestHandshake
		return hs > after, fmt.Sprintf("latest handshake %d", hs)
	})
	return hs
}

// ---------------------------------------------------------------------------
// ptun's counters and the raw UAPI.

var counterLine = regexp.MustCompile(`^\s+([a-z0-9_]+):\s+(\d+)\s*$`)

// stats returns the counters `ptun show IFNAME` prints as "  name: N" lines
// (drops by reason and the other counters).
func (n *node) stats(t *testing.T) map[string]uint64 {
	t.Helper()
	if n.impl != ptun {
		t.Fatalf("stats: %v is not ptun", n)
	}
	out := mustRun(t, n.h.ns, ptun.bin, "show", n.ifname)
	m := map[string]uint64{}
	for _, line := range strings.Split(out, "\n") {
		if sm := counterLine.FindStringSubmatch(line); sm != nil {
			m[sm[1]], _ = strconv.ParseUint(sm[2], 10, 64)
		}
	}
	if _, ok := m["drop_no_route"]; !ok {
		t.Fatalf("ptun show %s printed no drop counters:\n%s", n.ifname, out)
	}
	return m
}

// uapiRequest sends one request (which must end with an empty line) to
// ifname's UAPI socket and returns the response body up to "errno=N" and
// N. err is set when the exchange itself fails or the response has no
// errno line.
func uapiRequest(ifname, req string) (resp uapiResponse, err error) {
	c, err := net.DialTimeout("unix", socketPath(ifname), 2*time.Second)
	if err != nil {
		return resp, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		return resp, err
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return resp, fmt.Errorf("reading the response after %q: %w", resp.body, err)
		}
		line = strings.TrimSuffix(line, "\n")
		if v, ok := strings.CutPrefix(line, "errno="); ok {
			resp.errno, err = strconv.Atoi(v)
			return resp, err
		}
		resp.body += line + "\n"
	}
}

type uapiResponse struct {
	body  string // name=value lines before errno
	errno int
}

// values returns the response's name=value lines as a map (the last value
// wins for repeated names).
func (r uapiResponse) values() map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(r.body, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// ---------------------------------------------------------------------------
// ping.

var pingReceived = regexp.MustCompile(`(\d+) (?:packets )?received`)

// ping asserts that three echo replies come back from dst within 10 s. args
// go before dst (e.g. "-I", addr or "-s", "1472", "-M", "do").
func (n *node) ping(t *testing.T, dst netip.Addr, args ...string) {
	t.Helper()
	argv := append(append([]string{"ping", "-n", "-q", "-c", "3", "-i", "0.2", "-w", "10"}, args...), dst.String())
	if out, err := run(n.h.ns, argv...); err != nil {
		t.Fatalf("%v: %s: %v\n%s", n, strings.Join(argv, " "), err, out)
	}
}

// pingFails asserts that no echo reply comes back from dst during 3 s of
// pinging.
func (n *node) pingFails(t *testing.T, dst netip.Addr, args ...string) {
	t.Helper()
	argv := append(append([]string{"ping", "-n", "-q", "-i", "0.2", "-w", "3"}, args...), dst.String())
	out, err := run(n.h.ns, argv...)
	m := pingReceived.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%v: %s: %v: no summary in output:\n%s", n, strings.Join(argv, " "), err, out)
	}
	if m[1] != "0" {
		t.Fatalf("%v: %s: got %s replies, want none:\n%s", n, strings.Join(argv, " "), m[1], out)
	}
}

// ---------------------------------------------------------------------------
// iperf3.

// iperfResult is the part of `iperf3 --json` the tests read.
type iperfResult struct {
	Intervals []struct {
		Sum iperfSum `json:"sum"`
	} `json:"intervals"`
	End struct {
		Sum         iperfSum `json:"sum"` // UDP: receiver's loss figures
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         uint64  `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Packets       uint64  `json:"packets"`
	LostPackets   uint64  `json:"lost_packets"`
	LostPercent   float64 `json:"lost_percent"`
}

func (r iperfResult) mbits() float64 { return r.End.SumReceived.BitsPerSecond / 1e6 }

// iperf3 runs an iperf3 server in to's namespace and a client in from's,
// connecting to dst, with args added to the client (e.g. "-t", "3", "-R").
// It fails the test on any error.
func iperf3(t *testing.T, from, to *host, dst netip.Addr, args ...string) iperfResult {
	t.Helper()
	r, err := runIperf3(from, to, dst, args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// runIperf3 is iperf3 returning its error, for use off the test goroutine.
// One measurement runs at a time (iperfMu).
func runIperf3(from, to *host, dst netip.Addr, args ...string) (iperfResult, error) {
	var r iperfResult
	iperfMu.Lock()
	defer iperfMu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	port := strconv.Itoa(iperfPort)
	var srvOut bytes.Buffer
	srv := nsCommand(ctx, to.ns, "iperf3", "-s", "-1", "-p", port)
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return r, fmt.Errorf("starting the iperf3 server: %w", err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	defer func() {
		select {
		case <-srvDone:
		case <-time.After(5 * time.Second):
			srv.Process.Kill()
			<-srvDone
		}
	}()

	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := run("", "ss", "-N", to.ns, "-Htln", "sport = :"+port)
		if strings.Contains(out, "LISTEN") {
			break
		}
		if time.Now().After(deadline) {
			srv.Process.Kill()
			return r, fmt.Errorf("iperf3 server in %s did not listen within 5 s: %s", to.ns, out)
		}
		time.Sleep(50 * time.Millisecond)
	}

	argv := append([]string{"iperf3", "-c", dst.String(), "-p", port, "--json", "--connect-timeout", "5000"}, args...)
	out, runErr := nsCommand(ctx, from.ns, argv...).Output()
	fail := func(format string, args ...any) (iperfResult, error) {
		srv.Process.Kill()
		<-srvDone
		srvDone <- nil // for the deferred wait
		return r, fmt.Errorf("%s (netns %s): %s\niperf3 server (netns %s) said:\n%s",
			strings.Join(argv, " "), from.ns, fmt.Sprintf(format, args...), to.ns, srvOut.String())
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return fail("%v; output is not JSON (%v):\n%s", runErr, err, out)
	}
	if runErr != nil || r.Error != "" {
		return fail("%v: %s", runErr, r.Error)
	}
	return r, nil
}
