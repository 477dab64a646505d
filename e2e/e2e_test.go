package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPtunPtun: two ptun hosts carry IPv4 and IPv6, TCP and UDP, full-size
// packets, a tunnel MTU that only fits with outer fragmentation, and an
// IPv6 underlay.
func TestPtunPtun(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	c, s := l.pair(pairOpts{client: ptun, server: ptun})

	t.Run("ping v4 and v6 both ways", func(t *testing.T) {
		pingBothWays(t, c, s)
	})
	t.Run("full-size packets at MTU 1420", func(t *testing.T) {
		// 1420-byte inner packets with DF: 1480 bytes on the wire.
		c.ping(t, serverTun4, "-M", "do", "-s", "1392")
		s.ping(t, clientTun6, "-M", "do", "-s", "1372")
	})
	t.Run("TCP both ways", func(t *testing.T) {
		tcpBothWays(t, c, s, "3")
	})
	t.Run("UDP 200 Mbit/s both ways", func(t *testing.T) {
		udpBothWays(t, c, s)
	})
	t.Run("tunnel MTU 1500 over a 1500-byte link", func(t *testing.T) {
		// 1500-byte inner packets become 1560-byte datagrams: they only
		// arrive if the outer IP packets are fragmented and reassembled.
		setMTU(t, c, 1500)
		setMTU(t, s, 1500)
		t.Cleanup(func() { setMTU(t, c, defaultMTU); setMTU(t, s, defaultMTU) })
		c.ping(t, serverTun4, "-M", "do", "-s", "1472")
		s.ping(t, clientTun4, "-M", "do", "-s", "1472")
		c.ping(t, serverTun6, "-M", "do", "-s", "1452")
		r := iperf3(t, c.h, s.h, serverTun4, "-t", "3")
		t.Logf("%v -> %v TCP at tunnel MTU 1500: %.0f Mbit/s", c, s, r.mbits())
		requireFlow(t, "TCP at tunnel MTU 1500", r)
	})
	t.Run("IPv6 underlay", func(t *testing.T) {
		c.wg(t, "peer", s.pub.String(), "endpoint", netip.AddrPortFrom(serverLink6, serverPort).String())
		c.ping(t, serverTun4)
		want := netip.AddrPortFrom(clientLink6, clientPort).String()
		waitFor(t, 10*time.Second, "the server to see the client's IPv6 endpoint", func() (bool, string) {
			ep := s.peer(t, c).Endpoint
			return ep == want, ep
		})
		s.ping(t, clientTun6)
		// 1420-byte inner packets: exactly 1500 bytes in outer IPv6.
		c.ping(t, serverTun4, "-M", "do", "-s", "1392")
		r := iperf3(t, c.h, s.h, serverTun4, "-t", "2")
		t.Logf("%v -> %v TCP over an IPv6 underlay: %.0f Mbit/s", c, s, r.mbits())
		requireFlow(t, "TCP over IPv6", r)
	})
}

// TestInteropWireguardGo: ptun and wireguard-go complete handshakes and
// carry traffic whichever side initiates, with and without a preshared key.
func TestInteropWireguardGo(t *testing.T) {
	t.Parallel()
	requireLab(t)
	for _, tc := range []struct {
		name           string
		client, server *impl // the client initiates
		psk            bool
	}{
		{"ptun initiates", ptun, wgGo, false},
		{"ptun initiates with PSK", ptun, wgGo, true},
		{"wireguard-go initiates", wgGo, ptun, false},
		{"wireguard-go initiates with PSK", wgGo, ptun, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			// Only the client knows an endpoint, so only it can start.
			c, s := l.pair(pairOpts{client: tc.client, server: tc.server, initiator: "client", psk: tc.psk})
			c.ping(t, serverTun4)
			c.waitHandshake(t, s, 0)
			s.waitHandshake(t, c, 0)
			if ep, want := s.peer(t, c).Endpoint, netip.AddrPortFrom(clientLink4, clientPort).String(); ep != want {
				t.Errorf("%v learned endpoint %s for %v, want %s", s, ep, c, want)
			}
			if tc.psk {
				for _, n := range []struct{ a, b *node }{{c, s}, {s, c}} {
					if psk := n.a.peer(t, n.b).PresharedKey; psk == "(none)" {
						t.Errorf("%v shows no preshared key for %v", n.a, n.b)
					}
				}
			}
			pingBothWays(t, c, s)
			tcpBothWays(t, c, s, "3")
		})
	}
}

