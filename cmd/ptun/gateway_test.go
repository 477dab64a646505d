package main

import (
	"context"
	"crypto/tls"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/gateway"
)

// ok runs ptun with args and fails unless it exits 0; it returns stdout.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	var code int
	out, errOut := capture(t, func() { code = run(args) })
	if code != 0 {
		t.Fatalf("ptun %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// TestGatewayCommands drives the administration commands on a SQLite
// registry in a temporary folder: init, user add, invite (its URL alone on
// the last line, pinned to the certificate init made), an enrollment with
// that URL through the enrollment API, devices, revoke. Bad input changes
// nothing and exits non-zero.
func TestGatewayCommands(t *testing.T) {
	state := filepath.Join(t.TempDir(), "gw")
	ok(t, "gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443",
		"--pool", "100.80.0.0/16", "--pool", "2001:db8:80::/64", "--route", "198.18.2.0/24", "--dns", "198.18.2.53", "--search", "corp.example")
	for _, f := range []string{"gateway.key", "key.pem", "gateway.json"} {
		if fi, err := os.Stat(filepath.Join(state, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	var code int
	capture(t, func() {
		code = run([]string{"gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443", "--pool", "100.81.0.0/16"})
	})
	if code == 0 {
		t.Fatal("a second init over an existing gateway succeeded")
	}
	ok(t, "gateway", "user", "add", "alice", "--group", "eng", "--state", state) // flags after the argument
	if out := ok(t, "gateway", "users", "--state", state); !strings.Contains(out, "alice\teng") {
		t.Fatalf("users: %q", out)
	}
	capture(t, func() { code = run([]string{"gateway", "invite", "nobody", "--state", state}) })
	if code == 0 {
		t.Fatal("an invite for an unknown user succeeded")
	}
	out := ok(t, "gateway", "invite", "alice", "--state", state)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	inviteURL := lines[len(lines)-1]
	inv, err := enroll.ParseInvite(inviteURL)
	if err != nil {
		t.Fatalf("the last line %q: %v", inviteURL, err)
	}
	pin, _ := gateway.Pin(state)
	if inv.Pin != pin || inv.Base.Host != "198.18.0.1:8443" {
		t.Fatalf("invite %+v, want pin %v and the API address", inv, pin)
	}

	// The enrollment API of this gateway (as ptun gateway run serves it),
	// on loopback; the invite is pointed at it.
	ctx := context.Background()
	cfg, reg, err := gateway.Load(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	cert, err := tls.LoadX509KeyPair(filepath.Join(state, "cert.pem"), filepath.Join(state, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(gateway.EnrollHandler(&gateway.RegistryEnroller{Registry: reg, Site: cfg.Site}, nil))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	su, _ := url.Parse(srv.URL)
	inv.Base.Host = su.Host
	p, err := client.Join(ctx, inv.String(), "work", "laptop", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Offer.Addresses) != 2 || len(p.Offer.Routes) != 1 || p.Offer.Search[0] != "corp.example" || p.Offer.Gateways[0].Name != "gw1" {
		t.Fatalf("offer %+v", p.Offer)
	}

	if out := ok(t, "gateway", "devices", "--state", state); !strings.Contains(out, "alice") || !strings.Contains(out, "laptop") ||
		!strings.Contains(out, p.Offer.Addresses[0].Addr().String()) || !strings.Contains(out, "offline") || !strings.Contains(out, "is not running") {
		t.Fatalf("devices:\n%s", out)
	}
	ok(t, "gateway", "revoke", "alice/laptop", "--state", state)
	if out := ok(t, "gateway", "devices", "--state", state); strings.Contains(out, "laptop") {
		t.Fatalf("a revoked device is listed as active:\n%s", out)
	}
	if out := ok(t, "gateway", "devices", "--all", "--json", "--state", state); !strings.Contains(out, `"RevokedAt"`) || !strings.Contains(out, "laptop") {
		t.Fatalf("devices --all --json:\n%s", out)
	}
	capture(t, func() { code = run([]string{"gateway", "revoke", "alice/laptop", "--state", state}) })
	if code == 0 {
		t.Fatal("revoking a revoked device succeeded")
	}
}

// TestGatewayRoutes: route add and remove change gateway.json and write
// the audit log; a route that is there already, one that is not there, or
// a bad prefix is refused and changes nothing.
func TestGatewayRoutes(t *testing.T) {
	state := filepath.Join(t.TempDir(), "gw")
	ok(t, "gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443",
		"--pool", "100.80.0.0/16", "--route", "198.18.2.0/24")
	ok(t, "gateway", "route", "add", "198.18.3.0/24", "--state", state)
	if out := ok(t, "gateway", "routes", "--state", state); out != "198.18.2.0/24\n198.18.3.0/24\n" {
		t.Fatalf("routes after add: %q", out)
	}
	before, _ := os.ReadFile(filepath.Join(state, "gateway.json"))
	for _, args := range [][]string{
		{"route", "add", "198.18.3.0/24"},    // there already
		{"route", "remove", "198.18.9.0/24"}, // not there
		{"route", "add", "198.18.3.1/24"},    // not a network prefix
		{"route", "add", "nonsense"},
		{"route", "delete", "198.18.3.0/24"},
	} {
		var code int
		capture(t, func() { code = run(append(append([]string{"gateway"}, args...), "--state", state)) })
		if code == 0 {
			t.Errorf("gateway %v succeeded", args)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(state, "gateway.json")); string(after) != string(before) {
		t.Errorf("a refused route change rewrote gateway.json")
	}
	ok(t, "gateway", "route", "remove", "198.18.2.0/24", "--state", state)
	if out := ok(t, "gateway", "routes", "--state", state); out != "198.18.3.0/24\n" {
		t.Fatalf("routes after remove: %q", out)
	}
	ctx := context.Background()
	_, reg, err := gateway.Load(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	audit, err := reg.Audit(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, a := range audit {
		if strings.HasPrefix(a.Action, "gateway.route.") {
			seen = append(seen, a.Action+" "+a.Detail)
		}
	}
	if strings.Join(seen, ", ") != "gateway.route.add 198.18.3.0/24, gateway.route.remove 198.18.2.0/24" {
		t.Errorf("audit log of the route changes: %v", seen)
	}
}

// TestGatewayInitMetrics: init --metrics stores the listener in
// gateway.json (and says where it will be); without it the key is absent
// (no listener); a bad value is refused in one line and makes nothing.
func TestGatewayInitMetrics(t *testing.T) {
	dir := t.TempDir()
	base := []string{"gateway", "init", "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443", "--pool", "100.80.0.0/16"}
	out := ok(t, append(base, "--state", filepath.Join(dir, "on"), "--metrics", "127.0.0.1:9587")...)
	if !strings.Contains(out, "http://127.0.0.1:9587/metrics") {
		t.Errorf("init does not say where the metrics will be:\n%s", out)
	}
	cfg, err := gateway.LoadConfig(filepath.Join(dir, "on"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics.String() != "127.0.0.1:9587" {
		t.Errorf("gateway.json metrics %v, want 127.0.0.1:9587", cfg.Metrics)
	}
	ok(t, append(base, "--state", filepath.Join(dir, "off"))...)
	if b, _ := os.ReadFile(filepath.Join(dir, "off", "gateway.json")); strings.Contains(string(b), "metrics") {
		t.Errorf("without --metrics gateway.json names a listener:\n%s", b)
	}
	for _, bad := range []string{"localhost:9587", "127.0.0.1", "127.0.0.1:0"} {
		state := filepath.Join(dir, "bad")
		var code int
		_, errOut := capture(t, func() { code = run(append(base, "--state", state, "--metrics", bad)) })
		if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "--metrics") {
			t.Errorf("--metrics %s: exit %d, stderr %q; want 1 and one line", bad, code, errOut)
		}
		if _, err := os.Stat(state); err == nil {
			t.Errorf("--metrics %s: a refused init made %s", bad, state)
		}
	}
	var code int
	_, errOut := capture(t, func() { code = run([]string{"--metrics", "nonsense", "wg0"}) })
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, `--metrics "nonsense"`) {
		t.Errorf("ptun --metrics nonsense wg0: exit %d, stderr %q", code, errOut)
	}
	_, errOut = capture(t, func() { code = run([]string{"up", "work", "--metrics", "127.0.0.1"}) })
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, `--metrics "127.0.0.1"`) {
		t.Errorf("ptun up work --metrics 127.0.0.1: exit %d, stderr %q", code, errOut)
	}
}
