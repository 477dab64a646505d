package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGatewayEndToEnd is the product's path on three namespaced hosts: a
// gateway in front of a lan host, a user invited, a client that joins and
// comes up, ping through to the lan host, and a revoke that cuts it off.
func TestGatewayEndToEnd(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	// The lan host behind the gateway (the lab's server host).
	lanHost := l.addLan(t)

	dir := t.TempDir()
	state := filepath.Join(dir, "gw")
	iface := "pgw" + l.id
	mustRun(t, l.server.ns, ptun.bin, "gateway", "init", "--state", state, "--interface", iface,
		"--endpoint", l.server.link4.String()+":51820", "--api", l.server.link4.String()+":8443",
		"--pool", "100.80.0.0/16", "--route", "198.18.2.0/24", "--dns", "198.18.2.53", "--masquerade")
	mustRun(t, l.server.ns, ptun.bin, "gateway", "user", "add", "alice", "--group", "eng", "--state", state)

	gw := startGateway(t, l.server.ns, state)

	out := mustRun(t, l.server.ns, ptun.bin, "gateway", "invite", "alice", "--state", state)
	invite := lastLine(out)

	nsEtc := filepath.Join("/etc/netns", l.client.ns)
	os.MkdirAll(nsEtc, 0o755)
	t.Cleanup(func() { os.RemoveAll(nsEtc) })
	os.WriteFile(filepath.Join(nsEtc, "resolv.conf"), []byte("nameserver 198.18.0.53\n"), 0o644)
	profiles, cstate := filepath.Join(dir, "profiles"), filepath.Join(dir, "client")
	start := time.Now()
	name := "w" + l.id // interfaces and UAPI sockets are the host's: unique
	mustRun(t, l.client.ns, ptun.bin, "join", invite, "--name", name, "--device", "laptop", "--profiles", profiles)
	joined := time.Since(start)
	t.Cleanup(func() { run(l.client.ns, ptun.bin, "down", name, "--profiles", profiles, "--state", cstate) })
	mustRun(t, l.client.ns, ptun.bin, "up", name, "--profiles", profiles, "--state", cstate)
	t.Logf("join took %v, join+up %v", joined.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.2.2")
	devices := mustRun(t, l.server.ns, ptun.bin, "gateway", "devices", "--state", state)
	if !strings.Contains(devices, "alice") || !strings.Contains(devices, "laptop") || !strings.Contains(devices, "online") ||
		!strings.Contains(devices, l.client.link4.String()+":") || strings.Contains(devices, "not running") {
		t.Errorf("devices (with the device online, from %v):\n%s", l.client.link4, devices)
	}

	// Access rules: eng may reach only tcp/22 on the lan host; the ping is
	// refused in the gateway's data path and counted as drop_acl; without
	// the rule, the ping passes again.
	out = mustRun(t, l.server.ns, ptun.bin, "gateway", "allow", "eng", "198.18.2.2", "tcp/22", "--state", state)
	var ruleID string
	if _, err := fmt.Sscanf(out, "rule %s", &ruleID); err != nil {
		t.Fatalf("allow: %q", out)
	}
	ruleID = strings.TrimSuffix(ruleID, ":")
	waitFor(t, 10*time.Second, "the rule to refuse the ping", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", "198.18.2.2")
		return err != nil, out
	})
	if show := mustRun(t, l.server.ns, ptun.bin, "show", iface); !strings.Contains(show, "drop_acl") {
		t.Errorf("ptun show does not count the refused ping as drop_acl:\n%s", show)
	}
	if devs := mustRun(t, l.server.ns, ptun.bin, "gateway", "devices", "--state", state); !strings.Contains(devs, "(drop_acl): ") || strings.Contains(devs, "(drop_acl): 0\n") {
		t.Errorf("devices does not show the refused ping:\n%s", devs)
	}
	mustRun(t, l.server.ns, ptun.bin, "gateway", "rules", "--remove", ruleID, "--state", state)
	waitFor(t, 10*time.Second, "the ping to pass again", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", "198.18.2.2")
		return err == nil, out
	})

	// A second device, bob's, on a host of its own (routed to the gateway
	// host's underlay), whose transfer must not notice alice's revoke.
	c2 := &host{lab: l, role: "client2", ns: "ptun-e2e-" + l.id + "-client2"}
	mustRun(t, "", "ip", "netns", "add", c2.ns)
	t.Cleanup(func() { c2.destroy(t) })
	// A resolv.conf of its own: without it, bob's tunnel would write the
	// host's (and every other test's namespaces would see it).
	nsEtc2 := filepath.Join("/etc/netns", c2.ns)
	os.MkdirAll(nsEtc2, 0o755)
	t.Cleanup(func() { os.RemoveAll(nsEtc2) })
	os.WriteFile(filepath.Join(nsEtc2, "resolv.conf"), []byte("nameserver 198.18.4.53\n"), 0o644)
	mustRun(t, c2.ns, "ip", "link", "set", "lo", "up")
	mustRun(t, "", "ip", "-n", l.server.ns, "link", "add", "eth2", "type", "veth", "peer", "name", "eth0", "netns", c2.ns)
	mustRun(t, l.server.ns, "ip", "addr", "add", "198.18.4.2/24", "dev", "eth2")
	mustRun(t, l.server.ns, "ip", "link", "set", "eth2", "up")
	mustRun(t, c2.ns, "ip", "addr", "add", "198.18.4.1/24", "dev", "eth0")
	mustRun(t, c2.ns, "ip", "link", "set", "eth0", "up")
	mustRun(t, c2.ns, "ip", "route", "add", "198.18.0.0/24", "via", "198.18.4.2")
	mustRun(t, l.server.ns, ptun.bin, "gateway", "user", "add", "bob", "--state", state)
	out = mustRun(t, l.server.ns, ptun.bin, "gateway", "invite", "bob", "--state", state)
	inviteBob := lastLine(out)
	profiles2, cstate2 := filepath.Join(dir, "profiles2"), filepath.Join(dir, "client2")
	bobName := "b" + l.id // interfaces and UAPI sockets are the host's: unique
	mustRun(t, c2.ns, ptun.bin, "join", inviteBob, "--name", bobName, "--device", "desk", "--profiles", profiles2)
	t.Cleanup(func() { run(c2.ns, ptun.bin, "down", bobName, "--profiles", profiles2, "--state", cstate2) })
	mustRun(t, c2.ns, ptun.bin, "up", bobName, "--profiles", profiles2, "--state", cstate2)
	bobDone := make(chan struct{})
	var bob iperfResult
	var bobErr error
	go func() {
		defer close(bobDone)
		bob, bobErr = runIperf3(c2, lanHost, netip.MustParseAddr("198.18.2.2"), "-t", "4", "-i", "0.5")
	}()
	time.Sleep(1500 * time.Millisecond)

	// Revoke: the device's traffic stops.
	revoked := time.Now()
	mustRun(t, l.server.ns, ptun.bin, "gateway", "revoke", "alice/laptop", "--state", state)
	// The time is to the first echo that got no reply, measured from when
	// it was sent (its ping waits 1 s for the reply before it fails).
	var cutAfter time.Duration
	cut := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		sent := time.Now()
		if _, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", "198.18.2.2"); err != nil {
			cut, cutAfter = true, sent.Sub(revoked)
			break
		}
	}
	if !cut {
		wgOut, _ := run(l.server.ns, "wg", "show", iface)
		devs, _ := run(l.server.ns, ptun.bin, "gateway", "devices", "--all", "--state", state)
		t.Fatalf("the revoked device still reaches the lan host\nwg show:\n%s\ndevices:\n%s", wgOut, devs)
	}
	t.Logf("revoke to the first echo without a reply: %v", cutAfter.Round(time.Millisecond))
	// The gateway syncs every 250 ms (a revoke is in force within ~0.3 s
	// on a quiet machine); the bound leaves room for a loaded CI machine.
	if cutAfter > 3*time.Second {
		t.Errorf("the revoked device's traffic passed for %v after the revoke", cutAfter)
	}
	<-bobDone
	if bobErr != nil {
		t.Fatalf("bob's transfer during alice's revoke: %v", bobErr)
	}
	for i, iv := range bob.Intervals {
		if iv.Sum.BitsPerSecond <= 0 {
			t.Errorf("bob's transfer stalled in interval %d during alice's revoke: %+v", i, iv.Sum)
		}
	}
	t.Logf("bob's transfer across alice's revoke: %.0f Mbit/s, %d intervals of 0.5 s, none empty", bob.mbits(), len(bob.Intervals))

	// Stopping the gateway removes what it added.
	gw.stop()
	if tables, _ := run(l.server.ns, "nft", "list", "tables"); strings.Contains(tables, "ptun") {
		t.Errorf("nftables left after the gateway stopped:\n%s", tables)
	}
	if _, err := run(l.server.ns, "ip", "link", "show", iface); err == nil {
		t.Errorf("interface %s left after the gateway stopped", iface)
	}
	if b, err := exec.Command("ip", "netns", "exec", l.server.ns, "cat", "/proc/sys/net/ipv4/ip_forward").Output(); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Errorf("ip_forward after stop: %q %v", b, err)
	}
}
