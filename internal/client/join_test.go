package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// fakeEnroller accepts one invite once.
type fakeEnroller struct {
	mu     sync.Mutex
	prefix string
	secret string
	used   bool
	keys   []noise.PublicKey
	gw     noise.PublicKey
}

func (f *fakeEnroller) Enroll(_ context.Context, e gateway.Enrollment) (*profile.Offer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e.Prefix != f.prefix || e.Secret != f.secret || f.used {
		return nil, gateway.ErrInvalidInvite
	}
	f.used = true
	f.keys = append(f.keys, e.PublicKey)
	return &profile.Offer{Version: profile.Version, User: "alice", Device: e.Device,
		Gateways:  []profile.Gateway{{Name: "gw1", PublicKey: f.gw, Endpoint: netip.MustParseAddrPort("198.18.0.1:51820")}},
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.80.0.7/32")}, MTU: 1420,
		Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}}, nil
}

// gatewayServer serves the enrollment API over TLS with a gateway
// certificate, and returns an invite for it.
func gatewayServer(t *testing.T, f *fakeEnroller) (inviteURL string, pin enroll.Pin) {
	t.Helper()
	dir := t.TempDir()
	pin, err := enroll.WriteCertificate(dir, []string{"198.18.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(gateway.EnrollHandler(f, nil))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	base, _ := url.Parse(srv.URL + "/join")
	inv := &enroll.Invite{Base: base, Prefix: f.prefix, Secret: f.secret, Pin: pin}
	return inv.String(), pin
}

func newFake(t *testing.T) *fakeEnroller {
	k, _ := noise.GeneratePrivateKey()
	return &fakeEnroller{prefix: "Kx3f9QzA", secret: "7oQm2Jd_kL-9wXyZ0123456789ab", gw: k.PublicKey()}
}

// TestJoin: join enrolls with a key made here (only its public half
// reaches the gateway), stores the profile 0600, and a second use of the
// invite is refused with the gateway's message and writes nothing.
func TestJoin(t *testing.T) {
	f := newFake(t)
	invite, pin := gatewayServer(t, f)
	dir := filepath.Join(t.TempDir(), "profiles")
	p, err := Join(context.Background(), invite, "work", "laptop", dir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := p.Key()
	if err != nil || len(f.keys) != 1 || f.keys[0] != key.PublicKey() {
		t.Fatalf("the gateway got key %v, the device holds the pair of %v (%v)", f.keys, key.PublicKey(), err)
	}
	if p.Pin != pin.String() || p.Offer.Device != "laptop" {
		t.Fatalf("profile %+v", p)
	}
	if fi, err := os.Stat(filepath.Join(dir, "work.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("profile file: %v %v", fi, err)
	}
	if _, err := Join(context.Background(), invite, "work", "laptop", dir); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("join over an existing profile: %v", err)
	}
	_, err = Join(context.Background(), invite, "home", "laptop", dir)
	if err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Fatalf("a used invite: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "home.json")); !os.IsNotExist(err) {
		t.Fatal("a refused enrollment wrote a profile")
	}
}

// TestJoinWrongPin: a gateway whose certificate is not the invite's is
// not trusted, and nothing reaches it.
func TestJoinWrongPin(t *testing.T) {
	f := newFake(t)
	invite, _ := gatewayServer(t, f)
	inv, _ := enroll.ParseInvite(invite)
	inv.Pin[0] ^= 1
	_, err := Join(context.Background(), inv.String(), "work", "laptop", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "pin") {
		t.Fatalf("a wrong pin: %v", err)
	}
	if len(f.keys) != 0 || f.used {
		t.Fatal("the enrollment reached a gateway with the wrong pin")
	}
}

// TestEnrollAPIBadRequests: malformed, oversized and wrongly typed
// requests get a 4xx with a message and reach no Enroller; a source that
// floods is rate limited.
func TestEnrollAPIBadRequests(t *testing.T) {
	f := newFake(t)
	h := gateway.EnrollHandler(f, nil)
	k, _ := noise.GeneratePrivateKey()
	good := fmt.Sprintf(`{"token":"v1.%s.%s","public_key":%q,"device":"laptop"}`, f.prefix, "WRONGWRONGWRONGWRONGWRONG", k.PublicKey().Base64())
	for _, c := range []struct {
		name, method, ctype, body string
		want                      int
	}{
		{"GET", http.MethodGet, "", "", http.StatusMethodNotAllowed},
		{"not JSON", http.MethodPost, "text/plain", good, http.StatusUnsupportedMediaType},
		{"malformed", http.MethodPost, "application/json", `{"token":`, http.StatusBadRequest},
		{"unknown field", http.MethodPost, "application/json", `{"token":"x","admin":true}`, http.StatusBadRequest},
		{"oversized", http.MethodPost, "application/json", `{"device":"` + strings.Repeat("a", 8000) + `"}`, http.StatusRequestEntityTooLarge},
		{"bad token", http.MethodPost, "application/json", `{"token":"v1.x.y","public_key":"` + k.PublicKey().Base64() + `","device":"laptop"}`, http.StatusForbidden},
		{"zero key", http.MethodPost, "application/json", `{"token":"v1.Kx3f9QzA.7oQm2Jd_kL-9wXyZ0123456789ab","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","device":"laptop"}`, http.StatusBadRequest},
		{"bad device", http.MethodPost, "application/json", `{"token":"v1.Kx3f9QzA.7oQm2Jd_kL-9wXyZ0123456789ab","public_key":"` + k.PublicKey().Base64() + `","device":"<script>"}`, http.StatusBadRequest},
		{"wrong secret", http.MethodPost, "application/json", good, http.StatusForbidden},
	} {
		r := httptest.NewRequest(c.method, gateway.EnrollPath, strings.NewReader(c.body))
		r.RemoteAddr = fmt.Sprintf("198.18.5.%d:40000", 1+len(c.name)) // sources apart: no rate limit here
		if c.ctype != "" {
			r.Header.Set("Content-Type", c.ctype)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.want || gateway.ErrorMessage(w.Body) == "" {
			t.Errorf("%s: %d %q, want %d with a message", c.name, w.Code, w.Body.String(), c.want)
		}
	}
	if f.used || len(f.keys) != 0 {
		t.Fatal("a bad request enrolled a device")
	}
	// One source, many tries: the burst passes, then 429.
	limited := 0
	for range 30 {
		r := httptest.NewRequest(http.MethodPost, gateway.EnrollPath, strings.NewReader(good))
		r.RemoteAddr = "198.18.6.1:40000"
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited != 20 {
		t.Fatalf("%d of 30 tries from one source were rate limited, want 20 (burst 10)", limited)
	}
}