// TestRekey: with REKEY_AFTER_TIME shortened to 3 s, ptun (the initiator)
// makes new sessions with wireguard-go during a bulk transfer, and the
// transfer never stalls.
func TestRekey(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	// An initiator sends at most one (non-retry) initiation per
	// REKEY_TIMEOUT, so that is shortened too; otherwise its 5 s would set
	// the pace instead of REKEY_AFTER_TIME.
	c, s := l.pair(pairOpts{client: ptun, server: wgGo, initiator: "client",
		clientEnv: []string{"PTUN_REKEY_AFTER_TIME=3s", "PTUN_REKEY_TIMEOUT=1s"}})
	c.ping(t, serverTun4)
	first := c.waitHandshake(t, s, 0)
	firstServer := s.waitHandshake(t, c, 0)

	type result struct {
		r   iperfResult
		err error
	}
	done := make(chan result, 1) // buffered: the goroutine never blocks, even if we fail first
	go func() {
		r, err := runIperf3(c.h, s.h, serverTun4, "-t", "8")
		done <- result{r, err}
	}()
	seen := map[int64]bool{} // handshake times newer than first
	var got result
	poll := time.NewTicker(250 * time.Millisecond)
	defer poll.Stop()
	giveUp := time.After(3 * time.Minute) // runIperf3 ends itself within 2 min
wait:
	for {
		select {
		case got = <-done:
			break wait
		case <-giveUp:
			t.Fatal("iperf3 did not finish")
		case <-poll.C:
			if hs := c.peer(t, s).LatestHandshake; hs > first {
				seen[hs] = true
			}
		}
	}
	if hs := c.peer(t, s).LatestHandshake; hs > first {
		seen[hs] = true
	}
	if got.err != nil {
		t.Fatal(got.err)
	}
	var times []string
	for hs := range seen {
		times = append(times, fmt.Sprintf("+%ds", hs-first))
	}
	sort.Strings(times)
	t.Logf("handshakes after the first: %v; %.0f Mbit/s", times, got.r.mbits())
	if len(seen) < 2 {
		t.Errorf("saw %d new handshakes during an 8 s transfer with PTUN_REKEY_AFTER_TIME=3s, want >= 2", len(seen))
	}
	if hs := s.peer(t, c).LatestHandshake; hs <= firstServer {
		t.Errorf("wireguard-go's latest handshake did not advance (%d)", hs)
	}
	logDrops(t, c)
	requireFlow(t, "the transfer", got.r)
}

// TestRoaming: when the client's underlay address changes mid-session, the
// server follows it to the new endpoint and traffic keeps flowing.
func TestRoaming(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	c, s := l.pair(pairOpts{client: ptun, server: ptun, initiator: "client"})
	c.ping(t, serverTun4)
	if ep, want := s.peer(t, c).Endpoint, netip.AddrPortFrom(clientLink4, clientPort).String(); ep != want {
		t.Fatalf("server's endpoint for the client is %s, want %s", ep, want)
	}

	// Keep pinging while the client moves.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var bgOut bytes.Buffer
	bg := nsCommand(ctx, c.h.ns, "ping", "-n", "-i", "0.2", "-w", "30", serverTun4.String())
	bg.Stdout, bg.Stderr = &bgOut, &bgOut
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	bgDone := make(chan struct{})
	go func() { bg.Wait(); close(bgDone) }()
	t.Cleanup(func() { cancel(); <-bgDone })
	time.Sleep(time.Second)

	// Move: a new link with 198.18.1.1, the old address gone, and the
	// server's address reached through the new link.
	l.addLink("eth1", "198.18.1.%d/24", "2001:db8:fe::%d/64")
	mustRun(t, c.h.ns, "ip", "addr", "del", clientLink4.String()+"/24", "dev", "eth0")
	mustRun(t, c.h.ns, "ip", "route", "add", "198.18.0.0/24", "via", "198.18.1.2", "dev", "eth1")

	want := "198.18.1.1:" + strconv.Itoa(clientPort)
	waitFor(t, 10*time.Second, "the server to follow the client to "+want, func() (bool, string) {
		ep := s.peer(t, c).Endpoint
		return ep == want, ep
	})
	c.ping(t, serverTun4)
	s.ping(t, clientTun4)

	bg.Process.Signal(os.Interrupt) // ping prints its summary on SIGINT
	select {
	case <-bgDone:
	case <-time.After(5 * time.Second):
	}
	if m := pingReceived.FindStringSubmatch(bgOut.String()); m == nil || m[1] == "0" {
		t.Errorf("the ping running through the move got no replies:\n%s", bgOut.String())
	} else {
		t.Logf("ping through the move: %s", lastLines(bgOut.String(), 2))
	}
}

