package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
)

func TestTLSURL(t *testing.T) {
	for _, c := range []struct{ endpoint, tls, want string }{
		{"198.18.0.1:51820", "", ""},
		{"198.18.0.1:51820", "198.18.0.2:443", "https://198.18.0.2:443"},
		{"198.18.0.1:51820", "0.0.0.0:443", "https://198.18.0.1:443"},
		{"198.18.0.1:51820", "[::]:8443", "https://198.18.0.1:8443"},
		{"[2001:db8::1]:51820", "[::]:443", "https://[2001:db8::1]:443"},
		{"[2001:db8::1]:51820", "0.0.0.0:443", "https://[2001:db8::1]:443"},
		{"198.18.0.1:51820", "[2001:db8::2]:443", "https://[2001:db8::2]:443"},
		{"198.18.0.1:51820", "[fe80::1%eth0]:443", "https://[fe80::1]:443"},
	} {
		cfg := Config{Endpoint: netip.MustParseAddrPort(c.endpoint)}
		if c.tls != "" {
			cfg.TLS = netip.MustParseAddrPort(c.tls)
		}
		if got := cfg.TLSURL(); got != c.want {
			t.Errorf("endpoint %s, tls %q: TLSURL %q, want %q", c.endpoint, c.tls, got, c.want)
		}
	}
	// As ptun gateway init --tls :443 gives it.
	ap, err := ParseTLSAddr(":443")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"), TLS: ap}
	if got := cfg.TLSURL(); got != "https://198.18.0.1:443" {
		t.Errorf("--tls :443: TLSURL %q", got)
	}
}

// TestInitRecordsTLS: init registers the gateway's OpenConnect listener
// with it, or none.
func TestInitRecordsTLS(t *testing.T) {
	for _, tls := range []string{"", ":443", "198.18.0.7:8443"} {
		dir := filepath.Join(t.TempDir(), "gw")
		o := initOptions()
		want := ""
		if tls != "" {
			ap, err := ParseTLSAddr(tls)
			if err != nil {
				t.Fatal(err)
			}
			o.TLS = ap
			want = o.TLSURL()
		}
		if _, err := Init(context.Background(), dir, o); err != nil {
			t.Fatalf("--tls %q: %v", tls, err)
		}
		_, reg, err := Load(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		gws, err := reg.ListGateways(context.Background())
		reg.Close()
		if err != nil || len(gws) != 1 || gws[0].TLS != want {
			t.Errorf("--tls %q: gateways %+v (%v), want TLS %q", tls, gws, err, want)
		}
	}
}

// failingTLS is a registry whose SetGatewayTLS fails.
type failingTLS struct {
	registry.Registry
}

func (failingTLS) SetGatewayTLS(context.Context, string, string) error {
	return errors.New("dial tcp 198.18.0.5:5432: connect: connection refused")
}

// TestAdvertiseTLS: a gateway whose registry record says another TLS
// listener than it runs sets it, audited as the gateway's; one that says
// the same writes nothing; a failure or a missing record is logged only.
func TestAdvertiseTLS(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if _, err := reg.AddGateway(ctx, registry.Gateway{Name: "gw1", PublicKey: registry.Key{1}, Endpoint: "198.18.0.1:51820", API: "https://198.18.0.1:8443"}); err != nil {
		t.Fatal(err)
	}
	var logs []string
	logf := func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) }
	tlsOf := func() string {
		t.Helper()
		gws, err := reg.ListGateways(ctx)
		if err != nil || len(gws) != 1 {
			t.Fatalf("gateways %+v, %v", gws, err)
		}
		return gws[0].TLS
	}
	audits := func() int {
		t.Helper()
		a, err := reg.Audit(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return len(a)
	}

	// gateway.json gained tls after init.
	advertiseTLS(ctx, reg, "gw1", "https://198.18.0.1:443", logf)
	if got := tlsOf(); got != "https://198.18.0.1:443" {
		t.Fatalf("after advertising: TLS %q", got)
	}
	a, _ := reg.Audit(ctx, 0, 1000)
	if last := a[len(a)-1]; last.Action != "gateway.tls" || last.Actor != "gateway:gw1" || last.Target != "gw1" || last.Detail != "https://198.18.0.1:443" {
		t.Errorf("audit %+v", last)
	}
	if len(logs) != 1 || !strings.Contains(logs[0], "https://198.18.0.1:443") || !strings.Contains(logs[0], "was none") {
		t.Errorf("logs %q", logs)
	}
	// A restart with the same listener writes and logs nothing.
	n := audits()
	logs = nil
	advertiseTLS(ctx, reg, "gw1", "https://198.18.0.1:443", logf)
	if audits() != n || len(logs) != 0 {
		t.Errorf("an unchanged listener: %d audit entries more, logs %q", audits()-n, logs)
	}
	// A failure is logged and changes nothing.
	advertiseTLS(ctx, failingTLS{reg}, "gw1", "", logf)
	if got := tlsOf(); got != "https://198.18.0.1:443" || len(logs) != 1 || !strings.Contains(logs[0], "connection refused") {
		t.Errorf("a failed SetGatewayTLS: TLS %q, logs %q", got, logs)
	}
	// gateway.json lost tls.
	logs = nil
	advertiseTLS(ctx, reg, "gw1", "", logf)
	if got := tlsOf(); got != "" || len(logs) != 1 || !strings.Contains(logs[0], "none") {
		t.Errorf("after the listener went: TLS %q, logs %q", got, logs)
	}
	// A gateway the registry does not know.
	logs = nil
	advertiseTLS(ctx, reg, "gw9", "https://198.18.0.9:443", logf)
	if len(logs) != 1 || !strings.Contains(logs[0], "no record") {
		t.Errorf("an unknown gateway: logs %q", logs)
	}
}

