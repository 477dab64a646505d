package netconf

import (
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// TestResolved: with systemd-resolved running (the real one, on a bus of
// its own), Apply gives the tunnel's link its DNS servers and domains there
// and leaves the resolver file alone; Update changes them in place (a full
// tunnel takes every query with "~."); Undo, from the saved record, reverts
// the link while it still exists.
func TestResolved(t *testing.T) {
	tb := newTestbed(t)
	rd := testenv.StartResolved(t, tb.client.Name)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", rd.Bus)
	resolvBefore, _ := os.ReadFile("/etc/resolv.conf")
	split := &Plan{Interface: tunName, Addresses: []netip.Prefix{netip.MustParsePrefix("100.80.0.7/32")},
		Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}, FwMark: 0xca6c,
		DNS: []netip.Addr{netip.MustParseAddr("198.18.2.53")}, Search: []string{"corp.example"}}
	var saved []byte
	opts := Options{Save: func(r *Record) error {
		var err error
		saved, err = json.Marshal(r)
		return err
	}}
	var rec Record
	tb.in(t, func() error { return Apply(split, &rec, opts) })
	if rec.Resolved == nil || rec.Resolv != nil {
		t.Fatalf("record: resolved %+v, resolv %+v", rec.Resolved, rec.Resolv)
	}
	link := func() string {
		t.Helper()
		out, err := rd.Ctl("status", tunName)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	s := link()
	t.Logf("after Apply:\n%s", s)
	if !strings.Contains(s, "198.18.2.53") || !strings.Contains(s, "corp.example") || strings.Contains(s, "~.") ||
		!strings.Contains(s, "-DefaultRoute") || !strings.Contains(s, "-LLMNR") || !strings.Contains(s, "-mDNS") {
		t.Errorf("split tunnel: resolved's link:\n%s", s)
	}
	if b, _ := os.ReadFile("/etc/resolv.conf"); string(b) != string(resolvBefore) {
		t.Errorf("/etc/resolv.conf was written with resolved running")
	}

	full := *split
	full.Routes = append(full.Routes, netip.MustParsePrefix("0.0.0.0/0"))
	full.DNS = []netip.Addr{netip.MustParseAddr("198.18.2.54"), netip.MustParseAddr("2001:db8:2::53")}
	tb.in(t, func() error { return Update(split, &full, &rec, opts) })
	s = link()
	t.Logf("after Update to a full tunnel:\n%s", s)
	if !strings.Contains(s, "198.18.2.54") || strings.Contains(s, "198.18.2.53") || !strings.Contains(s, "2001:db8:2::53") ||
		!strings.Contains(s, "~.") || !strings.Contains(s, "+DefaultRoute") {
		t.Errorf("full tunnel: resolved's link:\n%s", s)
	}

	var fromDisk Record
	if err := json.Unmarshal(saved, &fromDisk); err != nil {
		t.Fatal(err)
	}
	tb.in(t, func() error { return Undo(&fromDisk, Options{}) })
	if s := link(); strings.Contains(s, "198.18.2") || strings.Contains(s, "corp.example") {
		t.Errorf("after Undo, resolved still holds the tunnel's DNS:\n%s", s)
	}
}
