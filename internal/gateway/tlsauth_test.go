package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/openconnect"
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// counted is a registry that counts some reads and can fail UserPassword
// as an unreachable database does.
type counted struct {
	registry.Registry
	listDevices, changes atomic.Int64
	down                 atomic.Bool
}

func (c *counted) ListDevices(ctx context.Context, f registry.DeviceFilter) ([]registry.Device, error) {
	c.listDevices.Add(1)
	return c.Registry.ListDevices(ctx, f)
}

func (c *counted) Changes(ctx context.Context, since uint64) ([]registry.Change, uint64, error) {
	c.changes.Add(1)
	return c.Registry.Changes(ctx, since)
}

func (c *counted) UserPassword(ctx context.Context, user string) (string, error) {
	if c.down.Load() {
		return "", errors.New("dial tcp 198.18.0.5:5432: connect: connection refused")
	}
	return c.Registry.UserPassword(ctx, user)
}

// tlsFixture is a TLSAuth over a SQLite registry with two pools, the
// groups eng (a rule: tcp/22 to 198.18.2.2) and ops (no rules), and the
// users alice (in eng, password "alice's password") and bob (no
// password). Its clock stands still until the test moves it.
type tlsFixture struct {
	reg   *counted
	cfg   *Config
	auth  *TLSAuth
	clock *time.Time
}

const alicePassword = "alice's password"

var (
	from1 = netip.MustParseAddrPort("198.18.0.7:40000")
	from2 = netip.MustParseAddrPort("198.18.0.8:40000")
)

