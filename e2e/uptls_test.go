package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/registry"
)

// TestUpViaTLS: a device enrolled with `ptun join` at a gateway with a TLS
// listener brings its tunnel up with `ptun up --via tls` from a network
// that drops all UDP to the gateway (nftables on the client's host). The
// profile names the gateway's TLS address; the device logs in with its
// key and gets its own address (the profile's) on pt-NAME; ping and iperf3
// both ways reach the lan host over CSTP; the gateway lists the WireGuard
// device online on cstp; a revoke stops its traffic within a second; ptun
// down removes the interface.
// tlsLab is a gateway with a TLS listener (and one user, alice) and a
// client that joined it as alice/laptop.
type tlsLab struct {
	l                *lab
	lan              *host
	state            string // the gateway's
	profiles, cstate string // the client's
	name             string // the profile
	devAddr          netip.Addr
}

var lanAddr = netip.MustParseAddr("198.18.2.2")

func newTLSLab(t *testing.T, pool string) *tlsLab {
	t.Helper()
	l := newLab(t)
	x := &tlsLab{l: l, lan: l.addLan(t)}
	nsEtc := filepath.Join("/etc/netns", l.client.ns)
	os.MkdirAll(nsEtc, 0o755)
	t.Cleanup(func() { os.RemoveAll(nsEtc) })
	os.WriteFile(filepath.Join(nsEtc, "resolv.conf"), []byte("nameserver 198.18.0.53\n"), 0o644)

	dir := t.TempDir()
	x.state = filepath.Join(dir, "gw")
	iface := "pgw" + l.id
	mustRun(t, l.server.ns, ptun.bin, "gateway", "init", "--state", x.state, "--interface", iface,
		"--endpoint", l.server.link4.String()+":51820", "--api", l.server.link4.String()+":8443",
		"--tls", ":443", "--pool", pool, "--route", "198.18.2.0/24", "--dns", "198.18.2.53", "--masquerade")
	mustRun(t, l.server.ns, ptun.bin, "gateway", "user", "add", "alice", "--state", x.state)
	startGateway(t, l.server.ns, x.state)
	waitFor(t, 10*time.Second, "the TLS port", func() (bool, string) {
		out, err := run(l.server.ns, "ss", "-Hltn", "sport = :443")
		return err == nil && strings.Contains(out, "443"), out
	})

	invite := lastLine(mustRun(t, l.server.ns, ptun.bin, "gateway", "invite", "alice", "--state", x.state))
	x.profiles, x.cstate = filepath.Join(dir, "profiles"), filepath.Join(dir, "client")
	x.name = "t" + l.id
	mustRun(t, l.client.ns, ptun.bin, "join", invite, "--name", x.name, "--device", "laptop", "--profiles", x.profiles)
	b, err := os.ReadFile(filepath.Join(x.profiles, x.name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var p profile.Profile
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	wantTLS := "https://" + l.server.link4.String() + ":443"
	if len(p.Offer.Gateways) != 1 || p.Offer.Gateways[0].TLS != wantTLS || len(p.Offer.Addresses) == 0 {
		t.Fatalf("the profile's gateways %+v, want one with TLS %s", p.Offer.Gateways, wantTLS)
	}
	x.devAddr = p.Offer.Addresses[0].Addr()
	return x
}

// blockUDP makes the client's network drop all UDP to the gateway (on);
// off lets it pass again.
func (x *tlsLab) blockUDP(t *testing.T, on bool) {
	t.Helper()
	if !on {
		mustRun(t, x.l.client.ns, "nft", "delete", "table", "inet", "ptun_e2e_noudp")
		return
	}
	mustRun(t, x.l.client.ns, "nft", "add table inet ptun_e2e_noudp; "+
		"add chain inet ptun_e2e_noudp out { type filter hook output priority 0; }; "+
		"add rule inet ptun_e2e_noudp out ip daddr "+x.l.server.link4.String()+" meta l4proto udp counter drop")
}

// up runs ptun up NAME with args, logging the daemon to a file shown when
// the test fails; ptun down runs at the end.
func (x *tlsLab) up(t *testing.T, args ...string) {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "up.log")
	t.Cleanup(func() {
		run(x.l.client.ns, ptun.bin, "down", x.name, "--profiles", x.profiles, "--state", x.cstate)
		run(x.l.client.ns, "nft", "delete", "table", "inet", "ptun_e2e_noudp")
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("ptun up log:\n%s", b)
		}
	})
	mustRun(t, x.l.client.ns, append([]string{ptun.bin, "up", x.name, "--profiles", x.profiles, "--state", x.cstate, "--log", logFile}, args...)...)
}