// TestAllowedIPsFiltering: a packet whose inner source is outside the
// sender's allowed IPs is dropped and counted.
func TestAllowedIPsFiltering(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	c, s := l.pair(pairOpts{client: ptun, server: ptun})
	other := netip.MustParseAddr("100.64.0.9")
	mustRun(t, c.h.ns, "ip", "addr", "add", other.String()+"/24", "dev", c.ifname)

	// Control: while the server allows the whole /24, the second address works.
	c.ping(t, serverTun4, "-I", other.String())

	s.wg(t, "peer", c.pub.String(), "allowed-ips", clientTun4.String()+"/32")
	before := s.stats(t)["drop_source_not_allowed"]
	c.pingFails(t, serverTun4, "-I", other.String())
	if after := s.stats(t)["drop_source_not_allowed"]; after <= before {
		t.Errorf("drop_source_not_allowed went from %d to %d, want an increase", before, after)
	}
	c.ping(t, serverTun4)      // the allowed address still works
	c.pingFails(t, serverTun6) // and IPv6 is no longer allowed at all
}

// TestPrivateKeyChange: after the server's private key changes, the old
// session stops working, and the client gets through again once it knows
// the new public key.
func TestPrivateKeyChange(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	c, s := l.pair(pairOpts{client: ptun, server: ptun})
	c.ping(t, serverTun4)
	first := s.waitHandshake(t, c, 0)

	oldPub := s.pub
	s.priv, s.pub = newKeyPair(t)
	s.wg(t, "private-key", l.keyFile(t, s.priv))
	if got := s.show(t).PublicKey; got != s.pub.String() {
		t.Fatalf("server's public key is %s after the change, want %s", got, s.pub)
	}

	before := s.stats(t)["drop_unknown_index"]
	c.pingFails(t, serverTun4) // the client still uses the session made with the old key
	if after := s.stats(t)["drop_unknown_index"]; after <= before {
		t.Errorf("drop_unknown_index went from %d to %d: the old session's packets were not refused as unknown", before, after)
	}

	c.wg(t, "peer", oldPub.String(), "remove",
		"peer", s.pub.String(), "endpoint", netip.AddrPortFrom(serverLink4, serverPort).String(),
		"allowed-ips", strings.Join(tunnelNets, ","))
	c.ping(t, serverTun4)
	s.waitHandshake(t, c, first)
	c.waitHandshake(t, s, 0)
	if _, ok := c.show(t).Peers[oldPub.String()]; ok {
		t.Errorf("client still lists the old server key")
	}
	s.ping(t, clientTun6)
}

// TestRemovePeer: a removed peer can no longer reach the interface and is
// no longer listed; added back, it works again.
func TestRemovePeer(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	c, s := l.pair(pairOpts{client: ptun, server: ptun})
	c.ping(t, serverTun4)

	s.wg(t, "peer", c.pub.String(), "remove")
	if d := s.show(t); len(d.Peers) != 0 {
		t.Fatalf("wg show still lists peers after remove:\n%s", d.raw)
	}
	c.pingFails(t, serverTun4)
	before := s.stats(t)["drop_no_route"]
	s.pingFails(t, clientTun4)
	if after := s.stats(t)["drop_no_route"]; after <= before {
		t.Errorf("drop_no_route went from %d to %d while pinging a removed peer", before, after)
	}

	s.addPeer(t, c, peerOpts{endpoint: true})
	s.ping(t, clientTun4)
	c.ping(t, serverTun4)
}

