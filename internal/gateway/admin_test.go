package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/ocengine"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

const testPassword = "correct horse battery"

// adminEnv is an admin API on a real SQLite registry with admin "root".
type adminEnv struct {
	reg registry.Registry
	h   http.Handler
	mu  sync.Mutex
	now time.Time
}

func (e *adminEnv) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *adminEnv) advance(d time.Duration) {
	e.mu.Lock()
	e.now = e.now.Add(d)
	e.mu.Unlock()
}

// newAdminEnv makes the environment; each of opts changes the handler's
// options.
func newAdminEnv(t *testing.T, opts ...func(*AdminOptions)) *adminEnv {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if _, err := reg.AddAdmin(registry.WithActor(ctx, "cli:test"), "root", testPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.AddPool(ctx, netip.MustParsePrefix("100.64.0.0/24")); err != nil {
		t.Fatal(err)
	}
	e := &adminEnv{reg: reg, now: time.Now()}
	var health telemetry.Health
	health.Add(telemetry.Check{Name: "registry", Run: func() error { return nil }})
	o := AdminOptions{Registry: reg, Secure: true, Now: e.clock, Health: &health,
		InviteURL: func(secret string) (string, error) { return "https://198.18.0.1:8443/join#v1." + secret, nil },
		Peers:     func() ([]wgcfg.PeerState, error) { return nil, errors.New("not running") }}
	for _, f := range opts {
		f(&o)
	}
	e.h = AdminHandler(o)
	return e
}

type reqOpt func(*http.Request)

func bearer(tok string) reqOpt {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}

func session(cookie, csrf string) reqOpt {
	return func(r *http.Request) {
		r.AddCookie(&http.Cookie{Name: SessionCookie, Value: cookie})
		if csrf != "" {
			r.Header.Set(CSRFHeader, csrf)
		}
	}
}

func from(addr string) reqOpt { return func(r *http.Request) { r.RemoteAddr = addr } }

func (e *adminEnv) do(t *testing.T, method, path, body string, opts ...reqOpt) *httptest.ResponseRecorder {
	t.Helper()
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	} else {
		r = httptest.NewRequest(method, path, nil)
	}
	for _, o := range opts {
		o(r)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w
}

// want checks w's status and decodes its body into v (if not nil).
func want(t *testing.T, w *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	if v != nil {
		if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
			t.Fatalf("body %s: %v", w.Body, err)
		}
	}
}

// login logs root in and returns the cookie's value and the CSRF token.
func (e *adminEnv) login(t *testing.T) (cookie, csrf string) {
	t.Helper()
	w := e.do(t, "POST", AdminLoginPath, `{"name":"root","password":"`+testPassword+`"}`)
	var rep LoginReply
	want(t, w, http.StatusOK, &rep)
	for _, c := range w.Result().Cookies() {
		if c.Name == SessionCookie {
			if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode || c.MaxAge <= 0 || c.Path != "/" {
				t.Errorf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict, an expiry", c)
			}
			cookie = c.Value
		}
	}
	if cookie == "" || rep.CSRFToken == "" || rep.Admin != "root" || rep.ExpiresAt.IsZero() {
		t.Fatalf("login: cookie %q, reply %+v", cookie, rep)
	}
	return cookie, rep.CSRFToken
}