// TestOfferCarriesTLS: an offer names each gateway's OpenConnect listener
// (with the port of https when the registry has none), and none for a
// gateway without one; the device accepts it.
func TestOfferCarriesTLS(t *testing.T) {
	gws := []registry.Gateway{
		{Name: "gw1", PublicKey: registry.Key{1}, Endpoint: "198.18.0.1:51820", API: "https://198.18.0.1:8443", Pin: "pin-sha256:x", TLS: "https://198.18.0.1:443"},
		{Name: "gw2", PublicKey: registry.Key{2}, Endpoint: "198.18.0.2:51820", API: "https://198.18.0.2:8443", Pin: "pin-sha256:y"},
		{Name: "gw3", PublicKey: registry.Key{3}, Endpoint: "[2001:db8::3]:51820", TLS: "https://[2001:db8::3]"},
	}
	dev := registry.Device{User: "alice", Name: "laptop", Addresses: []netip.Addr{netip.MustParseAddr("100.80.0.7")}}
	o, err := makeOffer(gws, Site{MTU: 1420, API: "https://198.18.0.1:8443"}, dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	want := []string{"https://198.18.0.1:443", "", "https://[2001:db8::3]:443"}
	for i, g := range o.Gateways {
		if g.TLS != want[i] {
			t.Errorf("gateway %s: TLS %q, want %q", g.Name, g.TLS, want[i])
		}
	}
	b, _ := json.Marshal(o.Gateways[1])
	if strings.Contains(string(b), "tls") {
		t.Errorf("a gateway without a listener: %s", b)
	}
}

// TestEnrollCarriesTLS: a device enrolled through the registry gets every
// gateway's OpenConnect listener, and the one set after it enrolled in
// its next offer.
func TestEnrollCarriesTLS(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	reg.AddUser(ctx, "alice")
	for _, g := range []registry.Gateway{
		{Name: "gw1", PublicKey: registry.Key{1}, Endpoint: "198.18.0.1:51820", API: "https://198.18.0.1:8443", TLS: "https://198.18.0.1:443"},
		{Name: "gw2", PublicKey: registry.Key{2}, Endpoint: "198.18.0.2:51820", API: "https://198.18.0.2:8443"},
	} {
		if _, err := reg.AddGateway(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	_, secret, err := reg.CreateInvite(ctx, "alice", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	prefix, sec, _ := strings.Cut(secret, ".")
	devKey, _ := noise.GeneratePrivateKey()
	e := &RegistryEnroller{Registry: reg, Site: Site{MTU: 1420}}
	o, err := e.Enroll(ctx, Enrollment{Prefix: prefix, Secret: sec, PublicKey: devKey.PublicKey(), Device: "laptop", Source: netip.MustParseAddr("198.18.0.9")})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	if len(o.Gateways) != 2 || o.Gateways[0].TLS != "https://198.18.0.1:443" || o.Gateways[1].TLS != "" {
		t.Fatalf("offer's gateways %+v", o.Gateways)
	}
	if err := reg.SetGatewayTLS(ctx, "gw2", "https://198.18.0.2:443"); err != nil {
		t.Fatal(err)
	}
	dev, err := reg.DeviceByKey(ctx, registry.Key(devKey.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	if o, err = e.Offer(ctx, dev); err != nil || o.Gateways[1].TLS != "https://198.18.0.2:443" {
		t.Fatalf("the next offer: %+v, %v", o, err)
	}
}