// TestBadUAPI: invalid configuration is refused with errno != 0 and changes
// nothing, not even the valid parts of the same request.
func TestBadUAPI(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.server.start(ptun, startOpts{})
	_, peerPub := newKeyPair(t)
	n.wg(t, "peer", peerPub.String(), "allowed-ips", "100.64.0.1/32")
	_, newPub := newKeyPair(t)

	t.Run("wg refuses a bad key", func(t *testing.T) {
		if out, err := n.wgErr("peer", "not-a-key!"); err == nil {
			t.Errorf("wg set peer not-a-key! succeeded:\n%s", out)
		}
	})
	for _, tc := range []struct{ name, req string }{
		{"listen port out of range", "set=1\nlisten_port=70000\n\n"},
		{"unknown key", "set=1\nno_such_key=1\n\n"},
		{"line without =", "set=1\ngarbage\n\n"},
		{"bad hex public key", "set=1\npublic_key=zz\n\n"},
		{"good peer then unknown key", fmt.Sprintf(
			"set=1\npublic_key=%s\nallowed_ip=100.64.0.50/32\nno_such_key=1\n\n", newPub.hex())},
		{"good settings then bad endpoint", fmt.Sprintf(
			"set=1\nlisten_port=40000\npublic_key=%s\nendpoint=not-an-endpoint\n\n", newPub.hex())},
		{"good settings then bad allowed ip", fmt.Sprintf(
			"set=1\nlisten_port=40000\npublic_key=%s\nallowed_ip=100.64.0.300/32\n\n", newPub.hex())},
		{"existing peer changed then bad key", fmt.Sprintf(
			"set=1\npublic_key=%s\nreplace_allowed_ips=true\nallowed_ip=100.64.0.77/32\nbogus=1\n\n", peerPub.hex())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := n.show(t).raw
			resp, err := uapiRequest(n.ifname, tc.req)
			if err != nil {
				t.Fatalf("%q: %v", tc.req, err)
			}
			if resp.errno == 0 {
				t.Errorf("%q: errno=0, want an error", tc.req)
			}
			if got := n.show(t).raw; got != want {
				t.Errorf("%q changed the configuration:\nbefore:\n%s\nafter:\n%s", tc.req, want, got)
			}
		})
	}
	t.Run("garbage does not kill the daemon", func(t *testing.T) {
		want := n.show(t).raw
		for _, req := range []string{"frobnicate=1\n\n", "\n\n", "set=1\n" + strings.Repeat("x", 70000) + "\n\n", "get=1\nextra=1\n\n"} {
			uapiRequest(n.ifname, req) // any answer, or a closed connection, is fine
		}
		select {
		case <-n.d.done:
			t.Fatalf("ptun exited: %v", n.d.err)
		default:
		}
		if got := n.show(t).raw; got != want {
			t.Errorf("garbage changed the configuration:\nbefore:\n%s\nafter:\n%s", want, got)
		}
	})
	t.Run("stats=1 answers counters", func(t *testing.T) {
		resp, err := uapiRequest(n.ifname, "stats=1\n\n")
		if err != nil || resp.errno != 0 {
			t.Fatalf("stats=1: errno=%d, %v", resp.errno, err)
		}
		v := resp.values()
		for _, name := range []string{"drop_source_not_allowed", "drop_no_route", "drop_replay", "drop_bad_mac", "drop_unknown_index"} {
			if _, err := strconv.ParseUint(v[name], 10, 64); err != nil {
				t.Errorf("stats=1: %s=%q, want a number", name, v[name])
			}
		}
	})
	t.Run("a valid set still works", func(t *testing.T) {
		n.wg(t, "listen-port", "40001")
		if got := n.show(t).ListenPort; got != 40001 {
			t.Errorf("listen port is %d after wg set listen-port 40001", got)
		}
	})
}