func (e *adminEnv) token(t *testing.T) string {
	t.Helper()
	_, secret, err := e.reg.CreateAdminToken(registry.WithActor(context.Background(), "cli:test"), "root")
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// auditCount is the number of audit entries.
func (e *adminEnv) auditCount(t *testing.T) int {
	t.Helper()
	es, err := e.reg.Audit(context.Background(), 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// concrete fills a route's path wildcards.
func concrete(path string) string {
	r := strings.NewReplacer("{id}", "1", "{name}", "alice", "{group}", "eng")
	return r.Replace(path)
}

// TestAdminUnauthenticated: every route but login (walked from the route
// table, so that a new one cannot be forgotten), unknown paths and wrong
// methods under the API's prefix answer 401 to a request without a valid
// session or token, and write nothing.
func TestAdminUnauthenticated(t *testing.T) {
	e := newAdminEnv(t)
	tok := e.token(t)
	e.reg.RevokeAdminToken(context.Background(), 1)
	forged := tok[:strings.IndexByte(tok, '.')+1] + strings.Repeat("A", 43)
	cases := map[string][]reqOpt{
		"nothing":         nil,
		"revoked token":   {bearer(tok)},
		"forged token":    {bearer(forged)},
		"empty bearer":    {bearer("")},
		"basic auth":      {func(r *http.Request) { r.SetBasicAuth("root", testPassword) }},
		"forged cookie":   {session(forged, "x")},
		"token as cookie": {session(tok, "")},
	}
	before := e.auditCount(t)
	var paths []adminRoute
	paths = append(paths, adminRoutes...)
	paths = append(paths, adminRoute{method: "GET", path: AdminPrefix + "/nonexistent"},
		adminRoute{method: "PUT", path: AdminPrefix + "/users"}, adminRoute{method: "GET", path: AdminLoginPath},
		adminRoute{method: "GET", path: AdminPrefix + "/"}, adminRoute{method: "GET", path: AdminPrefix})
	n := 0
	for _, rt := range paths {
		if rt.public {
			continue
		}
		for name, opts := range cases {
			w := e.do(t, rt.method, concrete(rt.path), `{"name":"x"}`, opts...)
			if w.Code != http.StatusUnauthorized {
				t.Errorf("%s %s with %s: status %d, want 401: %s", rt.method, rt.path, name, w.Code, w.Body)
			}
			n++
		}
	}
	if n < 20*len(cases) {
		t.Errorf("only %d requests: the route table looks short", n)
	}
	if e.auditCount(t) != before {
		t.Error("unauthenticated requests wrote to the audit log")
	}
	// Health answers without authentication, on the admin listener.
	if w := e.do(t, "GET", AdminHealthPath, ""); w.Code != http.StatusOK {
		t.Errorf("/healthz: %d %s", w.Code, w.Body)
	}
}

// TestAdminCSRF: a session cookie without the CSRF header (or with a
// wrong one, or another session's) is refused on every state-changing
// route and writes nothing; GETs need no header; with it, the change is made.
func TestAdminCSRF(t *testing.T) {
	e := newAdminEnv(t)
	cookie, csrf := e.login(t)
	_, otherCSRF := e.login(t)
	before := e.auditCount(t)
	for _, rt := range adminRoutes {
		if rt.public || !stateChanging(rt.method) {
			continue
		}
		for _, h := range []string{"", "wrong", otherCSRF, csrf + "x"} {
			w := e.do(t, rt.method, concrete(rt.path), `{"name":"bob"}`, session(cookie, h))
			if w.Code != http.StatusForbidden {
				t.Errorf("%s %s with CSRF %q: status %d, want 403: %s", rt.method, rt.path, h, w.Code, w.Body)
			}
		}
	}
	if e.auditCount(t) != before {
		t.Error("requests without the CSRF token wrote to the audit log")
	}
	want(t, e.do(t, "GET", AdminPrefix+"/users", "", session(cookie, "")), http.StatusOK, nil)
	var who LoginReply
	want(t, e.do(t, "GET", AdminPrefix+"/whoami", "", session(cookie, "")), http.StatusOK, &who)
	if who.CSRFToken != csrf || who.Via != "session" || who.Admin != "root" {
		t.Errorf("whoami %+v", who)
	}
	want(t, e.do(t, "POST", AdminPrefix+"/users", `{"name":"bob"}`, session(cookie, csrf)), http.StatusCreated, nil)
	// A token needs no CSRF header.
	want(t, e.do(t, "POST", AdminPrefix+"/users", `{"name":"carol"}`, bearer(e.token(t))), http.StatusCreated, nil)
}

// TestAdminLogoutAndRevoke: a logged-out session, a revoked token, and
// both of a removed admin stop working at the next request.
func TestAdminLogoutAndRevoke(t *testing.T) {
	e := newAdminEnv(t)
	cookie, csrf := e.login(t)
	w := e.do(t, "POST", AdminPrefix+"/logout", "", session(cookie, csrf))
	want(t, w, http.StatusOK, nil)
	if c := w.Result().Cookies(); len(c) != 1 || c[0].MaxAge >= 0 {
		t.Errorf("logout cookies %+v: want the cookie cleared", c)
	}
	want(t, e.do(t, "GET", AdminPrefix+"/whoami", "", session(cookie, "")), http.StatusUnauthorized, nil)
	want(t, e.do(t, "POST", AdminPrefix+"/users", `{"name":"bob"}`, session(cookie, csrf)), http.StatusUnauthorized, nil)
	es, err := e.reg.Audit(context.Background(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var logins []string
	for _, en := range es {
		if en.Action == "admin.login" || en.Action == "admin.logout" {
			if en.Actor != "admin:root" || en.Target != "root" {
				t.Errorf("audit %+v", en)
			}
			logins = append(logins, en.Action)
			if en.Action == "admin.login" && !strings.HasSuffix(en.Detail, "from 192.0.2.1") { // httptest's client
				t.Errorf("login audit %+v: want where from", en)
			}
		}
	}
	if strings.Join(logins, ",") != "admin.login,admin.logout" {
		t.Errorf("audit of login and logout: %v", logins)
	}

	tok := e.token(t)
	var made AdminTokenJSON
	want(t, e.do(t, "POST", AdminPrefix+"/tokens", "", bearer(tok)), http.StatusCreated, &made)
	if made.Token == "" || !strings.HasPrefix(made.Token, made.Prefix+".") {
		t.Fatalf("new token %+v", made)
	}
	var toks []AdminTokenJSON
	want(t, e.do(t, "GET", AdminPrefix+"/tokens", "", bearer(made.Token)), http.StatusOK, &toks)
	if len(toks) != 2 || toks[0].Token != "" || toks[1].Token != "" {
		t.Errorf("token list %+v: want two, without secrets", toks)
	}
	want(t, e.do(t, "DELETE", AdminPrefix+"/tokens/"+itoa(made.ID), "", bearer(tok)), http.StatusOK, nil)
	want(t, e.do(t, "GET", AdminPrefix+"/whoami", "", bearer(made.Token)), http.StatusUnauthorized, nil)
	want(t, e.do(t, "GET", AdminPrefix+"/whoami", "", bearer(tok)), http.StatusOK, nil)
	want(t, e.do(t, "POST", AdminPrefix+"/logout", "", bearer(tok)), http.StatusBadRequest, nil)

	cookie, _ = e.login(t)
	if err := e.reg.RemoveAdmin(context.Background(), "root"); err != nil {
		t.Fatal(err)
	}
	want(t, e.do(t, "GET", AdminPrefix+"/whoami", "", bearer(tok)), http.StatusUnauthorized, nil)
	want(t, e.do(t, "GET", AdminPrefix+"/whoami", "", session(cookie, "")), http.StatusUnauthorized, nil)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestAdminLoginRateLimit: wrong passwords from one source are cut off
// after a burst (429, even with the right password), another source is
// not, until the name's own limit; time refills both.
func TestAdminLoginRateLimit(t *testing.T) {
	e := newAdminEnv(t)
	bad := `{"name":"root","password":"wrong password"}`
	good := `{"name":"root","password":"` + testPassword + `"}`
	for i := 0; i < loginSourceBurst; i++ {
		want(t, e.do(t, "POST", AdminLoginPath, bad, from("198.18.0.10:1000")), http.StatusUnauthorized, nil)
	}
	w := e.do(t, "POST", AdminLoginPath, good, from("198.18.0.10:1000"))
	want(t, w, http.StatusTooManyRequests, nil)
	if w.Header().Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	want(t, e.do(t, "POST", AdminLoginPath, good, from("198.18.0.11:1000")), http.StatusOK, nil)
	// The name's own limit, whatever the source: its burst is spent
	// by the 11 above and these.
	for i := 0; i < loginNameBurst-loginSourceBurst-1; i++ {
		want(t, e.do(t, "POST", AdminLoginPath, bad, from("198.18.1."+strconv.Itoa(i)+":1000")), http.StatusUnauthorized, nil)
	}
	want(t, e.do(t, "POST", AdminLoginPath, good, from("198.18.0.12:1000")), http.StatusTooManyRequests, nil)
	want(t, e.do(t, "POST", AdminLoginPath, `{"name":"other","password":"x"}`, from("198.18.0.12:1000")), http.StatusUnauthorized, nil)
	e.advance(time.Minute)
	want(t, e.do(t, "POST", AdminLoginPath, good, from("198.18.0.10:1000")), http.StatusOK, nil)
}

// TestAdminActions: every action through the API lands in the audit log
// with actor admin:root; audit filters by user and by device.
func TestAdminActions(t *testing.T) {
	e := newAdminEnv(t)
	tok := bearer(e.token(t))
	start := e.auditCount(t)
	var u UserJSON
	want(t, e.do(t, "POST", AdminPrefix+"/users", `{"name":"alice","groups":["eng"]}`, tok), http.StatusCreated, &u)
	if u.Name != "alice" || len(u.Groups) != 1 {
		t.Errorf("user %+v", u)
	}
	want(t, e.do(t, "POST", AdminPrefix+"/users", `{"name":"bob"}`, tok), http.StatusCreated, nil)
	want(t, e.do(t, "POST", AdminPrefix+"/users", `{"name":"bob"}`, tok), http.StatusConflict, nil)
	want(t, e.do(t, "POST", AdminPrefix+"/users/bob/groups", `{"group":"ops"}`, tok), http.StatusOK, nil)
	want(t, e.do(t, "POST", AdminPrefix+"/users/nobody/groups", `{"group":"ghosts"}`, tok), http.StatusNotFound, nil)
	want(t, e.do(t, "DELETE", AdminPrefix+"/users/bob/groups/ops", "", tok), http.StatusOK, nil)
	var users []UserJSON
	want(t, e.do(t, "GET", AdminPrefix+"/users", "", tok), http.StatusOK, &users)
	if len(users) != 2 || users[0].Name != "alice" || users[0].Groups[0] != "eng" || len(users[1].Groups) != 0 {
		t.Errorf("users %+v", users)
	}
	var inv InviteJSON
	want(t, e.do(t, "POST", AdminPrefix+"/invites", `{"user":"alice","ttl":"1h","uses":2}`, tok), http.StatusCreated, &inv)
	if !strings.Contains(inv.URL, inv.Prefix+".") || inv.UsesLeft != 2 {
		t.Errorf("invite %+v", inv)
	}
	var invs []InviteJSON
	want(t, e.do(t, "GET", AdminPrefix+"/invites", "", tok), http.StatusOK, &invs)
	if len(invs) != 1 || invs[0].URL != "" {
		t.Errorf("pending invites %+v", invs)
	}
	want(t, e.do(t, "DELETE", AdminPrefix+"/invites/"+itoa(inv.ID), "", tok), http.StatusOK, nil)
	want(t, e.do(t, "DELETE", AdminPrefix+"/invites/"+itoa(inv.ID), "", tok), http.StatusNotFound, nil)
	var rule RuleJSON
	want(t, e.do(t, "POST", AdminPrefix+"/rules", `{"group":"eng","rule":"198.18.2.0/24 tcp/443"}`, tok), http.StatusCreated, &rule)
	if rule.Rule != "198.18.2.0/24 tcp/443" || rule.Group != "eng" {
		t.Errorf("rule %+v", rule)
	}
	var groups []GroupJSON
	want(t, e.do(t, "GET", AdminPrefix+"/groups", "", tok), http.StatusOK, &groups)
	if len(groups) != 2 || groups[0].Name != "eng" || len(groups[0].Members) != 1 || len(groups[0].Rules) != 1 {
		t.Errorf("groups %+v", groups)
	}
	want(t, e.do(t, "DELETE", AdminPrefix+"/rules/"+itoa(rule.ID), "", tok), http.StatusOK, nil)
	var key noise.PublicKey
	key[0] = 7
	d, err := e.reg.CreateDevice(context.Background(), "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key(key)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.reg.CreateDevice(context.Background(), "alice", registry.DeviceSpec{Name: "openconnect", PublicKey: registry.Key{9},
		Protocol: registry.ProtocolOpenConnect})
	if err != nil {
		t.Fatal(err)
	}
	var devs DevicesReply
	want(t, e.do(t, "GET", AdminPrefix+"/devices", "", tok), http.StatusOK, &devs)
	if len(devs.Devices) != 2 || devs.Devices[0].Name != "laptop" || devs.Live || len(devs.Devices[0].Addresses) != 1 ||
		devs.Devices[0].Protocol != "wireguard" || devs.Devices[1].Name != "openconnect" || devs.Devices[1].Protocol != "openconnect" {
		t.Errorf("devices %+v", devs)
	}
	want(t, e.do(t, "POST", AdminPrefix+"/devices/"+itoa(d.ID)+"/revoke", "", tok), http.StatusOK, nil)
	want(t, e.do(t, "POST", AdminPrefix+"/devices/"+itoa(d.ID)+"/revoke", "", tok), http.StatusNotFound, nil)
	want(t, e.do(t, "DELETE", AdminPrefix+"/users/bob", "", tok), http.StatusOK, nil)

	var all AuditReply
	want(t, e.do(t, "GET", AdminPrefix+"/audit?limit=1000", "", tok), http.StatusOK, &all)
	var got []string
	for _, en := range all.Entries[start:] {
		if en.Action == "device.create" { // made through the registry, not the API
			continue
		}
		if en.Actor != "admin:root" {
			t.Errorf("audit entry %+v: actor is not admin:root", en)
		}
		got = append(got, en.Action+" "+en.Target)
	}
	wantActions := "user.add alice,group.add eng,group.member.add eng/alice,user.add bob,group.add ops,group.member.add ops/bob," +
		"group.member.remove ops/bob,invite.create alice,invite.revoke " + inv.Prefix + ",rule.add eng,rule.remove eng," +
		"device.revoke alice/laptop,user.remove bob"
	if s := strings.Join(got, ","); s != wantActions {
		t.Errorf("audit:\n got %s\nwant %s", s, wantActions)
	}
	var byDev AuditReply
	want(t, e.do(t, "GET", AdminPrefix+"/audit?device=alice/laptop", "", tok), http.StatusOK, &byDev)
	if len(byDev.Entries) != 2 || byDev.Entries[0].Action != "device.create" || byDev.Entries[1].Action != "device.revoke" {
		t.Errorf("audit of alice/laptop: %+v", byDev.Entries)
	}
	var byUser AuditReply
	want(t, e.do(t, "GET", AdminPrefix+"/audit?user=bob&limit=2", "", tok), http.StatusOK, &byUser)
	if len(byUser.Entries) != 2 || byUser.Entries[0].Target != "bob" || byUser.Next != byUser.Entries[1].ID {
		t.Errorf("audit of bob, 2: %+v", byUser)
	}
	want(t, e.do(t, "GET", AdminPrefix+"/audit?user=bob&after="+itoa(byUser.Next), "", tok), http.StatusOK, &byUser)
	if len(byUser.Entries) != 2 || byUser.Next != 0 { // group.member.remove ops/bob, user.remove bob
		t.Errorf("audit of bob, page 2: %+v", byUser)
	}
	for _, q := range []string{"limit=0", "limit=5000", "after=-1", "user=<b>", "device=alice"} {
		want(t, e.do(t, "GET", AdminPrefix+"/audit?"+q, "", tok), http.StatusBadRequest, nil)
	}
}

// TestAdminRenameDevice: POST /devices/{id}/rename renames an active
// device (200, the device with its live figures), audited as admin:root;
// a bad name or body (400), an unknown or revoked device (404), a name the
// user's other device has (409) write nothing.
func TestAdminRenameDevice(t *testing.T) {
	e := newAdminEnv(t)
	tok := bearer(e.token(t))
	ctx := context.Background()
	for _, u := range []string{"alice", "desk"} { // a user named like the new name: the audit filter must not mix them
		if _, err := e.reg.AddUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	dev := func(user, name string, k byte) registry.Device {
		t.Helper()
		var key noise.PublicKey
		key[0] = k
		d, err := e.reg.CreateDevice(ctx, user, registry.DeviceSpec{Name: name, PublicKey: registry.Key(key)})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	laptop, _, gone := dev("alice", "laptop", 1), dev("alice", "phone", 2), dev("alice", "tablet", 3)
	if err := e.reg.RevokeDevice(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	path := func(id int64) string { return AdminPrefix + "/devices/" + itoa(id) + "/rename" }
	before := e.auditCount(t)
	for _, c := range []struct {
		path, body string
		status     int
	}{
		{path(laptop.ID), `{"name":"phone"}`, http.StatusConflict},
		{path(laptop.ID), `{"name":"lap top"}`, http.StatusBadRequest},
		{path(laptop.ID), `{"name":"<script>"}`, http.StatusBadRequest},
		{path(laptop.ID), `{"name":""}`, http.StatusBadRequest},
		{path(laptop.ID), `{}`, http.StatusBadRequest},
		{path(laptop.ID), `{"name":"desk","user":"bob"}`, http.StatusBadRequest},
		{path(laptop.ID), `{"name":"desk"} {"name":"x"}`, http.StatusBadRequest},
		{path(laptop.ID), `{"name":"` + strings.Repeat("a", 65) + `"}`, http.StatusBadRequest},
		{path(999), `{"name":"desk"}`, http.StatusNotFound},
		{path(gone.ID), `{"name":"tablet2"}`, http.StatusNotFound},
		{AdminPrefix + "/devices/abc/rename", `{"name":"desk"}`, http.StatusBadRequest},
		{AdminPrefix + "/devices/0/rename", `{"name":"desk"}`, http.StatusBadRequest},
	} {
		w := e.do(t, "POST", c.path, c.body, tok)
		if w.Code != c.status {
			t.Errorf("POST %s %.40s: status %d, want %d: %s", c.path, c.body, w.Code, c.status, w.Body)
		}
		if strings.ContainsAny(w.Body.String(), "<>") {
			t.Errorf("POST %s: markup in the answer is not escaped: %s", c.path, w.Body)
		}
	}
	if n := e.auditCount(t); n != before {
		t.Errorf("refused renames wrote %d audit entries", n-before)
	}

	var got DeviceJSON
	want(t, e.do(t, "POST", path(laptop.ID), `{"name":"desk"}`, tok), http.StatusOK, &got)
	if got.ID != laptop.ID || got.Name != "desk" || got.User != "alice" || len(got.Addresses) != 1 || got.Addresses[0] != laptop.Addresses[0] {
		t.Errorf("renamed device %+v, was %+v", got, laptop)
	}
	if d, err := e.reg.Device(ctx, laptop.ID); err != nil || d.Name != "desk" {
		t.Errorf("the registry's device: %+v %v", d, err)
	}
	var byDev AuditReply
	want(t, e.do(t, "GET", AdminPrefix+"/audit?device=alice/desk", "", tok), http.StatusOK, &byDev)
	if len(byDev.Entries) != 1 || byDev.Entries[0].Action != "device.rename" || byDev.Entries[0].Actor != "admin:root" || byDev.Entries[0].Detail != "laptop" {
		t.Errorf("audit of alice/desk: %+v", byDev.Entries)
	}
	// A TLS login of alice/desk is alice's too, not the user desk's.
	if err := e.reg.NoteLogin(registry.WithActor(ctx, "tls:alice"), "tls.login", "alice/desk", "from 198.18.0.7:40000"); err != nil {
		t.Fatal(err)
	}
	var byUser AuditReply
	want(t, e.do(t, "GET", AdminPrefix+"/audit?user=desk", "", tok), http.StatusOK, &byUser)
	if len(byUser.Entries) != 1 || byUser.Entries[0].Action != "user.add" {
		t.Errorf("audit of user desk: %+v: want only their user.add, not alice's device", byUser.Entries)
	}
	want(t, e.do(t, "GET", AdminPrefix+"/audit?user=alice", "", tok), http.StatusOK, &byUser)
	if n := len(byUser.Entries); n == 0 || byUser.Entries[n-1].Action != "tls.login" {
		t.Errorf("audit of user alice: %+v: want her TLS login last", byUser.Entries)
	}
	// The old name is free again, for the page's next rename.
	want(t, e.do(t, "POST", path(laptop.ID), `{"name":"laptop"}`, tok), http.StatusOK, &got)
	if got.Name != "laptop" {
		t.Errorf("renamed back: %+v", got)
	}
}

// TestAdminBadBodies: too big (413), malformed, unknown fields, trailing
// data, wrong types, bad names and rules (400), not JSON (415): nothing
// written, and a name with markup comes back escaped.
func TestAdminBadBodies(t *testing.T) {
	e := newAdminEnv(t)
	tok := bearer(e.token(t))
	want(t, e.do(t, "POST", AdminPrefix+"/users", `{"name":"alice"}`, tok), http.StatusCreated, nil)
	before := e.auditCount(t)
	huge := `{"name":"` + strings.Repeat("a", maxAdminBody) + `"}`
	cases := []struct {
		path, body string
		status     int
	}{
		{"/users", huge, 413},
		{"/users", `{"name":`, 400},
		{"/users", `{"name":"bob","admin":true}`, 400},
		{"/users", `{"name":"bob"} {"name":"carol"}`, 400},
		{"/users", `{"name":"bob"} x`, 400},
		{"/users", `{"name":42}`, 400},
		{"/users", `{"name":"<script>alert(1)</script>"}`, 400},
		{"/users", `{"name":"bob","groups":["ok","<img src=x>"]}`, 400},
		{"/users", `[]`, 400},
		{"/users", `null`, 400},
		{"/users/alice/groups", `{"group":"a\"b"}`, 400},
		{"/invites", `{"user":"alice","ttl":"forever"}`, 400},
		{"/invites", `{"user":"alice","uses":-1}`, 400},
		{"/invites", `{"user":"alice","ttl":"-1h"}`, 400},
		{"/rules", `{"group":"eng","rule":"not a rule"}`, 400},
		{"/rules", `{"group":"eng","rule":"198.18.2.0/24 tcp/99999"}`, 400},
		{"/rules", `{"group":"eng"}`, 400},
	}
	for _, c := range cases {
		w := e.do(t, "POST", AdminPrefix+c.path, c.body, tok)
		if w.Code != c.status {
			t.Errorf("POST %s %.60s: status %d, want %d: %s", c.path, c.body, w.Code, c.status, w.Body)
		}
		var msg apiError
		if err := json.Unmarshal(w.Body.Bytes(), &msg); err != nil || msg.Error == "" {
			t.Errorf("POST %s %.60s: body %s: want a JSON error", c.path, c.body, w.Body)
		}
		if strings.ContainsAny(w.Body.String(), "<>") {
			t.Errorf("POST %s: markup in the answer is not escaped: %s", c.path, w.Body)
		}
	}
	r := httptest.NewRequest("POST", AdminPrefix+"/users", strings.NewReader(`{"name":"bob"}`))
	r.Header.Set("Content-Type", "text/plain")
	tok(r)
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	if w.Code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: %d", w.Code)
	}
	for _, p := range []string{"/users/%3Cb%3E", "/rules/abc", "/invites/0", "/tokens/-1"} {
		if w := e.do(t, "DELETE", AdminPrefix+p, "", tok); w.Code != http.StatusBadRequest {
			t.Errorf("DELETE %s: %d %s", p, w.Code, w.Body)
		}
	}
	if after := e.auditCount(t); after != before {
		t.Errorf("bad requests wrote %d audit entries", after-before)
	}
	// Login bodies too.
	for _, b := range []string{`{"name":"root"}`, `{"name":"root","password":"x","extra":1}`, `{`} {
		want(t, e.do(t, "POST", AdminLoginPath, b), http.StatusBadRequest, nil)
	}
	want(t, e.do(t, "POST", AdminLoginPath, huge), http.StatusRequestEntityTooLarge, nil)
}

// The fuzz targets: no request body parser panics, and what one accepts
// is valid (names pass ParseName, numbers are in range).
func FuzzParseLogin(f *testing.F) {
	f.Add([]byte(`{"name":"root","password":"correct horse battery"}`))
	f.Add([]byte(`{"name":"root","password":"x","x":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseLogin(b)
		if err == nil && (req.Name == "" || req.Password == "" || len(req.Password) > registry.MaxPasswordLen) {
			t.Fatalf("accepted %+v", req)
		}
	})
}

func FuzzParseUser(f *testing.F) {
	f.Add([]byte(`{"name":"alice","groups":["eng"]}`))
	f.Add([]byte(`{"name":"<script>"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseUser(b)
		if err != nil {
			return
		}
		if _, err := registry.ParseName(req.Name); err != nil {
			t.Fatalf("accepted name %q", req.Name)
		}
		for _, g := range req.Groups {
			if _, err := registry.ParseName(g); err != nil {
				t.Fatalf("accepted group %q", g)
			}
		}
	})
}

func FuzzParseRename(f *testing.F) {
	f.Add([]byte(`{"name":"laptop"}`))
	f.Add([]byte(`{"name":"lap top"}`))
	f.Add([]byte(`{"name":"a","name":"<b>"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseRename(b)
		if err != nil {
			return
		}
		if _, err := registry.ParseName(req.Name); err != nil {
			t.Fatalf("accepted name %q", req.Name)
		}
	})
}

func FuzzParseMember(f *testing.F) {
	f.Add([]byte(`{"group":"eng"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseMember(b)
		if err != nil {
			return
		}
		if _, err := registry.ParseName(req.Group); err != nil {
			t.Fatalf("accepted group %q", req.Group)
		}
	})
}

func FuzzParseInvite(f *testing.F) {
	f.Add([]byte(`{"user":"alice","ttl":"24h","uses":1}`))
	f.Add([]byte(`{"user":"alice","ttl":"-5m"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		inv, err := parseInvite(b)
		if err != nil {
			return
		}
		if _, err := registry.ParseName(inv.user); err != nil || inv.ttl <= 0 || inv.uses < 1 || inv.uses > 10000 {
			t.Fatalf("accepted %+v", inv)
		}
	})
}

func FuzzParseRuleRequest(f *testing.F) {
	f.Add([]byte(`{"group":"eng","rule":"198.18.2.0/24 tcp/443"}`))
	f.Add([]byte(`{"group":"eng","rule":"2001:db8::/32 icmp"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, r, err := parseRuleRequest(b)
		if err != nil {
			return
		}
		if _, err := registry.ParseName(g); err != nil || !r.Dest.IsValid() || r.PortFrom > r.PortTo {
			t.Fatalf("accepted %q %+v", g, r)
		}
	})
}

// TestAdminConfig: the admin listener's settings are checked (plain HTTP
// on loopback only, a port, not the enrollment API's), and a self-signed
// certificate names the admin address too.
func TestAdminConfig(t *testing.T) {
	for _, c := range []struct {
		admin string
		plain bool
		ok    bool
	}{
		{"", false, true}, {"127.0.0.1:8444", false, true}, {"127.0.0.1:8444", true, true}, {"[::1]:8444", true, true},
		{"0.0.0.0:8444", false, true}, {"198.18.0.1:8444", false, true},
		{"198.18.0.1:8444", true, false}, {"0.0.0.0:8444", true, false}, {"", true, false},
		{"127.0.0.1:0", false, false}, {"198.18.0.1:8443", false, false},
	} {
		o := initOptions()
		if c.admin != "" {
			o.Admin = netip.MustParseAddrPort(c.admin)
		}
		o.Site.MTU, o.AdminPlain = 1420, c.plain
		if err := o.Check(); (err == nil) != c.ok {
			t.Errorf("admin %q plain %v: Check = %v", c.admin, c.plain, err)
		}
	}
}

// TestAdminHTTPS: the admin API over HTTPS with the certificate Init
// made (which names the admin address), as curl --cacert cert.pem uses it:
// log in with a cookie jar, change something with the CSRF header, log out.
func TestAdminHTTPS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gw")
	o := initOptions()
	o.Admin = netip.MustParseAddrPort("127.0.0.1:8444")
	ctx := context.Background()
	if _, err := Init(ctx, dir, o); err != nil {
		t.Fatal(err)
	}
	cfg, reg, err := Load(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if _, err := reg.AddAdmin(ctx, "root", testPassword); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := Pin(dir)
	srv := httptest.NewUnstartedServer(AdminHandler(AdminOptions{Registry: reg, Secure: true,
		InviteURL: func(s string) (string, error) { return InviteURL(cfg, s, pin) }}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()
	pemBytes, _ := os.ReadFile(filepath.Join(dir, "cert.pem"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	base := srv.URL // https://127.0.0.1:PORT: verified against the certificate's 127.0.0.1
	call := func(method, path, body, csrf string, status int, v any) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if csrf != "" {
			req.Header.Set(CSRFHeader, csrf)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != status {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, status, b)
		}
		if v != nil {
			json.Unmarshal(b, v)
		}
	}
	var rep LoginReply
	call("POST", AdminLoginPath, `{"name":"root","password":"`+testPassword+`"}`, "", 200, &rep)
	call("POST", AdminPrefix+"/users", `{"name":"alice"}`, "", 403, nil)
	call("POST", AdminPrefix+"/users", `{"name":"alice"}`, rep.CSRFToken, 201, nil)
	var inv InviteJSON
	call("POST", AdminPrefix+"/invites", `{"user":"alice"}`, rep.CSRFToken, 201, &inv)
	if parsed, err := enroll.ParseInvite(inv.URL); err != nil || parsed.Pin != pin {
		t.Errorf("invite URL %q: %v", inv.URL, err)
	}
	call("POST", AdminPrefix+"/logout", "", rep.CSRFToken, 200, nil)
	call("GET", AdminPrefix+"/users", "", "", 401, nil)
}

// fakePeers is a uapi.Handler whose Get reports peers.
type fakePeers struct{ peers []wgcfg.PeerState }

func (f *fakePeers) Get() (*wgcfg.DeviceState, error) {
	return &wgcfg.DeviceState{Peers: f.peers}, nil
}
func (f *fakePeers) Set(*wgcfg.DeviceConfig) error { return errors.New("read only") }

// TestServeAdmin: what Run serves on the admin listener, without the
// interface: HTTPS (with the state folder's certificate) or plain HTTP,
// /healthz without authentication, the API behind it, and the devices'
// live figures read from the interface's handler.
func TestServeAdmin(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gw")
	ctx := context.Background()
	if _, err := Init(ctx, dir, func() InitOptions { o := initOptions(); o.Admin = DefaultAdmin; return o }()); err != nil {
		t.Fatal(err)
	}
	cfg, reg, err := Load(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	tok := func() string {
		if _, err := reg.AddAdmin(ctx, "root", testPassword); err != nil {
			t.Fatal(err)
		}
		_, s, err := reg.CreateAdminToken(ctx, "root")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	if _, err := reg.AddUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	var key noise.PublicKey
	key[0] = 9
	if _, err := reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key(key)}); err != nil {
		t.Fatal(err)
	}
	peers := &fakePeers{peers: []wgcfg.PeerState{{PublicKey: key, RxBytes: 1234, TxBytes: 99, LastHandshake: time.Now().Add(-time.Minute),
		Endpoint: netip.MustParseAddrPort("198.18.0.7:40000")}}}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	var health telemetry.Health
	health.Add(telemetry.Check{Name: "engine", Run: func() error { return nil }})
	pemBytes, _ := os.ReadFile(filepath.Join(dir, "cert.pem"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	for _, plain := range []bool{false, true} {
		cfg.Admin, cfg.AdminPlain = netip.MustParseAddrPort("127.0.0.1:0"), plain
		srv, addr, err := serveAdmin(dir, cfg, reg, cert, &health, peers, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		base := "https://" + addr.String()
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
		if plain {
			base, client = "http://"+addr.String(), &http.Client{}
		}
		get := func(path, token string) (int, []byte) {
			req, _ := http.NewRequest("GET", base+path, nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("plain %v: GET %s: %v", plain, path, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, b
		}
		if code, b := get(AdminHealthPath, ""); code != 200 || !strings.Contains(string(b), `"engine":"ok"`) {
			t.Errorf("plain %v: /healthz %d %s", plain, code, b)
		}
		if code, _ := get(AdminPrefix+"/devices", ""); code != http.StatusUnauthorized {
			t.Errorf("plain %v: devices without a token: %d", plain, code)
		}
		code, b := get(AdminPrefix+"/devices", tok)
		var devs DevicesReply
		json.Unmarshal(b, &devs)
		if code != 200 || !devs.Live || len(devs.Devices) != 1 {
			t.Fatalf("plain %v: devices %d %s", plain, code, b)
		}
		if d := devs.Devices[0]; d.RxBytes != 1234 || d.TxBytes != 99 || !d.Online || d.Endpoint != "198.18.0.7:40000" {
			t.Errorf("plain %v: live figures %+v", plain, d)
		}
		resp, err := client.Post(base+AdminLoginPath, "application/json", strings.NewReader(`{"name":"root","password":"`+testPassword+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if cs := resp.Cookies(); len(cs) != 1 || cs[0].Secure == plain {
			t.Errorf("plain %v: cookie %+v: Secure only over HTTPS", plain, cs)
		}
	}
}

// keysOf is the sorted keys of a JSON object.
func keysOf(m map[string]any) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return strings.Join(ks, ",")
}

// TestAdminOverviewHistory: GET /overview and /history answer from the
// gateway's History with exactly the fields the page reads: before any
// read (live false, the registry's device count), after two (the totals,
// the rates), a device's points, an empty list for a device without
// samples, 400 for a bad device ID; the other gateways are the registry's
// without this one.
func TestAdminOverviewHistory(t *testing.T) {
	x := newHistoryFixture()
	var byKey sync.Map // registry.Key -> device ID
	x.h.o.DeviceID = func(k noise.PublicKey) (int64, bool) {
		id, ok := byKey.Load(registry.Key(k))
		if !ok {
			return 0, false
		}
		return id.(int64), true
	}
	e := newAdminEnv(t, func(o *AdminOptions) { o.Gateway, o.History = "gw1", x.h })
	tok := bearer(e.token(t))
	ctx := context.Background()
	for i, name := range []string{"gw1", "gw2"} {
		if _, err := e.reg.AddGateway(ctx, registry.Gateway{Name: name, PublicKey: registry.Key{byte(i + 1)}, Endpoint: "198.18.0." + itoa(int64(i+1)) + ":51820",
			API: "https://198.18.0." + itoa(int64(i+1)) + ":8443", Pin: "pin-sha256:x", TLS: []string{"", "https://198.18.0.2:443"}[i]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.reg.AddUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for n, name := range []string{"laptop", "phone"} {
		d, err := e.reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: name, PublicKey: registry.Key(peerKey(n + 1))})
		if err != nil {
			t.Fatal(err)
		}
		byKey.Store(d.PublicKey, d.ID)
		ids = append(ids, d.ID)
	}

	get := func(path string, v any) map[string]any {
		t.Helper()
		w := e.do(t, "GET", AdminPrefix+path, "", tok)
		want(t, w, http.StatusOK, v)
		var m map[string]any
		json.Unmarshal(w.Body.Bytes(), &m)
		return m
	}
	var ov OverviewReply
	m := get("/overview", &ov)
	if ov.Live || ov.DevicesTotal != 2 || !ov.SampledAt.IsZero() || ov.Gateway != "gw1" || len(ov.OtherGateways) != 1 || ov.Drops == nil {
		t.Errorf("overview before any read: %+v", ov)
	}
	if k := keysOf(m); k != "api_url,devices_online,devices_total,drops,endpoint,engine_restarts,gateway,live,other_gateways,rx_bytes,tx_bytes" {
		t.Errorf("overview fields before any read: %s", k)
	}
	if ov.Endpoint != "198.18.0.1:51820" || ov.APIURL != "https://198.18.0.1:8443" || ov.TLSURL != "" {
		t.Errorf("this gateway's endpoint %q and API %q, want gw1's from the registry", ov.Endpoint, ov.APIURL)
	}
	if g := ov.OtherGateways[0]; g.Name != "gw2" || g.Endpoint != "198.18.0.2:51820" || g.APIURL != "https://198.18.0.2:8443" || g.Pin != "pin-sha256:x" || g.TLSURL != "https://198.18.0.2:443" || g.CreatedAt.IsZero() {
		t.Errorf("the other gateway: %+v", g)
	}
	if k := keysOf(m["other_gateways"].([]any)[0].(map[string]any)); k != "api_url,created_at,endpoint,name,pin,public_key,tls_url" {
		t.Errorf("a gateway's fields: %s", k)
	}
	if m := get("/history", nil); m["interval_s"] != 1.0 || len(m["points"].([]any)) != 0 {
		t.Errorf("history before any read: %v", m)
	}

	x.src.set(1, 1000, 2000, x.now)
	x.src.set(2, 0, 0, time.Time{})
	x.src.counter("drop_acl", 2)
	x.src.counter("engine_restarts", 3)
	x.step(0)
	x.src.set(1, 6000, 2500, x.now)
	x.src.counter("drop_acl", 12)
	x.step(time.Second)
	if err := e.reg.SetGatewayTLS(ctx, "gw1", "https://198.18.0.1:443"); err != nil {
		t.Fatal(err)
	}
	m = get("/overview", &ov)
	if ov.TLSURL != "https://198.18.0.1:443" {
		t.Errorf("this gateway's OpenConnect listener %q, want gw1's from the registry", ov.TLSURL)
	}
	if !ov.Live || ov.DevicesTotal != 2 || ov.DevicesOnline != 1 || ov.RxBytes != 6000 || ov.TxBytes != 2500 || ov.Drops["drop_acl"] != 12 ||
		ov.EngineRestarts != 3 || !ov.SampledAt.Equal(x.now) {
		t.Errorf("overview: %+v", ov)
	}
	if k := keysOf(m); k != "api_url,devices_online,devices_total,drops,endpoint,engine_restarts,gateway,live,other_gateways,rx_bytes,sampled_at,tls_url,tx_bytes" {
		t.Errorf("overview fields: %s", k)
	}
	var hist HistoryReply[TotalPointJSON]
	m = get("/history", &hist)
	if hist.IntervalS != 1 || len(hist.Points) != 1 {
		t.Fatalf("history %+v", hist)
	}
	if p := hist.Points[0]; !p.T.Equal(x.now) || p.RxBps != 5000 || p.TxBps != 500 || p.Online != 1 || p.Drops["drop_acl"] != 10 || len(p.Drops) != 1 {
		t.Errorf("history point %+v", p)
	}
	if k := keysOf(m); k != "interval_s,points" {
		t.Errorf("history fields: %s", k)
	}
	if k := keysOf(m["points"].([]any)[0].(map[string]any)); k != "drops,online,rx_bps,t,tx_bps" {
		t.Errorf("history point fields: %s", k)
	}
	var dh HistoryReply[DevicePointJSON]
	m = get("/history?device="+itoa(ids[0]), &dh)
	if len(dh.Points) != 1 || dh.Points[0].RxBps != 5000 || dh.Points[0].TxBps != 500 || !dh.Points[0].T.Equal(x.now) {
		t.Errorf("device history %+v", dh)
	}
	if k := keysOf(m["points"].([]any)[0].(map[string]any)); k != "rx_bps,t,tx_bps" {
		t.Errorf("device history point fields: %s", k)
	}
	if m := get("/history?device=999", nil); len(m["points"].([]any)) != 0 {
		t.Errorf("a device without samples: %v", m)
	}
	for _, q := range []string{"abc", "0", "-1", "", "1&device=2", "1.5"} {
		want(t, e.do(t, "GET", AdminPrefix+"/history?device="+q, "", tok), http.StatusBadRequest, nil)
	}

	// The engine stops answering: not live, the last figures with their time.
	at := x.now
	x.src.mu.Lock()
	x.src.err = errors.New("engine restarting")
	x.src.mu.Unlock()
	x.step(time.Second)
	get("/overview", &ov)
	if ov.Live || !ov.SampledAt.Equal(at) || ov.RxBytes != 6000 || ov.DevicesTotal != 2 {
		t.Errorf("overview after a failed read: %+v", ov)
	}

	// A gateway without a History: no figures, an empty history.
	plain := newAdminEnv(t)
	ptok := bearer(plain.token(t))
	w := plain.do(t, "GET", AdminPrefix+"/overview", "", ptok)
	want(t, w, http.StatusOK, &ov)
	if ov.Live || ov.DevicesTotal != 0 || len(ov.OtherGateways) != 0 {
		t.Errorf("overview without a History: %+v", ov)
	}
	w = plain.do(t, "GET", AdminPrefix+"/history", "", ptok)
	want(t, w, http.StatusOK, nil)
	if got := strings.TrimSpace(w.Body.String()); got != `{"interval_s":5,"points":[]}` {
		t.Errorf("history without a History: %s", got)
	}
}

// TestAdminDevicesTLSSessions: a device with a session on the TLS listener
// (an openconnect device, or a WireGuard device on its fallback) is
// online with the session's path and figures; a session without a path
// (its client away) or of a revoked device changes nothing.
func TestAdminDevicesTLSSessions(t *testing.T) {
	var sessions []ocengine.SessionInfo
	e := newAdminEnv(t, func(o *AdminOptions) {
		o.TLSSessions = func() []ocengine.SessionInfo { return sessions }
	})
	tok := bearer(e.token(t))
	ctx := context.Background()
	if _, err := e.reg.AddUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	wgDev, err := e.reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key{7}})
	if err != nil {
		t.Fatal(err)
	}
	ocDev, err := e.reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "openconnect", PublicKey: registry.Key{9},
		Protocol: registry.ProtocolOpenConnect})
	if err != nil {
		t.Fatal(err)
	}
	started := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	sessions = []ocengine.SessionInfo{
		{DeviceID: wgDev.ID, Path: "cstp", Started: started, RxBytes: 1000, TxBytes: 2000},
		{DeviceID: ocDev.ID, Path: ""},
	}
	var devs DevicesReply
	want(t, e.do(t, "GET", AdminPrefix+"/devices", "", tok), http.StatusOK, &devs)
	byName := map[string]DeviceJSON{}
	for _, d := range devs.Devices {
		byName[d.Name] = d
	}
	if d := byName["laptop"]; !d.Online || d.Path != "cstp" || d.RxBytes != 1000 || d.TxBytes != 2000 || !d.LastHandshake.Equal(started) || d.Protocol != "wireguard" {
		t.Errorf("the WireGuard device on TLS: %+v", d)
	}
	if d := byName["openconnect"]; d.Online || d.Path != "" {
		t.Errorf("the openconnect device whose client is away: %+v", d)
	}
	if err := e.reg.RevokeDevice(ctx, wgDev.ID); err != nil {
		t.Fatal(err)
	}
	var after DevicesReply
	want(t, e.do(t, "GET", AdminPrefix+"/devices?all=1", "", tok), http.StatusOK, &after)
	for _, d := range after.Devices {
		if d.Name == "laptop" && (d.Online || d.Path != "") {
			t.Errorf("a revoked device with a session: %+v", d)
		}
	}
}
