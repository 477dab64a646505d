package netconf

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/tun"
)

const tunName = "ptnc0"

// testbed is a client namespace with a TUN (the tunnel) and a veth to a
// gateway namespace holding 198.18.0.2 (the gateway's endpoint) and
// 198.18.0.3 (anything else on the underlay).
type testbed struct {
	client, gw *netns.NS
	resolv     string // the client's resolver file
}

func newTestbed(t *testing.T) *testbed {
	t.Helper()
	testenv.RequireRoot(t)
	var suffix [3]byte
	rand.Read(suffix[:])
	tag := hex.EncodeToString(suffix[:])
	tb := &testbed{}
	for _, p := range []**netns.NS{&tb.client, &tb.gw} {
		n, err := netns.New("ptun-netconf-" + tag + map[bool]string{true: "-c", false: "-g"}[p == &tb.client])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.KillProcesses(); n.Close() })
		*p = n
	}
	if err := netns.Veth(tb.client, "c0", tb.gw, "g0", 1500); err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct {
		ns     *netns.NS
		if_, p string
	}{{tb.client, "c0", "198.18.0.1/24"}, {tb.gw, "g0", "198.18.0.2/24"}, {tb.gw, "g0", "198.18.0.3/24"}} {
		if err := a.ns.AddAddr(a.if_, netip.MustParsePrefix(a.p)); err != nil {
			t.Fatal(err)
		}
	}
	var dev tun.Device
	if err := tb.client.Do(func() (err error) {
		dev, err = tun.Create(tunName, tun.Options{MTU: 1420})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	tb.resolv = filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(tb.resolv, []byte("nameserver 198.18.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return tb
}

// in runs fn in the client's namespace.
func (tb *testbed) in(t *testing.T, fn func() error) {
	t.Helper()
	if err := tb.client.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func fullPlan() *Plan {
	return &Plan{
		Interface:  tunName,
		Addresses:  []netip.Prefix{netip.MustParsePrefix("100.80.0.7/32"), netip.MustParsePrefix("2001:db8:80::7/128")},
		MTU:        1380,
		Routes:     []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
		FwMark:     0xca6c,
		Exclude:    []netip.Prefix{netip.MustParsePrefix("198.18.7.0/24"), netip.MustParsePrefix("2001:db8:7::/48")},
		DNS:        []netip.Addr{netip.MustParseAddr("198.18.2.53")},
		Search:     []string{"corp.example"},
		KillSwitch: &KillSwitch{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:51820")}},
	}
}

// state is what the test can see of the client's network configuration.
type state struct {
	addrs       []string
	mtu         int
	mainRoutes  []string
	tableRoutes []string
	throws      []string // excluded routes: throw routes in table 0xca6c
	rules       []string
	srcValid    string
	tables      []string
}

func (tb *testbed) state(t *testing.T) state {
	t.Helper()
	var s state
	tb.in(t, func() error {
		link, err := netlink.LinkByName(tunName)
		if err != nil {
			s.mtu = -1 // gone
			return tb.stateRest(&s)
		}
		s.mtu = link.Attrs().MTU
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_ALL)
		for _, a := range addrs {
			if !a.IP.IsLinkLocalUnicast() {
				s.addrs = append(s.addrs, a.IPNet.String())
			}
		}
		routes, _ := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast() || r.Type != unix.RTN_UNICAST {
				if r.Dst == nil {
					s.tableRoutes = append(s.tableRoutes, "default table "+itoa(r.Table))
				}
				continue
			}
			ones, _ := r.Dst.Mask.Size()
			if ones == 0 {
				s.tableRoutes = append(s.tableRoutes, r.Dst.String()+" table "+itoa(r.Table))
			} else if r.Table == unix.RT_TABLE_MAIN {
				s.mainRoutes = append(s.mainRoutes, r.Dst.String())
			}
		}
		return tb.stateRest(&s)
	})
	return s
}

// stateRest fills in what does not hang on the interface.
func (tb *testbed) stateRest(s *state) error {
	{
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			rules, _ := netlink.RuleList(fam)
			for _, r := range rules {
				if r.Priority == prioritySuppress || r.Priority == priorityTunnel {
					s.rules = append(s.rules, itoa(fam)+":"+itoa(r.Priority))
				}
			}
		}
		throws, _ := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0xca6c}, netlink.RT_FILTER_TABLE)
		for _, r := range throws {
			if r.Type == unix.RTN_THROW && r.Dst != nil {
				s.throws = append(s.throws, r.Dst.String())
			}
		}
		b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/all/src_valid_mark")
		s.srcValid = strings.TrimSpace(string(b))
		c, err := nftables.New()
		if err != nil {
			return err
		}
		ts, _ := c.ListTablesOfFamily(nftables.TableFamilyINet)
		for _, tt := range ts {
			s.tables = append(s.tables, tt.Name)
		}
		return nil
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestApplyUndoFullTunnel: every part of a full-tunnel plan is applied and
// recorded, and Undo (also from the record alone, as after a crash) leaves
// nothing behind.
func TestApplyUndoFullTunnel(t *testing.T) {
	tb := newTestbed(t)
	before := tb.state(t)
	p := fullPlan()
	var rec Record
	var saved []byte
	opts := Options{ResolvConf: tb.resolv, Save: func(r *Record) error {
		var err error
		saved, err = json.Marshal(r)
		return err
	}}
	tb.in(t, func() error { return Apply(p, &rec, opts) })
	s := tb.state(t)
	t.Logf("applied: %+v", s)
	if s.mtu != 1380 {
		t.Errorf("MTU %d, want 1380", s.mtu)
	}
	for _, want := range []string{"100.80.0.7/32", "2001:db8:80::7/128"} {
		if !contains(s.addrs, want) {
			t.Errorf("address %s missing: %v", want, s.addrs)
		}
	}
	if !contains(s.mainRoutes, "198.18.2.0/24") {
		t.Errorf("route 198.18.2.0/24 missing from main: %v", s.mainRoutes)
	}
	if len(s.tableRoutes) < 2 {
		t.Errorf("full-tunnel routes in table %d: %v", p.FwMark, s.tableRoutes)
	}
	if len(s.rules) != 4 {
		t.Errorf("policy rules %v, want 2 per family", s.rules)
	}
	if !contains(s.throws, "198.18.7.0/24") || !contains(s.throws, "2001:db8:7::/48") {
		t.Errorf("excluded routes (throw routes in table %d): %v", p.FwMark, s.throws)
	}
	if s.srcValid != "1" {
		t.Errorf("src_valid_mark = %q", s.srcValid)
	}
	if !contains(s.tables, KillSwitchTable(tunName)) {
		t.Errorf("no kill switch table: %v", s.tables)
	}
	if b, _ := os.ReadFile(tb.resolv); !bytes.Contains(b, []byte("nameserver 198.18.2.53\n")) || !bytes.Contains(b, []byte("search corp.example\n")) {
		t.Errorf("resolv.conf:\n%s", b)
	}
	// Undo from the saved record alone, as the next `up` or `down` after a
	// crash would.
	var fromDisk Record
	if err := json.Unmarshal(saved, &fromDisk); err != nil {
		t.Fatal(err)
	}
	tb.in(t, func() error { return Undo(&fromDisk, Options{}) })
	if !fromDisk.Empty() {
		t.Errorf("record after Undo: %+v", fromDisk)
	}
	after := tb.state(t)
	t.Logf("before: %+v; after Undo: %+v", before, after)
	if after.mtu != before.mtu || len(after.addrs) != len(before.addrs) || len(after.mainRoutes) != len(before.mainRoutes) ||
		len(after.tableRoutes) != 0 || len(after.throws) != 0 || len(after.rules) != 0 || after.srcValid != before.srcValid ||
		contains(after.tables, KillSwitchTable(tunName)) {
		t.Errorf("left behind: before %+v, after %+v", before, after)
	}
	if b, _ := os.ReadFile(tb.resolv); string(b) != "nameserver 198.18.0.53\n" {
		t.Errorf("resolv.conf not restored:\n%s", b)
	}
	// Undo again: nothing to do, no error.
	tb.in(t, func() error { return Undo(&fromDisk, Options{}) })
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// send sends one UDP datagram to dst from the client namespace, with mark
// if not 0, and returns the error of the send.
func (tb *testbed) send(t *testing.T, dst string) error {
	t.Helper()
	var serr error
	tb.in(t, func() error {
		c, err := net.Dial("udp", dst)
		if err != nil {
			serr = err
			return nil
		}
		defer c.Close()
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, serr = c.Write([]byte("kill switch test"))
		return nil
	})
	return serr
}

// TestKillSwitch: with the kill switch on, the client reaches the
// gateway's endpoint and the tunnel but nothing else on the underlay; off,
// everything again.
func TestKillSwitch(t *testing.T) {
	tb := newTestbed(t)
	p := &Plan{Interface: tunName, Addresses: []netip.Prefix{netip.MustParsePrefix("100.80.0.7/32")},
		Routes:     []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")},
		KillSwitch: &KillSwitch{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:51820")}}}
	var rec Record
	if err := tb.send(t, "198.18.0.3:9"); err != nil {
		t.Fatalf("before the kill switch: %v", err)
	}
	tb.in(t, func() error { return Apply(p, &rec, Options{}) })
	if err := tb.send(t, "198.18.0.2:51820"); err != nil {
		t.Errorf("to the gateway's endpoint: %v", err)
	}
	if err := tb.send(t, "198.18.2.5:9"); err != nil {
		t.Errorf("through the tunnel: %v", err)
	}
	for _, dst := range []string{"198.18.0.3:9", "198.18.0.2:9"} {
		if err := tb.send(t, dst); !errors.Is(err, syscall.EPERM) {
			t.Errorf("to %s with the kill switch on: %v, want EPERM", dst, err)
		}
	}
	tb.in(t, func() error { return Undo(&rec, Options{}) })
	if err := tb.send(t, "198.18.0.3:9"); err != nil {
		t.Errorf("after Undo: %v", err)
	}
}

// TestApplyFailureUndoes: a step that fails (a route that exists already)
// leaves nothing of the steps before it.
func TestApplyFailureUndoes(t *testing.T) {
	tb := newTestbed(t)
	before := tb.state(t)
	if err := tb.client.AddRoute(netip.MustParsePrefix("198.18.2.0/24"), "c0"); err != nil {
		t.Fatal(err)
	}
	p := fullPlan()
	p.KillSwitch = nil
	var rec Record
	var err error
	tb.in(t, func() error { err = Apply(p, &rec, Options{ResolvConf: tb.resolv}); return nil })
	if err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("Apply over an existing route: %v", err)
	}
	if !rec.Empty() {
		t.Errorf("record after a failed Apply: %+v", rec)
	}
	after := tb.state(t)
	if after.mtu != before.mtu || len(after.addrs) != len(before.addrs) || len(after.rules) != 0 {
		t.Errorf("a failed Apply left: before %+v, after %+v", before, after)
	}
}

// TestUndoAfterInterfaceGone: when the tunnel interface went away (with
// its addresses and routes), Undo still removes the rest without error.
func TestUndoAfterInterfaceGone(t *testing.T) {
	tb := newTestbed(t)
	p := fullPlan()
	var rec Record
	tb.in(t, func() error { return Apply(p, &rec, Options{ResolvConf: tb.resolv}) })
	tb.in(t, func() error {
		l, err := netlink.LinkByName(tunName)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
	tb.in(t, func() error { return Undo(&rec, Options{}) })
	if s := tb.state(t); len(s.rules) != 0 || contains(s.tables, KillSwitchTable(tunName)) {
		t.Errorf("left behind: %+v", s)
	}
}
