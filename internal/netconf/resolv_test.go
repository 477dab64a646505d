package netconf

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResolvSymlinkRestored: a resolv.conf that is a symbolic link (to a
// resolver daemon's file) is replaced by a file, not written through, and
// comes back as the same link.
func TestResolvSymlinkRestored(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "stub-resolv.conf")
	os.WriteFile(target, []byte("nameserver 127.0.0.53\n"), 0o644)
	path := filepath.Join(dir, "resolv.conf")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	p := &Plan{Interface: "wg0", DNS: []netip.Addr{netip.MustParseAddr("198.18.2.53")}, Search: []string{"corp.example"}}
	var rec Record
	if err := applyResolv(p, &rec, path); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(path); fi.Mode()&os.ModeSymlink != 0 {
		t.Fatal("the link was written through, not replaced")
	}
	if b, _ := os.ReadFile(target); string(b) != "nameserver 127.0.0.53\n" {
		t.Fatalf("the link's target was changed: %q", b)
	}
	if err := restoreResolv(rec.Resolv); err != nil {
		t.Fatal(err)
	}
	if l, err := os.Readlink(path); err != nil || l != target {
		t.Fatalf("after restore: link %q, %v", l, err)
	}
}

// TestResolvChangedByOthersIsLeft: if someone rewrote the file after ptun
// did, restoring leaves it and says so.
func TestResolvChangedByOthersIsLeft(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(path, []byte("nameserver 198.18.0.53\n"), 0o644)
	p := &Plan{Interface: "wg0", DNS: []netip.Addr{netip.MustParseAddr("198.18.2.53")}}
	var rec Record
	if err := applyResolv(p, &rec, path); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, []byte("nameserver 198.18.9.9\n"), 0o644)
	if err := restoreResolv(rec.Resolv); !errors.Is(err, ErrNotApplied) {
		t.Fatalf("restore over another's change: %v, want ErrNotApplied", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "nameserver 198.18.9.9\n" {
		t.Fatalf("another's change was overwritten: %q", b)
	}
}

func TestPlanCheck(t *testing.T) {
	for _, bad := range []*Plan{
		{Interface: "a/b"},
		{Interface: "wg0", MTU: 100},
		{Interface: "wg0", Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.1/24")}},
		{Interface: "wg0", Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}, // no fwmark
		{Interface: "wg0", Search: []string{"corp example"}},
		// An exclude needs a full tunnel of its family.
		{Interface: "wg0", FwMark: 1, Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}, Exclude: []netip.Prefix{netip.MustParsePrefix("198.18.7.0/24")}},
		{Interface: "wg0", FwMark: 1, Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, Exclude: []netip.Prefix{netip.MustParsePrefix("2001:db8:7::/48")}},
		{Interface: "wg0", FwMark: 1, Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, Exclude: []netip.Prefix{netip.MustParsePrefix("198.18.7.1/24")}},
		{Interface: "wg0", Search: []string{"evil\nnameserver 198.18.9.9"}},
		{Interface: "wg0", KillSwitch: &KillSwitch{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:0")}}},
	} {
		if err := bad.Check(); err == nil {
			t.Errorf("Check(%+v) accepted", bad)
		}
	}
	if err := fullPlanForCheck().Check(); err != nil {
		t.Errorf("a good plan refused: %v", err)
	}
}

func fullPlanForCheck() *Plan {
	return &Plan{Interface: "wg0", MTU: 1380, FwMark: 1,
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.80.0.7/32")},
		Routes:    []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("198.18.2.0/24")},
		Exclude:   []netip.Prefix{netip.MustParsePrefix("198.18.7.0/24")},
		DNS:       []netip.Addr{netip.MustParseAddr("198.18.2.53")}, Search: []string{"corp.example", "example."}}
}

// FuzzSearchDomain: a search domain Check accepts cannot add a line or a
// word to resolv.conf.
func FuzzSearchDomain(f *testing.F) {
	for _, s := range []string{"corp.example", "a-b.c", "x\nnameserver 1.2.3.4", "a b", "-a.b", "é.example", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := &Plan{Interface: "wg0", Search: []string{s}}
		if p.Check() != nil {
			return
		}
		out := string(resolvContent(p))
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != 2 || lines[1] != "search "+s || strings.ContainsAny(s, " \t\r\n#;") {
			t.Fatalf("search domain %q gives:\n%s", s, out)
		}
	})
}
