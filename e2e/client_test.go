package e2e

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// TestClientUpDown runs `ptun up` with a full-tunnel profile and the kill
// switch against a ptun gateway in another namespace: it returns once the
// handshake completed, traffic passes, `status` shows it; when the
// interface dies the kill switch keeps the client from reaching the
// underlay; `ptun down` removes the interface, its rules, its nftables
// table and its resolver change.
func TestClientUpDown(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	name := "e2e" + l.id
	profiles, state, resolv := clientFixture(t, l, name, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, true)
	ifname := client.Interface(name)
	flags := []string{"--profiles", profiles, "--state", state}
	t.Cleanup(func() { run(l.client.ns, append([]string{ptun.bin, "down", name}, flags...)...) })

	start := time.Now()
	out := mustRun(t, l.client.ns, append([]string{ptun.bin, "up", name, "--kill-switch"}, flags...)...)
	t.Logf("ptun up: %s (%v)", strings.TrimSpace(out), time.Since(start).Round(time.Millisecond))
	mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", serverTun4.String())
	if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver 198.18.2.53") {
		t.Errorf("resolv.conf after up:\n%s", b)
	}
	rules := mustRun(t, l.client.ns, "ip", "rule")
	if !strings.Contains(rules, "not from all fwmark 0xca6c lookup 51820") || !strings.Contains(rules, "suppress_prefixlength 0") {
		t.Errorf("policy rules after up:\n%s", rules)
	}
	// Full tunnel: any destination goes into the tunnel, but the tunnel's
	// own (marked) datagrams go to the gateway on the underlay.
	if r := mustRun(t, l.client.ns, "ip", "route", "get", "198.18.9.9"); !strings.Contains(r, "dev "+ifname) {
		t.Errorf("a destination outside every route does not go into the tunnel: %s", r)
	}
	if r := mustRun(t, l.client.ns, "ip", "route", "get", l.server.link4.String(), "mark", strconv.Itoa(client.FwMark)); !strings.Contains(r, "dev eth0") {
		t.Errorf("the tunnel's own datagrams would loop: %s", r)
	}
	status := mustRun(t, l.client.ns, append([]string{ptun.bin, "status", name}, flags...)...)
	if !strings.Contains(status, "up on "+ifname) || strings.Contains(status, "none yet") {
		t.Errorf("status:\n%s", status)
	}
	// The interface dies (its daemon with it): the kill switch stays,
	// and nothing reaches the underlay but the gateway's endpoint.
	mustRun(t, l.client.ns, "ip", "link", "del", ifname)
	if out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", l.server.link4.String()); err == nil {
		t.Errorf("with the tunnel gone the kill switch let a ping through:\n%s", out)
	} else if !strings.Contains(out, "not permitted") {
		route, _ := run(l.client.ns, "ip", "route", "get", l.server.link4.String())
		rs, _ := run(l.client.ns, "nft", "list", "ruleset")
		t.Logf("ping with the kill switch on: %v: %s\nroute: %s\nruleset:\n%s", err, out, route, rs)
	}
	out = mustRun(t, l.client.ns, append([]string{ptun.bin, "down", name}, flags...)...)
	if !strings.Contains(out, "is down") {
		t.Errorf("down: %s", out)
	}
	// Nothing of ptun's is left.
	if rules := mustRun(t, l.client.ns, "ip", "rule"); strings.Contains(rules, "0xca6c") || strings.Contains(rules, "suppress_prefixlength") {
		t.Errorf("rules left after down:\n%s", rules)
	}
	if tables := mustRun(t, l.client.ns, "nft", "list", "tables"); strings.Contains(tables, "ptun") {
		t.Errorf("nftables tables left after down:\n%s", tables)
	}
	if b, _ := os.ReadFile(resolv); string(b) != "nameserver 198.18.0.53\n" {
		t.Errorf("resolv.conf not restored:\n%s", b)
	}
	if routes := mustRun(t, l.client.ns, "ip", "route", "show", "table", strconv.Itoa(client.FwMark)); strings.TrimSpace(routes) != "" {
		t.Errorf("routes left in table %d:\n%s", client.FwMark, routes)
	}
	mustRun(t, l.client.ns, "ping", "-c", "1", "-W", "2", l.server.link4.String())
	if _, err := os.Stat(filepath.Join(state, name+".json")); !os.IsNotExist(err) {
		t.Errorf("state record left after down: %v", err)
	}
}

