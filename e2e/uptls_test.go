package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
func TestUpViaTLS(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	lan := l.addLan(t)
	nsEtc := filepath.Join("/etc/netns", l.client.ns)
	os.MkdirAll(nsEtc, 0o755)
	t.Cleanup(func() { os.RemoveAll(nsEtc) })
	os.WriteFile(filepath.Join(nsEtc, "resolv.conf"), []byte("nameserver 198.18.0.53\n"), 0o644)

	dir := t.TempDir()
	state := filepath.Join(dir, "gw")
	iface := "pgw" + l.id
	mustRun(t, l.server.ns, ptun.bin, "gateway", "init", "--state", state, "--interface", iface,
		"--endpoint", l.server.link4.String()+":51820", "--api", l.server.link4.String()+":8443",
		"--tls", ":443", "--pool", "100.83.0.0/16", "--route", "198.18.2.0/24", "--dns", "198.18.2.53", "--masquerade")
	mustRun(t, l.server.ns, ptun.bin, "gateway", "user", "add", "alice", "--state", state)
	startGateway(t, l.server.ns, state)
	waitFor(t, 10*time.Second, "the TLS port", func() (bool, string) {
		out, err := run(l.server.ns, "ss", "-Hltn", "sport = :443")
		return err == nil && strings.Contains(out, "443"), out
	})

	invite := lastLine(mustRun(t, l.server.ns, ptun.bin, "gateway", "invite", "alice", "--state", state))
	profiles, cstate := filepath.Join(dir, "profiles"), filepath.Join(dir, "client")
	name := "t" + l.id
	mustRun(t, l.client.ns, ptun.bin, "join", invite, "--name", name, "--device", "laptop", "--profiles", profiles)
	b, err := os.ReadFile(filepath.Join(profiles, name+".json"))
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
	devAddr := p.Offer.Addresses[0].Addr()

	// The client's network passes no UDP to the gateway.
	mustRun(t, l.client.ns, "nft", "add table inet ptun_e2e_noudp; "+
		"add chain inet ptun_e2e_noudp out { type filter hook output priority 0; }; "+
		"add rule inet ptun_e2e_noudp out ip daddr "+l.server.link4.String()+" meta l4proto udp counter drop")
	t.Cleanup(func() { run(l.client.ns, "nft", "delete", "table", "inet", "ptun_e2e_noudp") })

	logFile := filepath.Join(dir, "up.log")
	t.Cleanup(func() {
		run(l.client.ns, ptun.bin, "down", name, "--profiles", profiles, "--state", cstate)
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("ptun up log:\n%s", b)
		}
	})
	lanAddr := netip.MustParseAddr("198.18.2.2")
	start := time.Now()
	mustRun(t, l.client.ns, ptun.bin, "up", name, "--via", "tls", "--profiles", profiles, "--state", cstate, "--log", logFile)
	waitFor(t, 10*time.Second, "the first echo over TLS", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
		return err == nil, out
	})
	t.Logf("ptun up --via tls to the first echo through the tunnel, UDP blocked: %v", time.Since(start).Round(time.Millisecond))

	addrs := mustRun(t, l.client.ns, "ip", "-br", "addr", "show", "dev", "pt-"+name)
	if !strings.Contains(addrs, devAddr.String()+"/") {
		t.Errorf("pt-%s has %q, want the profile's address %v", name, addrs, devAddr)
	}
	st := mustRun(t, l.client.ns, ptun.bin, "status", name, "--state", cstate)
	if !strings.Contains(st, "path cstp") {
		t.Errorf("status (want path cstp: UDP is blocked):\n%s", st)
	}
	up := iperf3(t, l.client, lan, lanAddr, "-t", "2")
	down := iperf3(t, l.client, lan, lanAddr, "-t", "2", "-R")
	t.Logf("ptun up --via tls over CSTP: TCP up %.0f Mbit/s, down %.0f Mbit/s", up.mbits(), down.mbits())
	waitFor(t, 5*time.Second, "the gateway's listing", func() (bool, string) {
		out := mustRun(t, l.server.ns, ptun.bin, "gateway", "devices", "--json", "--state", state)
		var rows []tlsDevice
		json.Unmarshal([]byte(out), &rows)
		for _, r := range rows {
			if r.User == "alice" && r.Name == "laptop" {
				return r.Protocol == "wireguard" && r.Online && r.Path == "cstp" && r.RxBytes > 1<<20, out
			}
		}
		return false, out
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
	mustRun(t, l.client.ns, ptun.bin, "down", name, "--profiles", profiles, "--state", cstate)
	if out, err := run(l.client.ns, "ip", "link", "show", "pt-"+name); err == nil {
		t.Errorf("pt-%s is still there after ptun down:\n%s", name, out)
	}
}
