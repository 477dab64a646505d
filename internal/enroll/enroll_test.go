package enroll

import (
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testInvite(t *testing.T) *Invite {
	t.Helper()
	u, _ := url.Parse("https://198.18.0.1:8443/join")
	var pin Pin
	pin[0] = 1
	return &Invite{Base: u, Prefix: "Kx3f9QzA", Secret: "7oQm2Jd_kL-9wXyZ0123456789ab", Pin: pin}
}

func TestInviteRoundTrip(t *testing.T) {
	inv := testInvite(t)
	s := inv.String()
	if !strings.HasPrefix(s, "https://198.18.0.1:8443/join#v1.Kx3f9QzA.") || !strings.Contains(s, "&pin-sha256:") {
		t.Fatalf("invite URL %q", s)
	}
	back, err := ParseInvite(s)
	if err != nil {
		t.Fatal(err)
	}
	if back.String() != s || back.Prefix != inv.Prefix || back.Secret != inv.Secret || back.Pin != inv.Pin || back.Base.Fragment != "" {
		t.Fatalf("parsed back %+v", back)
	}
	if p, sec, err := ParseToken(inv.Token()); err != nil || p != inv.Prefix || sec != inv.Secret {
		t.Fatalf("token: %q %q %v", p, sec, err)
	}
}

func TestParseInviteRefuses(t *testing.T) {
	good := testInvite(t).String()
	for _, bad := range []string{
		"", "not a url", strings.Replace(good, "https://", "http://", 1),
		strings.Split(good, "#")[0],                                       // no fragment
		strings.Replace(good, "#v1.", "#v2.", 1),                          // unknown version
		strings.Replace(good, "Kx3f9QzA", "Kx3f", 1),                      // short prefix
		strings.Replace(good, "7oQm2Jd_kL-9wXyZ0123456789ab", "short", 1), // short secret
		strings.Replace(good, "7oQm2Jd_kL", "7oQm2Jd/kL", 1),              // not base64url
		strings.Replace(good, "pin-sha256:", "sha1:", 1),
		good[:len(good)-4],                                               // truncated pin
		"https://user@198.18.0.1/join" + good[strings.Index(good, "#"):], // credentials
	} {
		if _, err := ParseInvite(bad); err == nil {
			t.Errorf("ParseInvite(%q) accepted", bad)
		}
	}
}

// TestPinnedClient: the pinned client talks to the gateway whose
// certificate it pins, whatever the certificate's names, and refuses any
// other server with ErrPinMismatch.
func TestPinnedClient(t *testing.T) {
	dir := t.TempDir()
	pin, err := WriteCertificate(dir, []string{"gateway.invalid"}) // a name the client never checks
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v %v", fi.Mode(), err)
	}
	if _, err := WriteCertificate(dir, nil); err == nil {
		t.Fatal("WriteCertificate overwrote an existing certificate")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	resp, err := PinnedClient(pin).Get(srv.URL)
	if err != nil {
		t.Fatalf("pinned gateway: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("body %q", b)
	}
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer other.Close()
	if _, err := PinnedClient(pin).Get(other.URL); !errors.Is(err, ErrPinMismatch) {
		t.Fatalf("another server: %v, want ErrPinMismatch", err)
	}
	if p2, err := PinOfPEM(mustRead(t, filepath.Join(dir, "cert.pem"))); err != nil || p2 != pin {
		t.Fatalf("PinOfPEM: %v %v", p2, err)
	}
	if back, err := ParsePin(pin.String()); err != nil || back != pin {
		t.Fatalf("ParsePin(%s): %v %v", pin, back, err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzParseInvite: what ParseInvite accepts writes back to a URL that
// parses to the same invite.
func FuzzParseInvite(f *testing.F) {
	u, _ := url.Parse("https://198.18.0.1:8443/join")
	var pin Pin
	f.Add((&Invite{Base: u, Prefix: "Kx3f9QzA", Secret: "7oQm2Jd_kL-9wXyZ0123456789ab", Pin: pin}).String())
	f.Add("https://[2001:db8::1]/join#v1.AAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB&pin-sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	f.Add("https://x#v1..&")
	f.Fuzz(func(t *testing.T, s string) {
		inv, err := ParseInvite(s)
		if err != nil {
			return
		}
		back, err := ParseInvite(inv.String())
		if err != nil || back.Token() != inv.Token() || back.Pin != inv.Pin || back.Base.String() != inv.Base.String() {
			t.Fatalf("%q -> %q -> %+v, %v", s, inv.String(), back, err)
		}
	})
}