// gwKey is the fixture gateway's WireGuard key, which checks device logins.
var gwKey = func() noise.PrivateKey {
	k, err := noise.GeneratePrivateKey()
	if err != nil {
		panic(err)
	}
	return k
}()

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	ctx := context.Background()
	base, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { base.Close() })
	reg := &counted{Registry: base}
	for _, p := range []string{"100.80.0.0/16", "2001:db8:80::/64"} {
		if _, err := reg.AddPool(ctx, netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []string{"eng", "ops"} {
		if _, err := reg.AddGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.AddRule(ctx, "eng", registry.Rule{Dest: netip.MustParsePrefix("198.18.2.2/32"), Proto: registry.ProtoTCP, PortFrom: 22, PortTo: 22}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob"} {
		if _, err := reg.AddUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.AddMember(ctx, "eng", "alice"); err != nil {
		t.Fatal(err)
	}
	setPassword(t, reg, "alice", alicePassword)
	cfg := &Config{Site: Site{Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")},
		Control: netip.AddrPortFrom(netip.MustParseAddr("100.80.0.1"), ControlPort)}}
	clock := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	auth := NewTLSAuth(reg, cfg, gwKey, t.Logf)
	auth.now = func() time.Time { return clock }
	return &tlsFixture{reg: reg, cfg: cfg, auth: auth, clock: &clock}
}

func setPassword(t *testing.T, reg registry.Registry, user, pw string) {
	t.Helper()
	h, err := registry.HashPassword(pw)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.SetUserPassword(context.Background(), user, h); err != nil {
		t.Fatal(err)
	}
}

// audit is the audit entries after id, as "action actor target detail".
func (f *tlsFixture) audit(t *testing.T, after int64) (entries []registry.AuditEntry, last int64) {
	t.Helper()
	es, err := f.reg.Audit(context.Background(), after, 1000)
	if err != nil {
		t.Fatal(err)
	}
	last = after
	if len(es) > 0 {
		last = es[len(es)-1].ID
	}
	return es, last
}

func (f *tlsFixture) lastAudit(t *testing.T) int64 {
	_, last := f.audit(t, 0)
	return last
}

func wantRefused(t *testing.T, err error, what, says string) {
	t.Helper()
	if !errors.Is(err, openconnect.ErrLoginFailed) || errors.Is(err, ErrRateLimited) {
		t.Fatalf("%s: %v, want a login failure (not a rate limit)", what, err)
	}
	if !strings.Contains(err.Error(), says) {
		t.Errorf("%s: %q does not say %q", what, err, says)
	}
}

// TestTLSAuthLogin: the first login makes the openconnect device (once,
// with an address in each pool and the pool's prefix length), the next
// finds it with the same addresses; USER/DEVICE makes another; each is
// audited as tls.login by tls:USER from the source; the device is no
// WireGuard device and its key is not a peer's.
func TestTLSAuthLogin(t *testing.T) {
	f := newTLSFixture(t)
	ctx := context.Background()
	mark := f.lastAudit(t)
	first, err := f.auth.Authenticate(ctx, "alice", alicePassword, from1)
	if err != nil {
		t.Fatal(err)
	}
	if first.User != "alice" || first.Device != DefaultTLSDevice || first.DeviceID == 0 || len(first.Addresses) != 2 ||
		first.Addresses[0].Bits() != 16 || !netip.MustParsePrefix("100.80.0.0/16").Contains(first.Addresses[0].Addr()) ||
		first.Addresses[1].Bits() != 64 || !netip.MustParsePrefix("2001:db8:80::/64").Contains(first.Addresses[1].Addr()) {
		t.Fatalf("first login: %+v", first)
	}
	d, err := f.reg.Device(ctx, first.DeviceID)
	if err != nil || d.Protocol != registry.ProtocolOpenConnect || d.Name != DefaultTLSDevice || d.User != "alice" || d.LastSeenAt.IsZero() {
		t.Fatalf("the login's device: %+v %v", d, err)
	}
	es, mark := f.audit(t, mark)
	if len(es) != 2 || es[0].Action != "device.create" || es[0].Actor != "tls:alice" || !strings.Contains(es[0].Detail, "openconnect via TLS login from 198.18.0.7") ||
		es[1].Action != "tls.login" || es[1].Actor != "tls:alice" || es[1].Target != "alice/openconnect" || es[1].Detail != "from 198.18.0.7:40000" {
		t.Fatalf("audit of the first login: %+v", es)
	}

	again, err := f.auth.Authenticate(ctx, "alice", alicePassword, from2)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, first) {
		t.Errorf("second login %+v, want the first's %+v", again, first)
	}
	if es, _ := f.audit(t, mark); len(es) != 1 || es[0].Action != "tls.login" || es[0].Detail != "from 198.18.0.8:40000" {
		t.Errorf("audit of the second login: %+v", es)
	}
	laptop, err := f.auth.Authenticate(ctx, "alice/laptop", alicePassword, from1)
	if err != nil {
		t.Fatal(err)
	}
	if laptop.Device != "laptop" || laptop.DeviceID == first.DeviceID || laptop.Addresses[0] == first.Addresses[0] {
		t.Errorf("alice/laptop: %+v (the default device: %+v)", laptop, first)
	}
	devs, _ := f.reg.ListDevices(ctx, registry.DeviceFilter{User: "alice"})
	if len(devs) != 2 {
		t.Errorf("alice's devices after three logins: %+v", devs)
	}
	if st := f.auth.Stats(); st.Logins != 3 || st.DevicesCreated != 2 || st.Failures != 0 {
		t.Errorf("stats %+v", st)
	}
	// The devices are not WireGuard peers.
	h := &recorder{peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	s := &syncer{reg: f.reg, cfg: f.cfg, h: h, logf: t.Logf, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	if err := s.sync(ctx); err != nil || len(h.peers) != 0 {
		t.Errorf("the syncer made %d peers of openconnect devices (%v)", len(h.peers), err)
	}
}

// TestTLSAuthRefusals: a wrong password, an unknown user, a user without a
// password and malformed logins are login failures that make no device,
// take an argon2 run each, and are audited as tls.login_failed by
// tls:SOURCE with the reason (never the password); a login whose device
// name a WireGuard device has is refused, saying so.
func TestTLSAuthRefusals(t *testing.T) {
	f := newTLSFixture(t)
	ctx := context.Background()
	mark := f.lastAudit(t)
	for _, c := range []struct{ login, password, target, says string }{
		{"alice", "not alice's password", "alice/openconnect", "wrong password"},
		{"alice/laptop", "", "alice/laptop", "wrong password"},
		{"carol", alicePassword, "carol/openconnect", "no such user"},
		{"bob", alicePassword, "bob/openconnect", "no password"},
		{"al ice", alicePassword, "-", "malformed login"},
		{"alice/", alicePassword, "-", "malformed login"},
		{"alice/a/b", alicePassword, "-", "malformed login"},
		{strings.Repeat("a", 65), alicePassword, "-", "malformed login"},
		{"alice", strings.Repeat("x", 2000), "alice/openconnect", "wrong password"},
	} {
		start := time.Now()
		_, err := f.auth.Authenticate(ctx, c.login, c.password, from1)
		took := time.Since(start)
		wantRefused(t, err, fmt.Sprintf("login %.20q", c.login), c.says)
		// argon2 (19 MiB, two passes) takes well over this anywhere: a
		// refusal did not skip it.
		if took < 3*time.Millisecond {
			t.Errorf("login %.20q refused in %v: no argon2 run", c.login, took)
		}
		es, last := f.audit(t, mark)
		mark = last
		if len(es) != 1 || es[0].Action != "tls.login_failed" || es[0].Actor != "tls:198.18.0.7" || es[0].Target != c.target ||
			!strings.HasPrefix(es[0].Detail, "from 198.18.0.7:40000: ") || !strings.Contains(es[0].Detail, c.says) {
			t.Errorf("login %.20q: audit %+v, want one tls.login_failed of %s saying %q", c.login, es, c.target, c.says)
		}
		if c.password != "" && strings.Contains(es[0].Detail, c.password) {
			t.Errorf("the audit entry holds the password: %+v", es[0])
		}
	}
	if devs, _ := f.reg.ListDevices(ctx, registry.DeviceFilter{}); len(devs) != 0 {
		t.Errorf("refused logins made devices: %+v", devs)
	}

	// A WireGuard device named laptop: alice/laptop is refused, even with the right password.
	k, _ := noise.GeneratePrivateKey()
	if _, err := f.reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key(k.PublicKey())}); err != nil {
		t.Fatal(err)
	}
	mark = f.lastAudit(t)
	_, err := f.auth.Authenticate(ctx, "alice/laptop", alicePassword, from1)
	wantRefused(t, err, "a WireGuard device's name", "taken by a wireguard device")
	if es, _ := f.audit(t, mark); len(es) != 1 || es[0].Action != "tls.login_failed" || !strings.Contains(es[0].Detail, "taken by a wireguard device") {
		t.Errorf("audit of the WireGuard name: %+v", es)
	}
	if devs, _ := f.reg.ListDevices(ctx, registry.DeviceFilter{User: "alice"}); len(devs) != 1 || devs[0].Protocol != registry.ProtocolWireGuard {
		t.Errorf("alice's devices: %+v", devs)
	}
	if st := f.auth.Stats(); st.Failures != 10 || st.Logins != 0 || st.RateLimited != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestTLSAuthRateLimits: past a source's burst (an IPv6 source: its /64)
// and past a user name's, attempts are ErrRateLimited (a login failure
// too) before any check, write no audit entry, and pass again once the
// bucket refills; one source or name over its limit leaves the others be.
func TestTLSAuthRateLimits(t *testing.T) {
	f := newTLSFixture(t)
	ctx := context.Background()
	// Smaller buckets than the product's, so that the test runs few argon2 checks.
	f.auth.bySource = newSourceLimiter(tlsSourceRate, 3, maxLoginKeys)
	f.auth.byName = newKeyLimiter[string](tlsNameRate, 4, maxLoginKeys)

	limited := func(login string, from netip.AddrPort) {
		t.Helper()
		mark := f.lastAudit(t)
		start := time.Now()
		_, err := f.auth.Authenticate(ctx, login, alicePassword, from)
		if !errors.Is(err, ErrRateLimited) || !errors.Is(err, openconnect.ErrLoginFailed) {
			t.Fatalf("%s from %v: %v, want ErrRateLimited (wrapping ErrLoginFailed)", login, from, err)
		}
		if es, _ := f.audit(t, mark); len(es) != 0 {
			t.Errorf("a rate-limited attempt was audited: %+v", es)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("a rate-limited attempt took %v", took)
		}
	}
	// Per source: three attempts for three names, then the fourth waits.
	for _, u := range []string{"u1", "u2", "u3"} {
		_, err := f.auth.Authenticate(ctx, u, "whatever password", from1)
		wantRefused(t, err, u, "no such user")
	}
	limited("alice", from1)
	limited("alice", netip.MustParseAddrPort("198.18.0.7:50000")) // another port of the address
	if _, err := f.auth.Authenticate(ctx, "alice", alicePassword, from2); err != nil {
		t.Fatalf("another source: %v", err)
	}
	*f.clock = f.clock.Add(5 * time.Second) // one token back
	if _, err := f.auth.Authenticate(ctx, "alice", alicePassword, from1); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
	limited("alice", from1)

	// IPv6: one /64 is one source.
	for i := 1; i <= 3; i++ {
		_, err := f.auth.Authenticate(ctx, fmt.Sprintf("v%d", i), "whatever password", netip.MustParseAddrPort(fmt.Sprintf("[2001:db8:1:2::%x]:443", i)))
		wantRefused(t, err, "v6", "no such user")
	}
	limited("alice", netip.MustParseAddrPort("[2001:db8:1:2:ffff::9]:443"))
	if _, err := f.auth.Authenticate(ctx, "alice", alicePassword, netip.MustParseAddrPort("[2001:db8:1:3::1]:443")); err != nil {
		t.Fatalf("another /64: %v", err)
	}

	// Per name: alice has had three attempts; the fourth passes, the fifth,
	// from a fresh source, is refused; bob's name is not.
	if _, err := f.auth.Authenticate(ctx, "alice", alicePassword, netip.MustParseAddrPort("198.18.1.1:1")); err != nil {
		t.Fatalf("alice's fourth attempt: %v", err)
	}
	limited("alice", netip.MustParseAddrPort("198.18.1.2:1"))
	limited("alice/laptop", netip.MustParseAddrPort("198.18.1.3:1")) // the name is the user's, whatever the device
	_, err := f.auth.Authenticate(ctx, "bob", alicePassword, netip.MustParseAddrPort("198.18.1.4:1"))
	wantRefused(t, err, "bob", "no password")
	// Every malformed login shares one name bucket.
	for i := 0; i < 4; i++ {
		_, err := f.auth.Authenticate(ctx, fmt.Sprintf("bad name %d", i), "x", netip.MustParseAddrPort(fmt.Sprintf("198.18.2.%d:1", i+1)))
		wantRefused(t, err, "a malformed name", "malformed")
	}
	limited("another bad name", netip.MustParseAddrPort("198.18.2.9:1"))
	if st := f.auth.Stats(); st.RateLimited != 7 {
		t.Errorf("stats %+v: want 7 rate-limited", st)
	}
}

// TestTLSAuthFailureAuditBounded: failures past the gateway-wide audit
// rate are refused as usual but not written, only counted.
func TestTLSAuthFailureAuditBounded(t *testing.T) {
	f := newTLSFixture(t)
	ctx := context.Background()
	f.auth.failAudit = newKeyLimiter[struct{}](tlsFailAuditRate, 2, 1)
	mark := f.lastAudit(t)
	for i := 0; i < 4; i++ {
		_, err := f.auth.Authenticate(ctx, "alice", "wrong password", netip.MustParseAddrPort(fmt.Sprintf("198.18.3.%d:1", i+1)))
		wantRefused(t, err, "a wrong password", "wrong password")
	}
	if es, _ := f.audit(t, mark); len(es) != 2 {
		t.Errorf("%d failures audited, want 2 (the burst)", len(es))
	}
	if st := f.auth.Stats(); st.Failures != 4 || st.AuditSkipped != 2 {
		t.Errorf("stats %+v", st)
	}
	// The limit is on failures only: a login is audited.
	if _, err := f.auth.Authenticate(ctx, "alice", alicePassword, from1); err != nil {
		t.Fatal(err)
	}
	if es, _ := f.audit(t, mark); es[len(es)-1].Action != "tls.login" {
		t.Errorf("the login was not audited: %+v", es)
	}
}

// TestTLSAuthRules: a login's rules are the ones the syncer gives a
// WireGuard peer of the same user (a group's rules; every route for a
// group without rules; the control service always), and follow the
// configuration's default access.
func TestTLSAuthRules(t *testing.T) {
	f := newTLSFixture(t)
	ctx := context.Background()
	setPassword(t, f.reg, "bob", "bob's password")
	if err := f.reg.AddMember(ctx, "ops", "bob"); err != nil {
		t.Fatal(err)
	}
	keys := map[string]noise.PublicKey{}
	for _, u := range []string{"alice", "bob"} {
		k, _ := noise.GeneratePrivateKey()
		keys[u] = k.PublicKey()
		if _, err := f.reg.CreateDevice(ctx, u, registry.DeviceSpec{Name: "wg", PublicKey: registry.Key(keys[u])}); err != nil {
			t.Fatal(err)
		}
	}
	h := &recorder{peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	s := &syncer{reg: f.reg, cfg: f.cfg, h: h, logf: t.Logf, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	for user, pw := range map[string]string{"alice": alicePassword, "bob": "bob's password"} {
		l, err := f.auth.Authenticate(ctx, user, pw, from1)
		if err != nil {
			t.Fatal(err)
		}
		want := h.peers[keys[user]].Access.Rules
		if l.Rules == nil || !slices.Equal(l.Rules, want) {
			t.Errorf("%s's TLS rules %v, want the WireGuard peer's %v", user, l.Rules, want)
		}
	}
	alice, _ := f.auth.Authenticate(ctx, "alice", alicePassword, from1)
	if len(alice.Rules) != 3 || alice.Rules[0].Dst != netip.MustParsePrefix("198.18.2.2/32") || alice.Rules[0].PortLo != 22 {
		t.Errorf("alice (eng: tcp/22 to one host; the control service): %v", alice.Rules)
	}
	bob, _ := f.auth.Authenticate(ctx, "bob", "bob's password", from1)
	if len(bob.Rules) != 3 || bob.Rules[0].Dst != netip.MustParsePrefix("198.18.2.0/24") || bob.Rules[0].Proto != 0 {
		t.Errorf("bob (ops, no rules: every route; the control service): %v", bob.Rules)
	}
	deny := *f.cfg
	deny.DefaultDeny = true
	f.auth.SetConfig(&deny)
	if bob, _ = f.auth.Authenticate(ctx, "bob", "bob's password", from1); len(bob.Rules) != 2 || bob.Rules[0].Dst.Bits() != 32 {
		t.Errorf("bob under default deny: %v, want the control service only", bob.Rules)
	}
}

// TestTLSAuthActive: Active lists the active openconnect devices of users
// with a password, with their rules; it reads only the change feed while
// nothing changes (the same map), and follows a rule change, a revoke
// (the next login makes a new device), a cleared password and a removed
// user at its next call.
func TestTLSAuthActive(t *testing.T) {
	f := newTLSFixture(t)
	ctx := context.Background()
	active := func() map[int64]TLSLogin {
		t.Helper()
		m, err := f.auth.Active(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := active(); len(m) != 0 {
		t.Fatalf("Active before any login: %v", m)
	}
	l, err := f.auth.Authenticate(ctx, "alice/laptop", alicePassword, from1)
	if err != nil {
		t.Fatal(err)
	}
	// A WireGuard device is listed too, whatever its user's password:
	// it may log in by its key.
	k, _ := noise.GeneratePrivateKey()
	wg, err := f.reg.CreateDevice(ctx, "bob", registry.DeviceSpec{Name: "wg", PublicKey: registry.Key(k.PublicKey())})
	if err != nil {
		t.Fatal(err)
	}
	m := active()
	if len(m) != 2 || !reflect.DeepEqual(m[l.DeviceID], l) || m[wg.ID].Device != "wg" || m[wg.ID].User != "bob" || len(m[wg.ID].Addresses) != 2 {
		t.Fatalf("Active after alice's login: %+v, want %+v and bob/wg", m, l)
	}
	lists := f.reg.listDevices.Load()
	again := active()
	if reflect.ValueOf(again).UnsafePointer() != reflect.ValueOf(m).UnsafePointer() || f.reg.listDevices.Load() != lists {
		t.Errorf("an Active with nothing changed read the devices again")
	}
	if err := f.reg.RevokeDevice(ctx, wg.ID); err != nil {
		t.Fatal(err)
	}
	if m = active(); len(m) != 1 || !reflect.DeepEqual(m[l.DeviceID], l) {
		t.Fatalf("Active after bob/wg was revoked: %+v, want %+v", m, l)
	}

	// A rule change: the new rules at the next call.
	if _, err := f.reg.AddRule(ctx, "eng", registry.Rule{Dest: netip.MustParsePrefix("198.18.9.0/24")}); err != nil {
		t.Fatal(err)
	}
	if got := active()[l.DeviceID].Rules; len(got) != len(l.Rules)+1 || !slices.ContainsFunc(got, func(r acl.Rule) bool { return r.Dst == netip.MustParsePrefix("198.18.9.0/24") }) {
		t.Errorf("rules after a rule was added: %v", got)
	}
	// A revoke: gone; the next login is a new device with new addresses.
	if err := f.reg.RevokeDevice(ctx, l.DeviceID); err != nil {
		t.Fatal(err)
	}
	if m := active(); len(m) != 0 {
		t.Errorf("Active after the revoke: %v", m)
	}
	l2, err := f.auth.Authenticate(ctx, "alice/laptop", alicePassword, from1)
	if err != nil || l2.DeviceID == l.DeviceID {
		t.Fatalf("the login after a revoke: %+v %v, want a new device", l2, err)
	}
	if m := active(); len(m) != 1 || m[l2.DeviceID].DeviceID != l2.DeviceID {
		t.Errorf("Active after the new login: %v", m)
	}
	// A cleared password: the device stays in the registry, not in Active.
	if err := f.reg.ClearUserPassword(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if m := active(); len(m) != 0 {
		t.Errorf("Active after alice's password was cleared: %v", m)
	}
	if d, err := f.reg.Device(ctx, l2.DeviceID); err != nil || d.Revoked() {
		t.Errorf("the device after the password was cleared: %+v %v", d, err)
	}
	setPassword(t, f.reg, "alice", alicePassword)
	if m := active(); len(m) != 1 {
		t.Errorf("Active after a new password: %v", m)
	}
	if err := f.reg.RemoveUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if m := active(); len(m) != 0 {
		t.Errorf("Active after alice was removed: %v", m)
	}
	_, err = f.auth.Authenticate(ctx, "alice/laptop", alicePassword, from1)
	wantRefused(t, err, "a removed user", "no such user")
	// A login is no change: Active reads nothing more for it.
	lists = f.reg.listDevices.Load()
	active()
	f.auth.Authenticate(ctx, "carol", "x", from2)
	active()
	if got := f.reg.listDevices.Load(); got != lists {
		t.Errorf("Active read the devices %d times around a failed login, want none", got-lists)
	}
}

// TestTLSAuthConcurrentFirstLogins: logins of one new device at once all
// get the same device.
func TestTLSAuthConcurrentFirstLogins(t *testing.T) {
	f := newTLSFixture(t)
	ctx := context.Background()
	const n = 4
	ids := make(chan int64, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := f.auth.Authenticate(ctx, "alice/tablet", alicePassword, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 4, byte(i + 1)}), 1))
			if err != nil {
				t.Error(err)
				return
			}
			ids <- l.DeviceID
		}()
	}
	wg.Wait()
	close(ids)
	var first int64
	for id := range ids {
		if first == 0 {
			first = id
		} else if id != first {
			t.Errorf("concurrent first logins got devices %d and %d", first, id)
		}
	}
	if devs, _ := f.reg.ListDevices(ctx, registry.DeviceFilter{User: "alice"}); len(devs) != 1 {
		t.Errorf("devices after %d concurrent first logins: %+v", n, devs)
	}
}

// TestTLSAuthRegistryDown: a registry that does not answer is not a login
// failure (the engine answers 503), and is counted.
func TestTLSAuthRegistryDown(t *testing.T) {
	f := newTLSFixture(t)
	f.reg.down.Store(true)
	mark := f.lastAudit(t)
	_, err := f.auth.Authenticate(context.Background(), "alice", alicePassword, from1)
	if err == nil || errors.Is(err, openconnect.ErrLoginFailed) {
		t.Fatalf("with the registry down: %v, want an error that is no login failure", err)
	}
	if st := f.auth.Stats(); st.Errors != 1 || st.Failures != 0 {
		t.Errorf("stats %+v", st)
	}
	if es, _ := f.audit(t, mark); len(es) != 0 {
		t.Errorf("audited: %+v", es)
	}
	// A context that ends while the checks are taken.
	for i := 0; i < tlsChecks; i++ {
		f.auth.checks <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	f.reg.down.Store(false)
	if _, err := f.auth.Authenticate(ctx, "alice", alicePassword, from2); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, openconnect.ErrLoginFailed) {
		t.Errorf("waiting for a check past the deadline: %v", err)
	}
}

// FuzzParseTLSLogin: a login either parses into two valid names that
// spell it (USER, or USER/DEVICE), or is refused as invalid.
func FuzzParseTLSLogin(f *testing.F) {
	for _, s := range []string{"alice", "alice/laptop", "alice/", "/laptop", "a/b/c", "", "al ice", "alice/openconnect",
		strings.Repeat("a", 64) + "/" + strings.Repeat("b", 64), strings.Repeat("a", 65), "alice\x00", "ä/ö", "alice/laptop\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, login string) {
		user, device, err := ParseTLSLogin(login)
		if err != nil {
			if !errors.Is(err, registry.ErrInvalid) || user != "" || device != "" {
				t.Fatalf("%q: %q %q %v", login, user, device, err)
			}
			return
		}
		if _, err := registry.ParseName(user); err != nil {
			t.Fatalf("%q: user %q: %v", login, user, err)
		}
		if _, err := registry.ParseName(device); err != nil {
			t.Fatalf("%q: device %q: %v", login, device, err)
		}
		if login != user+"/"+device && !(login == user && device == DefaultTLSDevice) {
			t.Fatalf("%q parsed as %q / %q", login, user, device)
		}
	})
}

// TestTLSAuthDeviceLogin: an enrolled WireGuard device logs in by its key
// (enroll.DeviceLogin) as itself, with its addresses and rules, audited as
// tls.login "by its device key", making nothing; a proof is taken once; a
// proof for another gateway, from a wrong clock, of an unknown or revoked
// key, or malformed is refused and audited; and the password path is not
// open to a device login's name.
func TestTLSAuthDeviceLogin(t *testing.T) {
	f := newTLSFixture(t)
	ctx := context.Background()
	dk, _ := noise.GeneratePrivateKey()
	dev, err := f.reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "phone", PublicKey: registry.Key(dk.PublicKey())})
	if err != nil {
		t.Fatal(err)
	}
	mark := f.lastAudit(t)
	user, password, err := enroll.DeviceLogin(dk, gwKey.PublicKey(), *f.clock)
	if err != nil {
		t.Fatal(err)
	}
	l, err := f.auth.Authenticate(ctx, user, password, from1)
	if err != nil {
		t.Fatal(err)
	}
	if l.User != "alice" || l.Device != "phone" || l.DeviceID != dev.ID || len(l.Addresses) != 2 ||
		l.Addresses[0].Addr() != dev.Addresses[0] || l.Addresses[0].Bits() != 16 || len(l.Rules) == 0 {
		t.Fatalf("device login: %+v, device %+v", l, dev)
	}
	es, mark := f.audit(t, mark)
	if len(es) != 1 || es[0].Action != "tls.login" || es[0].Actor != "tls:alice" || es[0].Target != "alice/phone" ||
		es[0].Detail != "from 198.18.0.7:40000, by its device key" {
		t.Fatalf("audit of the device login: %+v", es)
	}
	if devs, _ := f.reg.ListDevices(ctx, registry.DeviceFilter{User: "alice"}); len(devs) != 1 {
		t.Errorf("a device login made a device: %+v", devs)
	}
	if st := f.auth.Stats(); st.Logins != 1 || st.DeviceLogins != 1 || st.DevicesCreated != 0 {
		t.Errorf("stats %+v", st)
	}
	if m, err := f.auth.Active(ctx); err != nil || !reflect.DeepEqual(m[dev.ID], l) {
		t.Errorf("Active: %+v %v, want the device's login %+v", m[dev.ID], err, l)
	}

	_, err = f.auth.Authenticate(ctx, user, password, from2)
	wantRefused(t, err, "the same proof again", "used already")
	*f.clock = f.clock.Add(time.Second)
	user2, password2, _ := enroll.DeviceLogin(dk, gwKey.PublicKey(), *f.clock)
	if l2, err := f.auth.Authenticate(ctx, user2, password2, from2); err != nil || l2.DeviceID != dev.ID {
		t.Errorf("a new proof: %+v %v", l2, err)
	}

	other, _ := noise.GeneratePrivateKey()
	u, p, _ := enroll.DeviceLogin(dk, other.PublicKey(), *f.clock)
	_, err = f.auth.Authenticate(ctx, u, p, from1)
	wantRefused(t, err, "a proof for another gateway", "does not hold")
	u, p, _ = enroll.DeviceLogin(dk, gwKey.PublicKey(), f.clock.Add(-enroll.MaxStatusSkew-time.Minute))
	_, err = f.auth.Authenticate(ctx, u, p, from1)
	wantRefused(t, err, "an old proof", "clock")
	u, p, _ = enroll.DeviceLogin(other, gwKey.PublicKey(), *f.clock)
	_, err = f.auth.Authenticate(ctx, u, p, from1)
	wantRefused(t, err, "an unknown key", "not enrolled here")
	_, err = f.auth.Authenticate(ctx, enroll.DeviceLoginPrefix+"x", "1.2", from1)
	wantRefused(t, err, "a malformed device login", "malformed device login")
	if err := f.reg.RevokeDevice(ctx, dev.ID); err != nil {
		t.Fatal(err)
	}
	*f.clock = f.clock.Add(time.Second)
	u, p, _ = enroll.DeviceLogin(dk, gwKey.PublicKey(), *f.clock)
	_, err = f.auth.Authenticate(ctx, u, p, from1)
	wantRefused(t, err, "a revoked device", "revoked")
	es, _ = f.audit(t, mark)
	var failed int
	for _, e := range es {
		if e.Action == "tls.login_failed" {
			failed++
			if strings.Contains(e.Detail, password) || strings.Contains(e.Detail, p) {
				t.Errorf("an audit entry holds a proof: %+v", e)
			}
		}
	}
	if failed != 6 {
		t.Errorf("%d refusals audited, want 6: %+v", failed, es)
	}

	// A gateway without its key refuses device logins.
	noKey := NewTLSAuth(f.reg, f.cfg, noise.PrivateKey{}, t.Logf)
	u, p, _ = enroll.DeviceLogin(dk, gwKey.PublicKey(), time.Now())
	_, err = noKey.Authenticate(ctx, u, p, from1)
	wantRefused(t, err, "no gateway key", "not enabled")
}

func TestTakeProofBounded(t *testing.T) {
	a := NewTLSAuth(nil, &Config{}, gwKey, nil)
	now := time.Unix(1_800_000_000, 0)
	p := enroll.DeviceLoginProof{Time: now.Unix(), MAC: make([]byte, 32)}
	for i := range maxProofs + 10 {
		p.MAC[0], p.MAC[1], p.MAC[2] = byte(i), byte(i>>8), byte(i>>16)
		if !a.takeProof(p, now) {
			t.Fatalf("proof %d refused", i)
		}
	}
	if n := len(a.proofs); n != maxProofs {
		t.Fatalf("%d proofs held, want at most %d", n, maxProofs)
	}
	if a.takeProof(p, now) {
		t.Fatal("the last proof was taken twice")
	}
}