func (x *tlsLab) status(t *testing.T) string {
	t.Helper()
	return mustRun(t, x.l.client.ns, ptun.bin, "status", x.name, "--state", x.cstate, "--profiles", x.profiles)
}

// laptop is the gateway's listing of alice/laptop.
func (x *tlsLab) laptop(t *testing.T) (tlsDevice, string) {
	t.Helper()
	out := mustRun(t, x.l.server.ns, ptun.bin, "gateway", "devices", "--json", "--state", x.state)
	var rows []tlsDevice
	json.Unmarshal([]byte(out), &rows)
	for _, r := range rows {
		if r.User == "alice" && r.Name == "laptop" {
			return r, out
		}
	}
	return tlsDevice{}, out
}

func TestUpViaTLS(t *testing.T) {
	t.Parallel()
	x := newTLSLab(t, "100.83.0.0/16")
	l, lan, state, name := x.l, x.lan, x.state, x.name
	// The client's network passes no UDP to the gateway.
	x.blockUDP(t, true)
	start := time.Now()
	x.up(t, "--via", "tls")
	waitFor(t, 10*time.Second, "the first echo over TLS", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
		return err == nil, out
	})
	t.Logf("ptun up --via tls to the first echo through the tunnel, UDP blocked: %v", time.Since(start).Round(time.Millisecond))

	addrs := mustRun(t, l.client.ns, "ip", "-br", "addr", "show", "dev", "pt-"+name)
	if !strings.Contains(addrs, x.devAddr.String()+"/") {
		t.Errorf("pt-%s has %q, want the profile's address %v", name, addrs, x.devAddr)
	}
	st := x.status(t)
	if !strings.Contains(st, "path cstp") {
		t.Errorf("status (want path cstp: UDP is blocked):\n%s", st)
	}
	up := iperf3(t, l.client, lan, lanAddr, "-t", "2")
	down := iperf3(t, l.client, lan, lanAddr, "-t", "2", "-R")
	t.Logf("ptun up --via tls over CSTP: TCP up %.0f Mbit/s, down %.0f Mbit/s", up.mbits(), down.mbits())
	waitFor(t, 5*time.Second, "the gateway's listing", func() (bool, string) {
		r, out := x.laptop(t)
		return r.Protocol == "wireguard" && r.Online && r.Path == "cstp" && r.RxBytes > 1<<20, out
	})
	reg, err := registry.OpenSQLite(context.Background(), filepath.Join(state, "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := reg.Audit(context.Background(), 0, 1000)
	reg.Close()
	if err != nil || !slices.ContainsFunc(entries, func(e registry.AuditEntry) bool {
		return e.Action == "tls.login" && e.Target == "alice/laptop" && strings.Contains(e.Detail, "by its device key")
	}) {
		t.Errorf("the audit log lacks the device's TLS login (%v): %+v", err, entries)
	}

	mustRun(t, l.server.ns, ptun.bin, "gateway", "revoke", "alice/laptop", "--state", state)
	revoked := time.Now()
	// Echoes 50 ms apart: the last answered one says when traffic stopped.
	var lastReply time.Time
	waitFor(t, 3*time.Second, "the revoked device's traffic to stop", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "0.2", lanAddr.String())
		if err == nil {
			lastReply = time.Now()
			time.Sleep(50 * time.Millisecond)
		}
		return err != nil, out
	})
	if lastReply.IsZero() {
		t.Logf("no echo was answered after the revoke")
	} else if d := lastReply.Sub(revoked); d > time.Second {
		t.Errorf("echoes were answered %v after the revoke, want under a second", d.Round(time.Millisecond))
	} else {
		t.Logf("the last echo answered %v after the revoke", d.Round(time.Millisecond))
	}
	mustRun(t, l.client.ns, ptun.bin, "down", name, "--profiles", x.profiles, "--state", x.cstate)
	if out, err := run(l.client.ns, "ip", "link", "show", "pt-"+name); err == nil {
		t.Errorf("pt-%s is still there after ptun down:\n%s", name, out)
	}
}