// TestClientUpResolved: on a host where systemd-resolved runs (the real
// one, on a bus of its own), `ptun up` gives the tunnel's link its DNS
// servers and search domain there, a full tunnel takes every query, the
// resolver file is left alone, and `ptun down` leaves resolved holding
// nothing of the tunnel's.
func TestClientUpResolved(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	rd := testenv.StartResolved(t, l.client.ns)
	name := "rd" + l.id
	profiles, state, resolv := clientFixture(t, l, name, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, true)
	ifname := client.Interface(name)
	withBus := []string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + rd.Bus, ptun.bin}
	flags := []string{"--profiles", profiles, "--state", state}
	t.Cleanup(func() { run(l.client.ns, append(append(withBus, "down", name), flags...)...) })
	mustRun(t, l.client.ns, append(append(withBus, "up", name), flags...)...)
	mustRun(t, l.client.ns, "ping", "-c", "1", "-W", "2", serverTun4.String())
	st, err := rd.Ctl("status", ifname)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st, "198.18.2.53") || !strings.Contains(st, "corp.example") || !strings.Contains(st, "~.") || !strings.Contains(st, "+DefaultRoute") {
		t.Errorf("resolved's view of %s:\n%s", ifname, st)
	}
	if b, _ := os.ReadFile(resolv); string(b) != "nameserver 198.18.0.53\n" {
		t.Errorf("resolv.conf was written with resolved running:\n%s", b)
	}
	mustRun(t, l.client.ns, append(append(withBus, "down", name), flags...)...)
	if st, _ := rd.Ctl("status"); strings.Contains(st, "198.18.2.53") || strings.Contains(st, ifname) {
		t.Errorf("resolved after down:\n%s", st)
	}
}

// TestKillSwitchCapture: with the kill switch on, while the client's engine
// is killed (and the front starts another) and then while the whole daemon
// is killed, what the client's applications send never reaches the
// underlay: a capture on the gateway's side sees nothing from the client
// but WireGuard to the gateway's endpoint (and ARP).
func TestKillSwitchCapture(t *testing.T) {
	t.Parallel()
	tcpdump := testenv.RequireTool(t, "tcpdump", "tcpdump")
	l := newLab(t)
	name := "ks" + l.id
	profiles, state, _ := clientFixture(t, l, name, []netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")}, false)
	ifname := client.Interface(name)
	flags := []string{"--profiles", profiles, "--state", state}
	t.Cleanup(func() { run(l.client.ns, append([]string{ptun.bin, "down", name}, flags...)...) })
	mustRun(t, l.client.ns, append([]string{ptun.bin, "up", name, "--kill-switch"}, flags...)...)
	mustRun(t, l.client.ns, "ping", "-c", "1", "-W", "2", serverTun4.String())

	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	ctx, cancel := context.WithCancel(context.Background())
	capture := nsCommand(ctx, l.server.ns, tcpdump, "-i", "eth0", "-n", "-U", "-w", pcap, "src", l.client.link4.String())
	capture.Cancel = func() error { return capture.Process.Signal(syscall.SIGINT) }
	capture.WaitDelay = 5 * time.Second
	var capOut strings.Builder
	capture.Stderr = &capOut
	if err := capture.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "tcpdump to listen", func() (bool, string) {
		return strings.Contains(capOut.String(), "listening"), capOut.String()
	})
	// What applications try while the tunnel is being broken: an echo, a
	// datagram and a connection to the gateway's host, none to the
	// endpoint.
	leak := func() {
		run(l.client.ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", l.server.link4.String())
		run(l.client.ns, "sh", "-c", "echo leak >/dev/udp/"+l.server.link4.String()+"/9; echo leak >/dev/tcp/"+l.server.link4.String()+"/22")
	}
	pids := func(pattern string) []string {
		out, _ := run("", "pgrep", "-f", "--", pattern)
		return strings.Fields(out)
	}
	engines := pids("--engine-of " + ifname)
	if len(engines) == 0 {
		t.Fatal("no engine process found")
	}
	for _, pid := range engines {
		mustRun(t, "", "kill", "-9", pid)
	}
	leak()
	waitFor(t, 10*time.Second, "a new engine", func() (bool, string) {
		n := pids("--engine-of " + ifname)
		return len(n) > 0 && n[0] != engines[0], strings.Join(n, " ")
	})
	mustRun(t, l.client.ns, "ping", "-c", "1", "-W", "2", serverTun4.String()) // the tunnel works again
	for _, pid := range pids("ptun up " + name) {
		run("", "kill", "-9", pid)
	}
	for _, pid := range pids("--engine-of " + ifname) {
		run("", "kill", "-9", pid)
	}
	leak()
	cancel()
	capture.Wait()
	out := mustRun(t, "", tcpdump, "-n", "-r", pcap)
	var endpoint, other []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch {
		case line == "" || strings.Contains(line, "ARP") || strings.HasPrefix(line, "reading from file"):
		case strings.Contains(line, " > "+l.server.link4.String()+"."+strconv.Itoa(serverPort)+": UDP"):
			endpoint = append(endpoint, line)
		default:
			other = append(other, line)
		}
	}
	t.Logf("captured from the client: %d datagrams to the endpoint, %d others", len(endpoint), len(other))
	if len(other) > 0 {
		t.Errorf("the kill switch let these reach the underlay:\n%s", strings.Join(other, "\n"))
	}
	if len(endpoint) == 0 {
		t.Errorf("the capture saw no WireGuard at all (is it capturing?):\n%s", out)
	}
}

