package client

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/occlient"
	"github.com/ptun-vpn/ptun/internal/profile"
)

// TestParseServerURL: https://HOST[:PORT] (or HOST[:PORT]) with a name or
// an address; anything else is refused with a reason.
func TestParseServerURL(t *testing.T) {
	for in, want := range map[string]Server{
		"https://vpn.example.com":        {"vpn.example.com", 443},
		"https://vpn.example.com/":       {"vpn.example.com", 443},
		"https://198.18.0.2:4443":        {"198.18.0.2", 4443},
		"198.18.0.2:4443":                {"198.18.0.2", 4443},
		"vpn.example.com":                {"vpn.example.com", 443},
		"https://[2001:db8::1]:8443":     {"2001:db8::1", 8443},
		"https://[2001:db8::1]":          {"2001:db8::1", 443},
		"https://[::ffff:198.18.0.2]:99": {"198.18.0.2", 99},
	} {
		got, err := ParseServerURL(in)
		if err != nil || got != want {
			t.Errorf("ParseServerURL(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if s := (Server{"2001:db8::1", 443}).String(); s != "https://[2001:db8::1]:443" {
		t.Errorf("String: %s", s)
	}
	for in, reason := range map[string]string{
		"":                                 "no server URL",
		"http://vpn.example.com":           "must be https",
		"ftp://vpn.example.com":            "must be https",
		"https://alice@vpn.example.com":    "--user",
		"https://alice:pw@vpn.example.com": "--user",
		"https://vpn.example.com/group":    "user group",
		"https://vpn.example.com/?x=1":     "no query",
		"https://vpn.example.com/#frag":    "no query",
		"https://vpn.example.com:0":        "port",
		"https://vpn.example.com:65536":    "port",
		"https://vpn.example.com:http":     "port",
		"https://vpn.example.com:":         "empty port",
		"https://":                         "no host",
		"https://vpn_example!.com":         "neither an IP address nor a DNS name",
		"https://[vpn.example.com]":        "invalid host",
		"https://[fe80::1%25eth0]":         "zone",
		"https://vpn example.com":          "",
	} {
		_, err := ParseServerURL(in)
		if err == nil {
			t.Errorf("ParseServerURL(%q) accepted", in)
			continue
		}
		if !strings.Contains(err.Error(), reason) {
			t.Errorf("ParseServerURL(%q): %v; want it to say %q", in, err, reason)
		}
	}
}

// TestCheckPin: pin-sha256: and the base64 of 32 bytes, nothing else.
func TestCheckPin(t *testing.T) {
	good := "pin-sha256:" + strings.Repeat("A", 43) + "="
	if err := CheckPin(good); err != nil {
		t.Errorf("CheckPin(%q): %v", good, err)
	}
	for _, bad := range []string{
		"", "AAAA", strings.Repeat("A", 43) + "=", // no prefix
		"sha256:" + strings.Repeat("ab", 32), // openconnect's hex form
		"pin-sha256:", "pin-sha256:AAAA",     // too short
		"pin-sha256:" + strings.Repeat("A", 43), // unpadded
		"pin-sha256:" + strings.Repeat("A", 42) + "!=",
		"pin-sha256:" + strings.Repeat("A", 64) + "==", // 48 bytes
	} {
		err := CheckPin(bad)
		if err == nil {
			t.Errorf("CheckPin(%q) accepted", bad)
		} else if !strings.Contains(err.Error(), "pin-sha256:BASE64") {
			t.Errorf("CheckPin(%q): %v; want it to say what a pin looks like", bad, err)
		}
	}
}

func TestCheckUser(t *testing.T) {
	for _, good := range []string{"alice", "alice@corp.example", "Ünïcødé user"} {
		if err := CheckUser(good); err != nil {
			t.Errorf("CheckUser(%q): %v", good, err)
		}
	}
	for bad, reason := range map[string]string{
		"": "required", "a\nb": "control", "a\x00": "control", strings.Repeat("a", 257): "256",
	} {
		if err := CheckUser(bad); err == nil || !strings.Contains(err.Error(), reason) {
			t.Errorf("CheckUser(%q): %v; want it to say %q", bad, err, reason)
		}
	}
}

// TestDefaultConnectName: the host, made a valid tunnel name.
func TestDefaultConnectName(t *testing.T) {
	for host, want := range map[string]string{
		"vpn.example.com": "vpn.example.com", "198.18.0.2": "198.18.0.2", "2001:db8::1": "2001-db8--1",
		strings.Repeat("a", 70): strings.Repeat("a", 64),
	} {
		got := DefaultConnectName(host)
		if got != want {
			t.Errorf("DefaultConnectName(%q) = %q, want %q", host, got, want)
		}
		if err := profile.CheckName(got); err != nil {
			t.Errorf("DefaultConnectName(%q) = %q: %v", host, got, err)
		}
	}
}

// TestMakePlan: what an OpenConnect server pushed, as a netconf plan.
func TestMakePlan(t *testing.T) {
	pp := netip.MustParsePrefix
	f := &ocFront{ifname: "pt-x", addr: netip.MustParseAddrPort("198.18.0.2:443"), o: &ConnectOptions{}}
	f.o.defaults()
	// A split tunnel: the routes, the server's own network left out,
	// excludes ignored (nothing to exclude them from).
	p := f.makePlan(occlient.Tunnel{
		Address4: pp("100.64.7.50/24"), Address6: pp("2001:db8:7::32/128"),
		Include: []netip.Prefix{pp("198.18.2.0/24"), pp("198.18.0.0/16"), pp("2001:db8:2::/48"), pp("198.18.2.1/24")},
		Exclude: []netip.Prefix{pp("198.18.2.128/25")},
		DNS:     []netip.Addr{netip.MustParseAddr("198.18.2.53")}, Search: []string{"corp.example", "bad domain"},
		MTU: 1434, DTLSPort: 4443,
	})
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	if got := fmtPrefixes(p.Addresses); got != "100.64.7.50/32 2001:db8:7::32/128" {
		t.Errorf("addresses %s", got)
	}
	if got := fmtPrefixes(p.Routes); got != "198.18.2.0/24 2001:db8:2::/48" {
		t.Errorf("routes %s", got)
	}
	if len(p.Exclude) != 0 || p.KillSwitch != nil || p.MTU != 1434 || len(p.Search) != 1 || p.FwMark != FwMark {
		t.Errorf("plan %+v", p)
	}
	// A full tunnel of each family it has an address of, with its
	// excludes, and the kill switch to the TLS and DTLS ports.
	f.o.KillSwitch = true
	p = f.makePlan(occlient.Tunnel{Address4: pp("100.64.7.50/32"),
		Exclude: []netip.Prefix{pp("198.18.7.0/24"), pp("2001:db8:7::/48")}, MTU: 1400, DTLSPort: 4444})
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	if got := fmtPrefixes(p.Routes); got != "0.0.0.0/0" {
		t.Errorf("full tunnel routes %s", got)
	}
	if got := fmtPrefixes(p.Exclude); got != "198.18.7.0/24" {
		t.Errorf("excludes %s", got)
	}
	if p.KillSwitch == nil || len(p.KillSwitch.Endpoints) != 2 || p.KillSwitch.Endpoints[1] != netip.MustParseAddrPort("198.18.0.2:4444") {
		t.Errorf("kill switch %+v", p.KillSwitch)
	}
}

func fmtPrefixes(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, " ")
}
