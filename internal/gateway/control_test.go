package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// controlFixture is a synced syncer over a SQLite registry with one
// device, alice/laptop, and one gateway.
func controlFixture(t *testing.T) (*syncer, registry.Registry, registry.Device, noise.PrivateKey, noise.PrivateKey) {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	reg.AddUser(ctx, "alice")
	gwKey, _ := noise.GeneratePrivateKey()
	if _, err := reg.AddGateway(ctx, registry.Gateway{Name: "gw1", PublicKey: registry.Key(gwKey.PublicKey()), Endpoint: "198.18.0.1:51820", API: "https://198.18.0.1:8443"}); err != nil {
		t.Fatal(err)
	}
	devKey, _ := noise.GeneratePrivateKey()
	d, err := reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key(devKey.PublicKey())})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &Config{Site: Site{MTU: 1420, Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")},
		Control: netip.AddrPortFrom(netip.MustParseAddr("100.80.0.1"), ControlPort)}}
	s := &syncer{reg: reg, cfg: cfg, h: &recorder{peers: map[noise.PublicKey]wgcfg.PeerConfig{}}, logf: t.Logf, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	return s, reg, d, gwKey, devKey
}

func get(h http.Handler, from string, etag string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "http://100.80.0.1:51821"+profile.ControlPath, nil)
	r.RemoteAddr = from
	if etag != "" {
		r.Header.Set("If-None-Match", etag)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestControlService: a device gets its own offer by its tunnel address,
// a 304 while it has not changed, the new one after a change; an address
// no device holds gets a 404; every device may reach the control service
// whatever its access rules.
func TestControlService(t *testing.T) {
	s, _, d, _, _ := controlFixture(t)
	h := controlHandler(s, nil)
	from := netip.AddrPortFrom(d.Addresses[0], 40000).String()
	w := get(h, from, "")
	if w.Code != 200 {
		t.Fatalf("GET: %d %s", w.Code, w.Body)
	}
	o, err := profile.DecodeOffer(w.Body)
	if err != nil {
		t.Fatal(err)
	}
	if o.Device != "laptop" || o.Addresses[0].Addr() != d.Addresses[0] || o.Control != s.cfg.Site.Control || len(o.Gateways) != 1 || o.Gateways[0].API != "https://198.18.0.1:8443" {
		t.Fatalf("offer %+v", o)
	}
	etag := w.Header().Get("ETag")
	if w := get(h, from, etag); w.Code != http.StatusNotModified {
		t.Fatalf("unchanged: %d", w.Code)
	}
	c := *s.cfg
	c.Site.Routes = append(append([]netip.Prefix(nil), c.Site.Routes...), netip.MustParsePrefix("198.18.3.0/24"))
	s.setConfig(&c)
	w = get(h, from, etag)
	if w.Code != 200 || w.Header().Get("ETag") == etag {
		t.Fatalf("after a route change: %d, etag %q", w.Code, w.Header().Get("ETag"))
	}
	if o, _ := profile.DecodeOffer(w.Body); o == nil || len(o.Routes) != 2 {
		t.Fatalf("after a route change: %+v", o)
	}
	if w := get(h, "100.80.9.9:40000", ""); w.Code != http.StatusNotFound {
		t.Fatalf("an unknown address: %d", w.Code)
	}
	// Access: a deny-by-default gateway still lets the device reach the
	// control service and ping the gateway, and nothing else.
	s.cfg.DefaultDeny = true
	rules := s.access(nil, nil)
	m, err := acl.Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	ctl := s.cfg.Site.Control
	if !m.Allow(ipv4(ctl.Addr(), acl.ProtoTCP, ctl.Port())) || !m.Allow(ipv4(ctl.Addr(), acl.ProtoICMP, 0)) ||
		m.Allow(ipv4(ctl.Addr(), acl.ProtoTCP, 22)) || m.Allow(ipv4(netip.MustParseAddr("198.18.2.2"), acl.ProtoICMP, 0)) {
		t.Fatalf("deny-by-default access %v", rules)
	}
}

// ipv4 is an IPv4 packet from a device to dst, of protocol proto, to port.
func ipv4(dst netip.Addr, proto uint8, port uint16) []byte {
	p := make([]byte, 28)
	p[0], p[9] = 0x45, proto
	p[2], p[3] = 0, 28
	copy(p[12:16], []byte{100, 80, 0, 2})
	d := dst.As4()
	copy(p[16:20], d[:])
	p[22], p[23] = byte(port>>8), byte(port)
	return p
}

// TestStatusEndpoint: a device proving its key learns whether it is
// active or revoked; a forged proof, a bad body or an unknown key learn
// nothing.
func TestStatusEndpoint(t *testing.T) {
	_, reg, d, gwKey, devKey := controlFixture(t)
	h := statusHandler(gwKey, reg, nil)
	post := func(body []byte) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "https://198.18.0.1:8443"+enroll.StatusPath, bytes.NewReader(body))
		r.RemoteAddr = "198.18.0.2:5000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	ask := func(dev noise.PrivateKey, gw noise.PublicKey) *httptest.ResponseRecorder {
		req, err := enroll.NewStatusRequest(dev, gw, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(req)
		return post(b)
	}
	state := func(w *httptest.ResponseRecorder) string {
		var a enroll.StatusAnswer
		json.NewDecoder(w.Body).Decode(&a)
		return a.State
	}
	if w := ask(devKey, gwKey.PublicKey()); w.Code != 200 || state(w) != enroll.StateActive {
		t.Fatalf("active device: %d", w.Code)
	}
	other, _ := noise.GeneratePrivateKey()
	if w := ask(devKey, other.PublicKey()); w.Code != http.StatusForbidden {
		t.Fatalf("a proof for another gateway: %d", w.Code)
	}
	if w := ask(other, gwKey.PublicKey()); w.Code != http.StatusNotFound {
		t.Fatalf("an unknown key: %d", w.Code)
	}
	if w := post([]byte(`{"public_key":1}`)); w.Code != http.StatusBadRequest {
		t.Fatalf("a bad body: %d", w.Code)
	}
	if err := reg.RevokeDevice(context.Background(), d.ID); err != nil {
		t.Fatal(err)
	}
	if w := ask(devKey, gwKey.PublicKey()); w.Code != 200 || state(w) != enroll.StateRevoked {
		t.Fatalf("revoked device: %d", w.Code)
	}
}