// clientFixture is what the client tests share: a plain ptun interface on
// the lab's server with the device as its peer, and a profile NAME (routes
// as given; with dns, DNS 198.18.2.53 and search corp.example, and a
// resolv.conf of the client's namespace to write them to) in a temporary
// profiles folder, with a state folder beside it. resolv is "" without dns.
func clientFixture(t *testing.T, l *lab, name string, routes []netip.Prefix, dns bool) (profiles, state, resolv string) {
	t.Helper()
	s := l.server.start(ptun, startOpts{})
	devPriv, devPub := newKeyPair(t)
	s.wg(t, "peer", devPub.String(), "allowed-ips", clientTun4.String()+"/32")
	dir := t.TempDir()
	profiles, state = filepath.Join(dir, "profiles"), filepath.Join(dir, "state")
	offer := profile.Offer{Version: profile.Version, User: "alice", Device: "laptop", MTU: 1420,
		Gateways:  []profile.Gateway{{Name: "gw1", PublicKey: noise.PublicKey(s.pub), Endpoint: netip.AddrPortFrom(l.server.link4, serverPort)}},
		Addresses: []netip.Prefix{netip.PrefixFrom(clientTun4, 32)},
		Routes:    routes}
	if dns {
		// `ip netns exec` gives the namespace's commands
		// /etc/netns/NS/resolv.conf as their /etc/resolv.conf (a bind
		// mount): up writes it there.
		nsEtc := filepath.Join("/etc/netns", l.client.ns)
		if err := os.MkdirAll(nsEtc, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(nsEtc) })
		resolv = filepath.Join(nsEtc, "resolv.conf")
		os.WriteFile(resolv, []byte("nameserver 198.18.0.53\n"), 0o644)
		offer.DNS, offer.Search = []netip.Addr{netip.MustParseAddr("198.18.2.53")}, []string{"corp.example"}
	}
	p := &profile.Profile{Name: name, PrivateKey: noise.PrivateKey(devPriv).Base64(), EnrolledAt: time.Now().UTC(), Offer: offer}
	if err := profile.Save(profiles, p); err != nil {
		t.Fatal(err)
	}
	return profiles, state, resolv
}
