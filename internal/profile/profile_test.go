package profile

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/noise"
)

func testOffer(t testing.TB) Offer {
	t.Helper()
	priv, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return Offer{
		Version: Version, User: "alice", Device: "laptop",
		Gateways:  []Gateway{{Name: "gw1", PublicKey: priv.PublicKey(), Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"), API: "https://198.18.0.1:8443", TLS: "https://198.18.0.1:443"}},
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.80.0.7/32"), netip.MustParsePrefix("2001:db8:80::7/128")},
		MTU:       1420,
		Routes:    []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")},
		DNS:       []netip.Addr{netip.MustParseAddr("198.18.2.53")},
		Search:    []string{"corp.example"},
		Keepalive: 25,
	}
}

func TestOfferCheck(t *testing.T) {
	good := testOffer(t)
	if err := good.Check(); err != nil {
		t.Fatal(err)
	}
	// An OpenConnect listener is optional, and may be a name or IPv6.
	for _, tls := range []string{"", "https://vpn.example.com:443", "https://[2001:db8::1]:8443", "https://198.18.0.1:65535"} {
		o := testOffer(t)
		o.Gateways[0].TLS = tls
		if err := o.Check(); err != nil {
			t.Errorf("TLS %q: %v", tls, err)
		}
	}
	for _, tls := range []string{"http://198.18.0.1:443", "https://198.18.0.1", "https://198.18.0.1:", "https://198.18.0.1:0",
		"https://198.18.0.1:65536", "https://:443", "https://198.18.0.1:443/", "https://198.18.0.1:443/auth", "https://198.18.0.1:443?x",
		"https://198.18.0.1:443?", "https://198.18.0.1:443#x", "https://u:p@198.18.0.1:443", "198.18.0.1:443", "https:198.18.0.1:443", "https://[2001:db8::1:443"} {
		o := testOffer(t)
		o.Gateways[0].TLS = tls
		if err := o.Check(); err == nil || !strings.Contains(err.Error(), `gateway "gw1"`) || !strings.Contains(err.Error(), "OpenConnect") {
			t.Errorf("TLS %q: %v, want an error naming gateway gw1's OpenConnect listener", tls, err)
		}
	}
	for name, mod := range map[string]func(o *Offer){
		"version":       func(o *Offer) { o.Version = 2 },
		"no gateway":    func(o *Offer) { o.Gateways = nil },
		"zero key":      func(o *Offer) { o.Gateways[0].PublicKey = noise.PublicKey{} },
		"no endpoint":   func(o *Offer) { o.Gateways[0].Endpoint = netip.AddrPort{} },
		"http api":      func(o *Offer) { o.Gateways[0].API = "http://198.18.0.1" },
		"tls path":      func(o *Offer) { o.Gateways[0].TLS = "https://198.18.0.1:443/x" },
		"mtu":           func(o *Offer) { o.MTU = 100 },
		"two v4":        func(o *Offer) { o.Addresses = append(o.Addresses, netip.MustParsePrefix("100.80.0.8/32")) },
		"no address":    func(o *Offer) { o.Addresses = nil },
		"route":         func(o *Offer) { o.Routes = []netip.Prefix{netip.MustParsePrefix("198.18.2.1/24")} },
		"search":        func(o *Offer) { o.Search = []string{"bad\nnameserver 1.2.3.4"} },
		"user":          func(o *Offer) { o.User = "<script>" },
		"many routes":   func(o *Offer) { o.Routes = make([]netip.Prefix, maxRoutes+1) },
		"zoned dns":     func(o *Offer) { o.DNS = []netip.Addr{netip.MustParseAddr("fe80::1%eth0")} },
		"negative keep": func(o *Offer) { o.Keepalive = -1 },
		"control port":  func(o *Offer) { o.Control = netip.MustParseAddrPort("100.80.0.1:0") },
		"control lo":    func(o *Offer) { o.Control = netip.MustParseAddrPort("127.0.0.1:51821") },
		"control any":   func(o *Offer) { o.Control = netip.MustParseAddrPort("0.0.0.0:51821") },
	} {
		o := testOffer(t)
		o.Gateways = append([]Gateway(nil), o.Gateways...)
		mod(&o)
		if err := o.Check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "profiles")
	priv, _ := noise.GeneratePrivateKey()
	p := &Profile{Name: "work", Offer: testOffer(t), PrivateKey: priv.Base64(), Pin: "pin-sha256:x", EnrolledAt: time.Unix(1700000000, 0).UTC()}
	if err := Save(dir, p); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "work.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("profile file mode %v, %v", fi.Mode(), err)
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Fatalf("profile dir mode %v", di.Mode())
	}
	back, err := Load(dir, "work")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(p)
	b, _ := json.Marshal(back)
	if !bytes.Equal(a, b) {
		t.Fatalf("loaded\n%s\nwant\n%s", b, a)
	}
	if k, err := back.Key(); err != nil || k != priv {
		t.Fatalf("key %v", err)
	}
	if names, _ := List(dir); len(names) != 1 || names[0] != "work" {
		t.Fatalf("List = %v", names)
	}
	if _, err := Load(dir, "nope"); err == nil || !strings.Contains(err.Error(), "ptun join") {
		t.Fatalf("a missing profile: %v", err)
	}
	if err := Save(dir, &Profile{Name: "../evil"}); err == nil {
		t.Fatal("a profile name with a path was accepted")
	}
	pc := back.Peer(back.Offer.Gateways[0])
	if pc.PublicKey != back.Offer.Gateways[0].PublicKey || *pc.PersistentKeepalive != 25 || len(pc.AddAllowedIPs) != 1 {
		t.Fatalf("Peer = %+v", pc)
	}
}

func TestTunnelRoutes(t *testing.T) {
	o := testOffer(t)
	if got := o.TunnelRoutes(); len(got) != 1 || got[0] != o.Routes[0] {
		t.Errorf("without a control address: %v", got)
	}
	o.Control = netip.MustParseAddrPort("100.80.0.1:51821")
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	if got := o.TunnelRoutes(); len(got) != 2 || got[1] != netip.MustParsePrefix("100.80.0.1/32") {
		t.Errorf("with a control address: %v", got)
	}
	o.Routes = append(o.Routes, netip.MustParsePrefix("0.0.0.0/0"))
	if got := o.TunnelRoutes(); len(got) != 2 {
		t.Errorf("with a full tunnel, which carries the control address already: %v", got)
	}
	if len(o.Routes) != 2 {
		t.Errorf("TunnelRoutes changed the offer's routes: %v", o.Routes)
	}
}

// FuzzDecodeOffer: DecodeOffer never panics, and what it accepts checks
// and encodes back to an offer it accepts again.
func FuzzDecodeOffer(f *testing.F) {
	o := testOffer(f)
	b, _ := json.Marshal(o)
	f.Add(b)
	f.Add([]byte(`{"version":1,"gateways":[{}]}`))
	f.Add([]byte(`{"version":1,"unknown":1}`))
	// Without the OpenConnect listener (older gateways' offers), and with
	// one that is refused.
	o.Gateways[0].TLS = ""
	b, _ = json.Marshal(o)
	f.Add(b)
	o.Gateways[0].TLS = "https://[2001:db8::1]:443/x"
	b, _ = json.Marshal(o)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := DecodeOffer(bytes.NewReader(b))
		if err != nil {
			return
		}
		again, _ := json.Marshal(o)
		if _, err := DecodeOffer(bytes.NewReader(again)); err != nil {
			t.Fatalf("an accepted offer does not read back: %v\n%s", err, again)
		}
	})
}
