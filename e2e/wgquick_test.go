package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// Addresses of TestWgQuick beyond the lab's.
var (
	// wqEndpoint is the server's WireGuard address: on its loopback, so
	// the client reaches it through its default route, the route that
	// wg-quick's full tunnel takes over.
	wqEndpoint = netip.MustParseAddr("198.19.0.2")
	// wqBehind is a host behind the server, in a third namespace: the
	// server forwards to it only from the tunnel.
	wqBehind       = netip.MustParseAddr("100.64.1.2")
	wqBehindGW     = "100.64.1.1/24" // the server's side of that link
	wqBehindPrefix = "100.64.1.2/24"
)

// TestWgQuick: the real wg-quick brings up a full tunnel (AllowedIPs =
// 0.0.0.0/0) with ptun as its userspace implementation, against
// wireguard-go in a second namespace: wg-quick's fwmark and policy rules
// keep ptun's own UDP on the underlay, the tunnel carries traffic to the
// server and to a host only the server can reach, and wg-quick down
// removes the interface, the rules and the daemon. The daemon, started by
// wg-quick without -f, logs to /var/log/ptun/IFNAME.log (bound to a
// temporary directory here, with /dev/log hidden).
func TestWgQuick(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	wgQuick := testenv.RequireTool(t, "wg-quick", "wireguard-tools")
	testenv.RequireTool(t, "nft", "nftables") // wg-quick's firewall rules for a full tunnel
	testenv.RequireTool(t, "sysctl", "procps")
	testenv.RequireTool(t, "unshare", "util-linux")
	testenv.RequireTool(t, "mount", "mount")
	c, s := l.client, l.server

	// The server: wireguard-go, reached at wqEndpoint, forwarding between
	// the tunnel and the host behind it (and nothing from eth0).
	srv := s.start(wgGo, startOpts{})
	mustRun(t, s.ns, "ip", "addr", "add", wqEndpoint.String()+"/32", "dev", "lo")
	behind := &host{lab: l, role: "behind", ns: "ptun-e2e-" + l.id + "-behind"}
	mustRun(t, "", "ip", "netns", "add", behind.ns)
	t.Cleanup(func() { behind.destroy(t) })
	mustRun(t, "", "ip", "-n", s.ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0", "netns", behind.ns)
	mustRun(t, s.ns, "ip", "addr", "add", wqBehindGW, "dev", "lan0")
	mustRun(t, s.ns, "ip", "link", "set", "lan0", "up")
	mustRun(t, behind.ns, "ip", "link", "set", "lo", "up")
	mustRun(t, behind.ns, "ip", "addr", "add", wqBehindPrefix, "dev", "lan0")
	mustRun(t, behind.ns, "ip", "link", "set", "lan0", "up")
	mustRun(t, behind.ns, "ip", "route", "add", "default", "via", strings.Split(wqBehindGW, "/")[0])
	mustRun(t, s.ns, "sysctl", "-q", "-w", "net.ipv4.conf.lan0.forwarding=1", "net.ipv4.conf."+srv.ifname+".forwarding=1")

	// The client's way out is its default route, through the server's
	// eth0, which does not forward: before the tunnel, the host behind
	// the server is out of reach.
	mustRun(t, c.ns, "ip", "route", "add", "default", "via", serverLink4.String(), "dev", "eth0")
	mustRun(t, c.ns, "ping", "-n", "-q", "-c", "1", "-w", "5", wqEndpoint.String())
	nsPingFails(t, c.ns, wqBehind)

	// The client's configuration, as a user writes it (no DNS line: that
	// would need resolvconf).
	ifname := "wq" + l.id + "c"
	priv, pub := newKeyPair(t)
	conf := filepath.Join(l.dir, ifname+".conf")
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s/32

[Peer]
PublicKey = %s
Endpoint = %s
AllowedIPs = 0.0.0.0/0
`, priv, clientTun4, srv.pub, netip.AddrPortFrom(wqEndpoint, uint16(srv.port)))), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv.wg(t, "peer", pub.String(), "allowed-ips", clientTun4.String()+"/32")
	cl := &node{h: c, impl: ptun, ifname: ifname, priv: priv, pub: pub, tun4: clientTun4} // for the harness's helpers

	// wg-quick up, in a mount namespace of its own where /var/log is a
	// directory of the test's and /dev/log (if the machine has one) does
	// not answer, so the daemon it starts logs to a file we can read. The
	// daemon stays in that mount namespace; nothing else differs.
	varLog := filepath.Join(l.dir, "var-log")
	if err := os.Mkdir(varLog, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(varLog, "ptun", ifname+".log")
	t.Cleanup(func() {
		killPIDs(ptunPIDs(t, c)) // whatever wg-quick down left
		os.Remove(socketPath(ifname))
		if t.Failed() {
			t.Logf("ptun's log %s:\n%s", logPath, tail(logPath, 6000))
		}
	})
	start := time.Now()
	up := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
		`d=$1; shift; mount --bind "$d" /var/log && { [ ! -e /dev/log ] || mount --bind /dev/null /dev/log; } && exec "$@"`,
		"sh", varLog, "ip", "netns", "exec", c.ns,
		"env", "WG_QUICK_USERSPACE_IMPLEMENTATION=" + ptun.bin, "LOG_LEVEL=verbose", wgQuick, "up", conf}
	out, err := runTimeout(time.Minute, "", up...)
	if err != nil {
		t.Fatalf("wg-quick up: %v\n%s", err, out)
	}
	t.Logf("wg-quick up took %v:\n%s", time.Since(start).Round(time.Millisecond), out)

	t.Run("ptun serves the interface", func(t *testing.T) {
		if !strings.Contains(out, "Falling back to slow userspace implementation") {
			t.Errorf("wg-quick did not start the userspace implementation (a kernel module?)")
		}
		if len(ptunPIDs(t, c)) == 0 {
			t.Errorf("no ptun process in %s", c.ns)
		}
		if out, err := run(c.ns, ptun.bin, "show", ifname); err != nil || !strings.Contains(out, "drop_no_route") {
			t.Errorf("ptun show %s: %v\n%s", ifname, err, out)
		}
	})
	t.Run("policy routing is set up", func(t *testing.T) {
		rules := mustRun(t, c.ns, "ip", "-4", "rule", "show")
		fwmark := strings.TrimSpace(mustRun(t, c.ns, "wg", "show", ifname, "fwmark"))
		if fwmark == "off" || fwmark == "" {
			t.Fatalf("wg-quick set no fwmark on %s", ifname)
		}
		for _, want := range []string{"not from all fwmark " + fwmark + " lookup ", "from all lookup main suppress_prefixlength 0"} {
			if !strings.Contains(rules, want) {
				t.Errorf("no rule %q:\n%s", want, rules)
			}
		}
		if out := mustRun(t, c.ns, "nft", "list", "tables"); !strings.Contains(out, "wg-quick-"+ifname) {
			t.Errorf("no nft table wg-quick-%s:\n%s", ifname, out)
		}
	})
	t.Run("ping the server's tunnel address", func(t *testing.T) {
		nsPing(t, c.ns, serverTun4)
	})
	t.Run("ping the host behind the server", func(t *testing.T) {
		nsPing(t, c.ns, wqBehind)
	})
	t.Run("the tunnel's own UDP takes the underlay", func(t *testing.T) {
		// The endpoint is routed into the tunnel unless a packet carries
		// the interface's fwmark, as ptun's UDP socket must.
		fwmark := strings.TrimSpace(mustRun(t, c.ns, "wg", "show", ifname, "fwmark"))
		if out := mustRun(t, c.ns, "ip", "-4", "route", "get", wqEndpoint.String()); !strings.Contains(out, "dev "+ifname) {
			t.Errorf("unmarked packets to the endpoint do not go into the tunnel, so this test shows nothing:\n%s", out)
		}
		if out := mustRun(t, c.ns, "ip", "-4", "route", "get", wqEndpoint.String(), "mark", fwmark); !strings.Contains(out, "dev eth0") {
			t.Errorf("marked packets to the endpoint do not take eth0:\n%s", out)
		}
		// Were ptun's datagrams routed into the tunnel, no handshake
		// would complete and the server would not see the client at its
		// eth0 address.
		d, err := parseDump(mustRun(t, c.ns, "wg", "show", ifname, "dump"))
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := d.Peers[srv.pub.String()]; !ok || p.LatestHandshake == 0 || p.RxBytes == 0 {
			t.Errorf("the client shows no handshake or nothing received from the server:\n%s", d.raw)
		}
		if hs := srv.peer(t, cl).LatestHandshake; hs == 0 {
			t.Errorf("the server shows no handshake with the client")
		}
		if ep := srv.peer(t, cl).Endpoint; !strings.HasPrefix(ep, clientLink4.String()+":") {
			t.Errorf("the server sees the client at %s, want %s:PORT", ep, clientLink4)
		}
	})
	t.Run("the daemon logged its start to its file", func(t *testing.T) {
		b, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		if want := "interface " + ifname + " starting"; !strings.Contains(string(b), want) {
			t.Errorf("%s does not say %q:\n%s", logPath, want, b)
		}
	})

	pids := ptunPIDs(t, c)
	out, err = run(c.ns, wgQuick, "down", conf)
	if err != nil {
		t.Fatalf("wg-quick down: %v\n%s", err, out)
	}
	t.Run("wg-quick down removes everything", func(t *testing.T) {
		waitGone(t, c, ifname, pids)
		if out, err := run(c.ns, "ip", "link", "show", ifname); err == nil {
			t.Errorf("%s still exists:\n%s", ifname, out)
		}
		rules := mustRun(t, c.ns, "ip", "-4", "rule", "show")
		if strings.Contains(rules, "fwmark") || strings.Contains(rules, "suppress_prefixlength") {
			t.Errorf("wg-quick's rules are still there:\n%s", rules)
		}
		if out := mustRun(t, c.ns, "nft", "list", "tables"); strings.Contains(out, "wg-quick-"+ifname) {
			t.Errorf("nft table wg-quick-%s is still there:\n%s", ifname, out)
		}
		nsPingFails(t, c.ns, wqBehind)
		if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "interface "+ifname+" stopped") {
			t.Errorf("%s does not say the interface stopped:\n%s", logPath, b)
		}
	})
}

// nsPing asserts that three echo replies come back from dst, pinged from
// namespace ns, within 10 s.
func nsPing(t *testing.T, ns string, dst netip.Addr) {
	t.Helper()
	if out, err := run(ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-w", "10", dst.String()); err != nil {
		t.Fatalf("ping %s in %s: %v\n%s", dst, ns, err, out)
	}
}

// nsPingFails asserts that pings from namespace ns to dst leave (ping
// prints its summary) and that no reply comes back during 2 s.
func nsPingFails(t *testing.T, ns string, dst netip.Addr) {
	t.Helper()
	out, err := run(ns, "ping", "-n", "-q", "-i", "0.2", "-w", "2", dst.String())
	m := pingReceived.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ping %s in %s: %v: no summary in output:\n%s", dst, ns, err, out)
	}
	if m[1] != "0" {
		t.Fatalf("ping %s in %s got %s replies, want none:\n%s", dst, ns, m[1], out)
	}
}