// pinger sends echoes 20 ms apart to dst from ns until stop, and keeps when
// each answer came (ping -D), to find the longest pause across a switch.
type pinger struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
	once sync.Once
	at   []time.Time
}

func startPinger(t *testing.T, ns string, dst netip.Addr, limit time.Duration) *pinger {
	t.Helper()
	p := &pinger{done: make(chan error, 1)}
	p.cmd = exec.Command("ip", "netns", "exec", ns, "ping", "-D", "-n", "-i", "0.02", "-W", "1",
		"-w", strconv.Itoa(int(limit.Seconds())), dst.String())
	p.cmd.Stdout = &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop() })
	return p
}

// stop ends the pings (once) and returns the times of the answers.
func (p *pinger) stop() []time.Time {
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		for _, line := range strings.Split(p.out.String(), "\n") {
			if !strings.HasPrefix(line, "[") || !strings.Contains(line, "bytes from") {
				continue
			}
			end := strings.IndexByte(line, ']')
			f, err := strconv.ParseFloat(line[1:end], 64)
			if err == nil {
				p.at = append(p.at, time.Unix(0, int64(f*1e9)))
			}
		}
	})
	return p.at
}

// longestPause is the longest time between two answers in at, from and to
// bounding when the pause may begin.
func longestPause(at []time.Time, from, to time.Time) time.Duration {
	var longest time.Duration
	for i := 1; i < len(at); i++ {
		if at[i].Before(from) || at[i-1].After(to) {
			continue
		}
		longest = max(longest, at[i].Sub(at[i-1]))
	}
	return longest
}

