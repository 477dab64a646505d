package netconf

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"testing"
)

// TestUpdate: a split tunnel becomes a full one with another route, other
// DNS and another kill switch endpoint, and back; each time the host holds
// exactly the new plan, the record (as saved) undoes all of it, and the
// route both plans share is never removed.
func TestUpdate(t *testing.T) {
	tb := newTestbed(t)
	before := tb.state(t)
	split := &Plan{
		Interface:  tunName,
		Addresses:  []netip.Prefix{netip.MustParsePrefix("100.80.0.7/32")},
		Routes:     []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24"), netip.MustParsePrefix("100.80.0.1/32")},
		FwMark:     0xca6c,
		DNS:        []netip.Addr{netip.MustParseAddr("198.18.2.53")},
		KillSwitch: &KillSwitch{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:51820")}},
	}
	full := fullPlan()
	full.MTU = 0
	full.Routes = append(full.Routes, netip.MustParsePrefix("100.80.0.1/32"))
	full.KillSwitch.Endpoints = append(full.KillSwitch.Endpoints, netip.MustParseAddrPort("198.18.0.3:51820"))
	var saved []byte
	opts := Options{ResolvConf: tb.resolv, Save: func(r *Record) error {
		var err error
		saved, err = json.Marshal(r)
		return err
	}}
	var rec Record
	tb.in(t, func() error { return Apply(split, &rec, opts) })
	s := tb.state(t)
	if len(s.rules) != 0 || !contains(s.mainRoutes, "198.18.2.0/24") || len(s.addrs) != 1 {
		t.Fatalf("split: %+v", s)
	}

	tb.in(t, func() error { return Update(split, full, &rec, opts) })
	s = tb.state(t)
	t.Logf("full: %+v", s)
	if len(s.rules) != 4 || len(s.tableRoutes) < 2 || len(s.throws) != 2 || !contains(s.mainRoutes, "198.18.2.0/24") || !contains(s.mainRoutes, "100.80.0.1/32") ||
		len(s.addrs) != 2 || !contains(s.tables, KillSwitchTable(tunName)) {
		t.Errorf("after the update to a full tunnel: %+v", s)
	}
	if b, _ := os.ReadFile(tb.resolv); !bytes.Contains(b, []byte("search corp.example\n")) {
		t.Errorf("resolv.conf not rewritten:\n%s", b)
	}
	// The new kill switch lets the second endpoint through.
	if err := tb.send(t, "198.18.0.3:51820"); err != nil {
		t.Errorf("the added kill switch endpoint: %v", err)
	}

	tb.in(t, func() error { return Update(full, split, &rec, opts) })
	s = tb.state(t)
	if len(s.rules) != 0 || len(s.tableRoutes) != 0 || len(s.throws) != 0 || len(s.addrs) != 1 || !contains(s.mainRoutes, "198.18.2.0/24") {
		t.Errorf("back to the split tunnel: %+v", s)
	}
	if err := tb.send(t, "198.18.0.3:51820"); err == nil {
		t.Errorf("the removed kill switch endpoint still passes")
	}
	if b, _ := os.ReadFile(tb.resolv); bytes.Contains(b, []byte("search")) || !bytes.Contains(b, []byte("nameserver 198.18.2.53")) {
		t.Errorf("resolv.conf after the update back:\n%s", b)
	}

	// The saved record undoes everything.
	var fromDisk Record
	if err := json.Unmarshal(saved, &fromDisk); err != nil {
		t.Fatal(err)
	}
	tb.in(t, func() error { return Undo(&fromDisk, Options{}) })
	after := tb.state(t)
	if len(after.addrs) != len(before.addrs) || len(after.mainRoutes) != len(before.mainRoutes) || len(after.tableRoutes) != 0 || len(after.rules) != 0 ||
		after.srcValid != before.srcValid || contains(after.tables, KillSwitchTable(tunName)) {
		t.Errorf("left behind: before %+v, after %+v", before, after)
	}
	if b, _ := os.ReadFile(tb.resolv); string(b) != "nameserver 198.18.0.53\n" {
		t.Errorf("resolv.conf not restored:\n%s", b)
	}
}