// TestDaemonize: `ptun IFNAME` returns once the interface is served and
// leaves a daemon behind, which goes away (with its socket) when the
// interface is deleted or on SIGTERM; a second daemon for the same name is
// refused.
func TestDaemonize(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a := "pt" + l.id + "d" // in the server namespace
	b := "pt" + l.id + "e" // in the client namespace

	pidsA := startDetached(t, l.server, a)
	mustRun(t, l.server.ns, "wg", "show", a)

	t.Run("a second daemon for the same name is refused", func(t *testing.T) {
		out, err := run(l.server.ns, ptun.bin, a)
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("second `ptun %s`: err=%v, want a non-zero exit; output:\n%s", a, err, out)
		}
		if msg := strings.TrimSpace(out); msg == "" || strings.Contains(msg, "\n") {
			t.Errorf("second `ptun %s` should print a one-line error, got %q", a, out)
		}
		if _, err := uapiRequest(a, "get=1\n\n"); err != nil {
			t.Errorf("the first daemon no longer answers: %v", err)
		}
	})

	t.Run("deleting the interface stops the daemon", func(t *testing.T) {
		mustRun(t, l.server.ns, "ip", "link", "del", a)
		waitGone(t, l.server, a, pidsA)
	})

	t.Run("SIGTERM stops the daemon", func(t *testing.T) {
		pidsB := startDetached(t, l.client, b)
		for _, pid := range pidsB {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		waitGone(t, l.client, b, pidsB)
		if out, err := run(l.client.ns, "ip", "link", "show", b); err == nil {
			t.Errorf("interface %s still exists after SIGTERM:\n%s", b, out)
		}
	})
}

// ---------------------------------------------------------------------------
// Steps shared by the tests.

func pingBothWays(t *testing.T, c, s *node) {
	t.Helper()
	c.ping(t, s.tun4)
	c.ping(t, s.tun6)
	s.ping(t, c.tun4)
	s.ping(t, c.tun6)
}

// tcpBothWays runs iperf3 TCP for secs seconds client to server, then
// server to client, and checks that data arrived.
func tcpBothWays(t *testing.T, c, s *node, secs string) {
	t.Helper()
	up := iperf3(t, c.h, s.h, s.tun4, "-t", secs)
	t.Logf("TCP %v -> %v: %.0f Mbit/s", c, s, up.mbits())
	requireFlow(t, "TCP upload", up)
	down := iperf3(t, c.h, s.h, s.tun4, "-t", secs, "-R")
	t.Logf("TCP %v -> %v: %.0f Mbit/s", s, c, down.mbits())
	requireFlow(t, "TCP download", down)
}

// udpBothWays offers 200 Mbit/s of UDP each way and checks that most of it
// arrives: a correctness check, not a performance one.
func udpBothWays(t *testing.T, c, s *node) {
	t.Helper()
	for _, dir := range []struct {
		name string
		args []string
	}{{"upload", nil}, {"download", []string{"-R"}}} {
		args := append([]string{"-u", "-b", "200M", "-l", "1300", "-t", "3"}, dir.args...)
		r := iperf3(t, c.h, s.h, s.tun4, args...)
		sum := r.End.Sum
		t.Logf("UDP %s at 200 Mbit/s: %d packets, %.1f%% lost, %.0f Mbit/s received",
			dir.name, sum.Packets, sum.LostPercent, r.End.SumReceived.BitsPerSecond/1e6)
		if sum.Packets == 0 || sum.LostPercent >= 50 {
			t.Errorf("UDP %s: %d packets, %.1f%% lost; want packets and < 50%% loss", dir.name, sum.Packets, sum.LostPercent)
		}
	}
}