// TestUpFallsBackToTLS: ptun up of a profile whose gateway has a TLS
// listener, with the kill switch, from a network that drops UDP to the
// gateway, falls back to TLS by itself and carries traffic on the same
// interface; once UDP passes again it returns to WireGuard, and a TCP
// transfer running across the switch completes; UDP blocked again in the
// middle of the session, it falls back to TLS again. The pause of each
// switch is measured with echoes 20 ms apart.
func TestUpFallsBackToTLS(t *testing.T) {
	t.Parallel()
	x := newTLSLab(t, "100.84.0.0/16")
	l := x.l
	x.blockUDP(t, true)
	start := time.Now()
	const metricsAddr = "127.0.0.1:9599"
	x.up(t, "--kill-switch", "--metrics", metricsAddr)
	upTook := time.Since(start)
	waitFor(t, 10*time.Second, "the first echo over TLS", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
		return err == nil, out
	})
	t.Logf("UDP blocked: ptun up returned after %v, the first echo through the tunnel %v after the start",
		upTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if st := x.status(t); !strings.Contains(st, "over TLS") || !strings.Contains(st, "path cstp") {
		t.Fatalf("status (want over TLS, path cstp):\n%s", st)
	}
	waitFor(t, 5*time.Second, "the gateway's listing of alice/laptop online on cstp", func() (bool, string) {
		r, out := x.laptop(t)
		return r.Online && r.Path == "cstp", out
	})
	addrs := mustRun(t, l.client.ns, "ip", "-br", "addr", "show", "dev", "pt-"+x.name)
	if !strings.Contains(addrs, x.devAddr.String()+"/") {
		t.Errorf("pt-%s has %q, want the profile's address %v", x.name, addrs, x.devAddr)
	}
	// Full-size segments pass: the interface takes the TLS session's
	// smaller MTU while on it, and WireGuard's again after.
	wgMTU := linkMTU(t, l.client.ns, "pt-"+x.name)
	upTLS := iperf3(t, l.client, x.lan, lanAddr, "-t", "2")
	downTLS := iperf3(t, l.client, x.lan, lanAddr, "-t", "2", "-R")
	t.Logf("on the fallback (CSTP): TCP up %.0f Mbit/s, down %.0f Mbit/s; MTU %d", upTLS.mbits(), downTLS.mbits(), wgMTU)
	// The metrics have the TLS path's session beside the interface's.
	iface := map[string]string{"interface": "pt-" + x.name}
	cstp := map[string]string{"interface": "pt-" + x.name, "path": "cstp"}
	m := scrapeIn(t, l.client.ns, metricsAddr)
	if v := seriesOf(t, m, "ptun_session_up", iface).GetGauge().GetValue(); v != 1 {
		t.Errorf("on the fallback: ptun_session_up = %v, want 1", v)
	}
	if v := seriesOf(t, m, "ptun_session_received_bytes_total", cstp).GetCounter().GetValue(); v < 1<<20 {
		t.Errorf("on the fallback: ptun_session_received_bytes_total{path=cstp} = %v after two transfers, want more than 1 MiB", v)
	}
	seriesOf(t, m, "ptun_peer_received_bytes_total", iface) // the WireGuard side's, as ever

	// Back to UDP under a transfer: iperf3 at 50 Mbit/s for 14 s, UDP
	// unblocked 3 s into it.
	pings := startPinger(t, l.client.ns, lanAddr, 60*time.Second)
	transfer := make(chan error, 1)
	var moved iperfResult
	go func() {
		var err error
		moved, err = runIperf3(l.client, x.lan, lanAddr, "-t", "14", "-b", "50M")
		transfer <- err
	}()
	time.Sleep(3 * time.Second)
	x.blockUDP(t, false)
	unblocked := time.Now()
	waitFor(t, 30*time.Second, "the tunnel back on UDP", func() (bool, string) {
		st := x.status(t)
		return !strings.Contains(st, "over TLS"), st
	})
	back := time.Since(unblocked)
	if err := <-transfer; err != nil {
		t.Fatalf("the transfer across the switch: %v", err)
	}
	if got := linkMTU(t, l.client.ns, "pt-"+x.name); got != 1420 {
		t.Errorf("back on WireGuard, pt-%s has MTU %d, want the profile's 1420", x.name, got)
	}
	if moved.End.SumReceived.Bytes < 10<<20 {
		t.Errorf("the transfer across the switch moved %d bytes, want at least 10 MiB", moved.End.SumReceived.Bytes)
	}
	waitFor(t, 5*time.Second, "the gateway's listing of alice/laptop online over WireGuard", func() (bool, string) {
		r, out := x.laptop(t)
		return r.Online && r.Path == "", out
	})
	if v := seriesOf(t, scrapeIn(t, l.client.ns, metricsAddr), "ptun_session_up", iface).GetGauge().GetValue(); v != 0 {
		t.Errorf("back on WireGuard: ptun_session_up = %v, want 0", v)
	}

	// UDP blocked in the middle of the session: TLS again.
	x.blockUDP(t, true)
	blocked := time.Now()
	waitFor(t, 30*time.Second, "the tunnel on TLS again", func() (bool, string) {
		st := x.status(t)
		return strings.Contains(st, "path cstp"), st
	})
	again := time.Since(blocked)
	waitFor(t, 5*time.Second, "an echo over TLS", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
		return err == nil, out
	})
	at := pings.stop()
	t.Logf("UDP unblocked: back on WireGuard %v later, the longest pause in 20-ms echoes %v; the transfer across it moved %.1f MB at %.0f Mbit/s",
		back.Round(time.Millisecond), longestPause(at, unblocked, unblocked.Add(back)).Round(time.Millisecond),
		float64(moved.End.SumReceived.Bytes)/1e6, moved.mbits())
	t.Logf("UDP blocked mid-session: on TLS %v later, the longest pause in 20-ms echoes %v",
		again.Round(time.Millisecond), longestPause(at, blocked, time.Now()).Round(time.Millisecond))

	mustRun(t, l.client.ns, ptun.bin, "down", x.name, "--profiles", x.profiles, "--state", x.cstate)
	if out, err := run(l.client.ns, "ip", "link", "show", "pt-"+x.name); err == nil {
		t.Errorf("pt-%s is still there after ptun down:\n%s", x.name, out)
	}
	if out, _ := run(l.client.ns, "nft", "list", "tables"); strings.Contains(out, "ptun") && !strings.Contains(out, "ptun_e2e_noudp") {
		t.Errorf("nftables tables left after ptun down:\n%s", out)
	}
}

// linkMTU is interface name's MTU in ns.
func linkMTU(t *testing.T, ns, name string) int {
	t.Helper()
	out := mustRun(t, ns, "cat", "/sys/class/net/"+name+"/mtu")
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("the MTU of %s: %q", name, out)
	}
	return n
}
