package client

import (
	"context"
	"crypto/tls"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// TestJoinRegistry: the whole enrollment path on a real (SQLite) registry:
// an invite made in the registry, redeemed by ptun join over pinned TLS,
// gives the device an address from each pool and a profile that names the
// gateway; the invite's single use is spent, and a second join is refused.
func TestJoinRegistry(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	for _, p := range []string{"100.80.0.0/16", "2001:db8:80::/64"} {
		if _, err := reg.AddPool(ctx, netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	gwKey, _ := noise.GeneratePrivateKey()
	if _, err := reg.AddGateway(ctx, registry.Gateway{Name: "gw1", PublicKey: registry.Key(gwKey.PublicKey()), Endpoint: "198.18.0.1:51820"}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.AddUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	inv, secret, err := reg.CreateInvite(ctx, "alice", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	e := &gateway.RegistryEnroller{Registry: reg, Site: gateway.Site{MTU: 1420,
		Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}, DNS: []netip.Addr{netip.MustParseAddr("198.18.2.53")}}}

	dir := t.TempDir()
	pin, err := enroll.WriteCertificate(dir, []string{"198.18.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	srv := httptest.NewUnstartedServer(gateway.EnrollHandler(e, nil))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	base, _ := url.Parse(srv.URL + "/join")
	prefix, sec, ok := strings.Cut(secret, ".")
	if !ok || prefix != inv.Prefix {
		t.Fatalf("the registry's secret %q does not start with its prefix %q", secret, inv.Prefix)
	}
	invite := (&enroll.Invite{Base: base, Prefix: prefix, Secret: sec, Pin: pin}).String()

	profiles := t.TempDir()
	p, err := Join(ctx, invite, "work", "laptop", profiles)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Offer.Addresses) != 2 || !netip.MustParsePrefix("100.80.0.0/16").Contains(p.Offer.Addresses[0].Addr()) {
		t.Fatalf("offered addresses %v", p.Offer.Addresses)
	}
	if len(p.Offer.Gateways) != 1 || p.Offer.Gateways[0].PublicKey != gwKey.PublicKey() || p.Offer.User != "alice" {
		t.Fatalf("offer %+v", p.Offer)
	}
	key, _ := p.Key()
	dev, err := reg.DeviceByKey(ctx, registry.Key(key.PublicKey()))
	if err != nil || dev.Name != "laptop" || dev.User != "alice" {
		t.Fatalf("the registry's device: %+v, %v", dev, err)
	}
	if _, err := Join(ctx, invite, "again", "phone", profiles); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Fatalf("a second use of a one-use invite: %v", err)
	}
}