// requireFlow fails the test unless data arrived and every whole second of
// the run moved some: a transfer that stalls (an MTU black hole, a lost
// session) fails even if it started well. It asserts nothing about speed.
func requireFlow(t *testing.T, what string, r iperfResult) {
	t.Helper()
	if r.End.SumReceived.Bytes == 0 {
		t.Fatalf("%s: no bytes arrived", what)
	}
	// A second that moved nothing is worth a look, but on a shared
	// machine it is no proof of a fault: it is logged, not asserted.
	for i, iv := range r.Intervals {
		if iv.Sum.Seconds >= 0.5 && iv.Sum.Bytes == 0 {
			t.Logf("%s: second %d moved no bytes (%d bytes arrived in all)", what, i+1, r.End.SumReceived.Bytes)
		}
	}
}

func setMTU(t *testing.T, n *node, mtu int) {
	t.Helper()
	mustRun(t, n.h.ns, "ip", "link", "set", n.ifname, "mtu", strconv.Itoa(mtu))
}

// logDrops logs n's non-zero drop counters.
func logDrops(t *testing.T, n *node) {
	t.Helper()
	var nz []string
	for k, v := range n.stats(t) {
		if v != 0 && strings.HasPrefix(k, "drop_") {
			nz = append(nz, fmt.Sprintf("%s=%d", k, v))
		}
	}
	sort.Strings(nz)
	t.Logf("%v drops: %v", n, nz)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// daemonLogDir is where a daemon logs when the machine has no syslog.
const daemonLogDir = "/var/log/ptun"

// startDetached runs `ptun ifname` (no -f) in h and checks that it returns
// exit 0 with the socket in place, without holding our stdout/stderr open,
// leaving ptun processes in h's namespace; it returns their PIDs.
func startDetached(t *testing.T, h *host, ifname string) []int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := nsCommand(ctx, h.ns, ptun.bin, ifname)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 3 * time.Second
	_, statErr := os.Stat(daemonLogDir)
	err := cmd.Run()
	// Whatever happened, stop what it left behind before the lab goes:
	// its processes, its socket, and its log when it wrote one (no
	// syslog on the machine).
	t.Cleanup(func() {
		killPIDs(ptunPIDs(t, h))
		os.Remove(socketPath(ifname))
		os.Remove(filepath.Join(daemonLogDir, ifname+".log"))
		if os.IsNotExist(statErr) {
			os.Remove(daemonLogDir) // only if empty
		}
	})
	switch {
	case errors.Is(err, exec.ErrWaitDelay):
		t.Errorf("`ptun %s` returned but its daemon kept our stdout/stderr open", ifname)
	case err != nil:
		t.Fatalf("`ptun %s`: %v\n%s", ifname, err, out.String())
	}
	if _, err := os.Stat(socketPath(ifname)); err != nil {
		t.Fatalf("`ptun %s` returned before its socket existed: %v", ifname, err)
	}
	pids := ptunPIDs(t, h)
	if len(pids) == 0 {
		t.Fatalf("`ptun %s` returned and no ptun process is left in %s", ifname, h.ns)
	}
	return pids
}

// waitGone waits up to 5 s for every pid to exit and ifname's socket to
// disappear.
func waitGone(t *testing.T, h *host, ifname string, pids []int) {
	t.Helper()
	waitFor(t, 5*time.Second, fmt.Sprintf("ptun %s to exit and remove its socket", ifname), func() (bool, string) {
		for _, pid := range pids {
			if processAlive(pid) {
				return false, fmt.Sprintf("pid %d still running", pid)
			}
		}
		if _, err := os.Stat(socketPath(ifname)); err == nil {
			return false, socketPath(ifname) + " still exists"
		}
		return true, ""
	})
	if left := ptunPIDs(t, h); len(left) != 0 {
		t.Errorf("ptun processes still in %s: %v", h.ns, left)
	}
}

// ptunPIDs lists the live processes running the ptun binary in h's network
// namespace.
func ptunPIDs(t *testing.T, h *host) []int {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+h.ns, &st); err != nil {
		return nil // the namespace is gone, and with it anything we could find
	}
	wantNS := fmt.Sprintf("net:[%d]", st.Ino)
	return processes(t, func(pid int) bool {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		netns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		return exe == ptun.bin && netns == wantNS && processAlive(pid)
	})
}

// processes lists the pids of the machine's processes for which keep holds.
func processes(t *testing.T, keep func(pid int) bool) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && keep(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
