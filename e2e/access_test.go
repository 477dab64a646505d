package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
)

// TestGatewayAccessRulesThroughput compares TCP through a gateway for a
// device in a group without rules of its own (it may reach the gateway's
// route: a list of three rules with the control service's) and in a group
// with 100 rules (99 single hosts and /24s to TCP ports or ranges, and one
// that allows the lan host's iperf3 port), side by side: the rules are
// added and removed in the registry between the runs, in alternating order
// (A B B A ...), and each state is checked (a ping to the lan host passes
// with the route, is refused with the 100 rules). Upload is the direction
// whose data the gateway checks (the rules apply to what a device sends).
//
// By default one short round checks that the comparison runs;
// PTUN_E2E_ACL_ROUNDS=N and PTUN_E2E_ACL_SECONDS=S make it a measurement.
// It reports medians, min-max and the ratio of medians, and the gateway
// engine's CPU per gigabyte received; it asserts only that every run
// carried data.
func TestGatewayAccessRulesThroughput(t *testing.T) {
	rounds, secs := envInt(t, "PTUN_E2E_ACL_ROUNDS", 1), envInt(t, "PTUN_E2E_ACL_SECONDS", 2)
	l := newLab(t)
	lan := l.addLan(t)
	mustRun(t, lan.ns, "ip", "route", "add", "default", "via", "198.18.2.1")
	lanAddr := netip.MustParseAddr("198.18.2.2")

	dir := t.TempDir()
	state := filepath.Join(dir, "gw")
	iface := "pga" + l.id
	mustRun(t, l.server.ns, ptun.bin, "gateway", "init", "--state", state, "--interface", iface,
		"--endpoint", l.server.link4.String()+":51820", "--api", l.server.link4.String()+":8443",
		"--pool", "100.80.0.0/16", "--route", "198.18.2.0/24")
	mustRun(t, l.server.ns, ptun.bin, "gateway", "user", "add", "alice", "--group", "eng", "--state", state)
	startGateway(t, l.server.ns, state)
	gw := &node{h: l.server, impl: ptun, ifname: iface}
	engine := oneEngine(t, gw)

	out := mustRun(t, l.server.ns, ptun.bin, "gateway", "invite", "alice", "--state", state)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	invite := lines[len(lines)-1]
	nsEtc := filepath.Join("/etc/netns", l.client.ns)
	os.MkdirAll(nsEtc, 0o755)
	t.Cleanup(func() { os.RemoveAll(nsEtc) })
	os.WriteFile(filepath.Join(nsEtc, "resolv.conf"), []byte("nameserver 198.18.0.53\n"), 0o644)
	profiles, cstate := filepath.Join(dir, "profiles"), filepath.Join(dir, "client")
	mustRun(t, l.client.ns, ptun.bin, "join", invite, "--name", "work", "--device", "laptop", "--profiles", profiles)
	t.Cleanup(func() { run(l.client.ns, ptun.bin, "down", "work", "--profiles", profiles, "--state", cstate) })
	mustRun(t, l.client.ns, ptun.bin, "up", "work", "--profiles", profiles, "--state", cstate)
	mustRun(t, l.client.ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", lanAddr.String())

	ctx := context.Background()
	_, reg, err := gateway.Load(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	var ruleIDs []int64
	addRules := func() {
		for i := range 99 {
			a := netip.AddrFrom4([4]byte{198, 19, byte(i / 256), byte(i % 256)})
			bits := 32
			if i%10 == 0 {
				bits = 24
			}
			lo := uint16(1 + i%1000)
			r, err := reg.AddRule(ctx, "eng", registry.Rule{Dest: netip.PrefixFrom(a, bits).Masked(), Proto: registry.ProtoTCP, PortFrom: lo, PortTo: lo + uint16(i%3)})
			if err != nil {
				t.Fatal(err)
			}
			ruleIDs = append(ruleIDs, r.ID)
		}
		r, err := reg.AddRule(ctx, "eng", registry.Rule{Dest: netip.PrefixFrom(lanAddr, 32), Proto: registry.ProtoTCP, PortFrom: iperfPort, PortTo: iperfPort})
		if err != nil {
			t.Fatal(err)
		}
		ruleIDs = append(ruleIDs, r.ID)
		waitFor(t, 10*time.Second, "the 100 rules to refuse a ping", func() (bool, string) {
			out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
			return err != nil, out
		})
	}
	removeRules := func() {
		for _, id := range ruleIDs {
			if err := reg.RemoveRule(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		ruleIDs = nil
		waitFor(t, 10*time.Second, "the route alone to let a ping through", func() (bool, string) {
			out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
			return err == nil, out
		})
	}

	type result struct{ up, down, cpuUp []float64 }
	res := map[string]*result{"route": {}, "100 rules": {}}
	measure := func(name string) {
		r := res[name]
		for _, dir := range []string{"up", "down"} {
			args := []string{"-t", strconv.Itoa(secs)}
			if dir == "down" {
				args = append(args, "-R")
			}
			cpu0 := procCPUSeconds(t, engine)
			ir := iperf3(t, l.client, lan, lanAddr, args...)
			cpu := procCPUSeconds(t, engine) - cpu0
			mbits := ir.mbits()
			if mbits <= 0 {
				t.Fatalf("%s, TCP %s: no data", name, dir)
			}
			if dir == "up" {
				r.up = append(r.up, mbits/1000)
				r.cpuUp = append(r.cpuUp, cpu/(float64(ir.End.SumReceived.Bytes)/1e9))
			} else {
				r.down = append(r.down, mbits/1000)
			}
		}
	}
	for i := range rounds {
		order := []string{"route", "100 rules"}
		if i%2 == 1 {
			order = []string{"100 rules", "route"}
		}
		for _, name := range order {
			if name == "100 rules" && ruleIDs == nil {
				addRules()
			} else if name == "route" && ruleIDs != nil {
				removeRules()
			}
			measure(name)
		}
	}
	show := mustRun(t, l.server.ns, ptun.bin, "show", iface)

	med := func(v []float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		if len(s)%2 == 0 {
			return (s[len(s)/2-1] + s[len(s)/2]) / 2
		}
		return s[len(s)/2]
	}
	cell := func(v []float64) string {
		return fmt.Sprintf("%.2f (%.2f-%.2f)", med(v), slices.Min(v), slices.Max(v))
	}
	a, b := res["route"], res["100 rules"]
	// The ratio within each round (its two runs are next to each other)
	// is less exposed to a machine whose load changes than the medians.
	paired := func(x, y []float64) float64 {
		r := make([]float64, len(x))
		for i := range x {
			r[i] = y[i] / x[i]
		}
		return med(r)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "TCP through the gateway, %d rounds of %d s, alternating; median (min-max):\n", rounds, secs)
	fmt.Fprintf(&sb, "                          route only               100 rules              ratio of medians  median of ratios\n")
	fmt.Fprintf(&sb, "TCP up, Gbit/s            %-24s %-22s %-17.3f %.3f\n", cell(a.up), cell(b.up), med(b.up)/med(a.up), paired(a.up, b.up))
	fmt.Fprintf(&sb, "TCP down, Gbit/s          %-24s %-22s %-17.3f %.3f\n", cell(a.down), cell(b.down), med(b.down)/med(a.down), paired(a.down, b.down))
	fmt.Fprintf(&sb, "gateway engine s/GB, up   %-24s %-22s %-17.3f %.3f\n", cell(a.cpuUp), cell(b.cpuUp), med(b.cpuUp)/med(a.cpuUp), paired(a.cpuUp, b.cpuUp))
	for _, line := range strings.Split(show, "\n") {
		if strings.Contains(line, "drop_acl") {
			fmt.Fprintf(&sb, "gateway %s\n", strings.TrimSpace(line))
		}
	}
	t.Log("\n" + sb.String())
}

// envInt reads a positive integer from the environment, def when unset.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// procCPUSeconds is the CPU time process pid has used (user and system).
func procCPUSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}
