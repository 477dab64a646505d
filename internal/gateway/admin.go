package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ptun-vpn/ptun/internal/ocengine"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// The admin API: JSON over HTTP(S) on the gateway's admin listener, for
// the admin web page (a session cookie and a CSRF token) and for
// automation (bearer API tokens). See docs/admin-api.md.

// AdminPrefix is the admin API's root; every path under it but LoginPath
// needs a session or a token.
const AdminPrefix = "/api/v1/admin"

// The paths that answer without authentication.
const (
	AdminLoginPath  = AdminPrefix + "/login"
	AdminHealthPath = "/healthz"
)

// SessionCookie is the session cookie's name; CSRFHeader carries the
// session's CSRF token on every state-changing request made with it.
const (
	SessionCookie = "ptun_admin"
	CSRFHeader    = "X-CSRF-Token"
)

// Limits of the admin API.
const (
	maxAdminBody     = 8 << 10
	adminSessionTTL  = 12 * time.Hour
	loginSourceRate  = 0.1 // login attempts a second per source address
	loginSourceBurst = 10
	loginNameRate    = 0.1 // per admin name, from anywhere: more than one source's
	loginNameBurst   = 20
	maxLoginKeys     = 4096
	adminDeadline    = 15 * time.Second
	maxAuditLimit    = 1000
	maxAuditScan     = 100000 // entries a filtered audit request reads at most
)

// AdminOptions is what the admin API serves from.
type AdminOptions struct {
	Registry registry.Registry
	// InviteURL makes the enrollment URL of a new invite's secret.
	InviteURL func(secret string) (string, error)
	// Peers returns the interface's peers with their live figures (nil:
	// none, as when the gateway is not running).
	Peers func() ([]wgcfg.PeerState, error)
	// TLSSessions returns the OpenConnect sessions of the gateway's TLS
	// listener, as of the last second (nil: none).
	TLSSessions func() []ocengine.SessionInfo
	// Health is served at AdminHealthPath without authentication (nil:
	// not served).
	Health http.Handler
	// Gateway is this gateway's name: the overview's, and left out of
	// its other gateways.
	Gateway string
	// History is the running gateway's sampler, which the overview and
	// the history answer from (nil: no live figures, no points).
	History *History
	// Secure marks the session cookie Secure: the listener is HTTPS.
	Secure bool
	Logger *slog.Logger
	// Now is the clock of the rate limits and online state; time.Now if nil.
	Now func() time.Time
}

// adminAPI is the admin API's handler state.
type adminAPI struct {
	o        AdminOptions
	bySource *sourceLimiter
	byName   *keyLimiter[string]
	routes   []adminRoute
	mux      *http.ServeMux
	log      *slog.Logger
}

// adminRoute is one endpoint. public: it answers without a session or a
// token (only login).
type adminRoute struct {
	method, path string
	public       bool
	handle       func(a *adminAPI, w http.ResponseWriter, r *http.Request, who caller)
}

// caller is who makes a request.
type caller struct {
	admin   registry.Admin
	via     string // "session" or "token"
	session registry.AdminSession
	token   registry.AdminToken
	secret  string // the session's cookie value (via session)
}

func (c caller) actor() string { return "admin:" + c.admin.Name }

// adminRoutes is every endpoint of the API. The tests walk this list, so
// that a route added here cannot miss the authentication check.
var adminRoutes = []adminRoute{
	{"POST", AdminLoginPath, true, (*adminAPI).login},
	{"POST", AdminPrefix + "/logout", false, (*adminAPI).logout},
	{"GET", AdminPrefix + "/whoami", false, (*adminAPI).whoami},
	{"GET", AdminPrefix + "/tokens", false, (*adminAPI).listTokens},
	{"POST", AdminPrefix + "/tokens", false, (*adminAPI).createToken},
	{"DELETE", AdminPrefix + "/tokens/{id}", false, (*adminAPI).revokeToken},
	{"GET", AdminPrefix + "/users", false, (*adminAPI).listUsers},
	{"POST", AdminPrefix + "/users", false, (*adminAPI).addUser},
	{"DELETE", AdminPrefix + "/users/{name}", false, (*adminAPI).removeUser},
	{"POST", AdminPrefix + "/users/{name}/groups", false, (*adminAPI).addMember},
	{"DELETE", AdminPrefix + "/users/{name}/groups/{group}", false, (*adminAPI).removeMember},
	{"GET", AdminPrefix + "/groups", false, (*adminAPI).listGroups},
	{"GET", AdminPrefix + "/devices", false, (*adminAPI).listDevices},
	{"POST", AdminPrefix + "/devices/{id}/revoke", false, (*adminAPI).revokeDevice},
	{"POST", AdminPrefix + "/devices/{id}/rename", false, (*adminAPI).renameDevice},
	{"GET", AdminPrefix + "/invites", false, (*adminAPI).listInvites},
	{"POST", AdminPrefix + "/invites", false, (*adminAPI).createInvite},
	{"DELETE", AdminPrefix + "/invites/{id}", false, (*adminAPI).withdrawInvite},
	{"GET", AdminPrefix + "/rules", false, (*adminAPI).listRules},
	{"POST", AdminPrefix + "/rules", false, (*adminAPI).addRule},
	{"DELETE", AdminPrefix + "/rules/{id}", false, (*adminAPI).removeRule},
	{"GET", AdminPrefix + "/audit", false, (*adminAPI).audit},
	{"GET", AdminPrefix + "/overview", false, (*adminAPI).overview},
	{"GET", AdminPrefix + "/history", false, (*adminAPI).history},
	{"POST", AdminPrefix + "/qr", false, (*adminAPI).qr},
}

// AdminHandler serves the admin API (and, with o.Health, the health
// endpoint) from o, and the admin page.
func AdminHandler(o AdminOptions) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &adminAPI{o: o, log: o.Logger, routes: adminRoutes, mux: http.NewServeMux(),
		bySource: newSourceLimiter(loginSourceRate, loginSourceBurst, maxLoginKeys),
		byName:   newKeyLimiter[string](loginNameRate, loginNameBurst, maxLoginKeys)}
	for _, rt := range a.routes {
		a.mux.HandleFunc(rt.method+" "+rt.path, a.serve(rt))
	}
	// Everything else under the prefix: 401 before anything is said
	// about it (a wrong method, an unknown path), so that nothing answers
	// without authentication.
	unknown := func(w http.ResponseWriter, r *http.Request) {
		if _, ok := a.authenticate(w, r); !ok {
			return
		}
		adminFail(w, http.StatusNotFound, "no such endpoint or method: see docs/admin-api.md")
	}
	a.mux.HandleFunc(AdminPrefix+"/", unknown)
	a.mux.HandleFunc(AdminPrefix, unknown)
	if o.Health != nil {
		a.mux.Handle(AdminHealthPath, o.Health)
	}
	// The admin page (adminweb.go): public static files, holding no data.
	a.mux.HandleFunc("GET /{$}", servePage)
	a.mux.HandleFunc("GET "+AdminAssetsPrefix, servePage)
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		adminFail(w, http.StatusNotFound, "not found: the admin page is at / and the API under "+AdminPrefix+"/")
	})
	return a.mux
}

func (a *adminAPI) serve(rt adminRoute) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var who caller
		if !rt.public {
			var ok bool
			if who, ok = a.authenticate(w, r); !ok {
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), adminDeadline)
		defer cancel()
		if !rt.public {
			ctx = registry.WithActor(ctx, who.actor())
		}
		rt.handle(a, w, r.WithContext(ctx), who)
	}
}

// csrfToken is a session's CSRF token: derived from its secret (which the
// page cannot read, the cookie being HttpOnly), so it needs no storage and
// dies with the session.
func csrfToken(sessionSecret string) string {
	h := sha256.Sum256([]byte("ptun admin csrf v1\x00" + sessionSecret))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// stateChanging reports whether a method may change something (and so
// needs the CSRF token with a session).
func stateChanging(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// authenticate finds who makes r: a bearer token, else a session cookie
// (with the CSRF header for a state-changing method). It answers 401 or
// 403 itself when nobody valid does.
func (a *adminAPI) authenticate(w http.ResponseWriter, r *http.Request) (caller, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), adminDeadline)
	defer cancel()
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			unauthorized(w, "use Authorization: Bearer TOKEN")
			return caller{}, false
		}
		adm, t, err := a.o.Registry.AdminByToken(ctx, strings.TrimSpace(tok))
		if err != nil {
			a.authFailed(w, r, err, "token")
			return caller{}, false
		}
		return caller{admin: adm, via: "token", token: t}, true
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		unauthorized(w, "log in first (POST "+AdminLoginPath+"), or send Authorization: Bearer TOKEN")
		return caller{}, false
	}
	adm, s, err := a.o.Registry.AdminBySession(ctx, c.Value)
	if err != nil {
		a.authFailed(w, r, err, "session")
		return caller{}, false
	}
	if stateChanging(r.Method) {
		want := csrfToken(c.Value)
		if got := r.Header.Get(CSRFHeader); subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			adminFail(w, http.StatusForbidden, "missing or wrong "+CSRFHeader+" header: send the csrf_token that login (or whoami) returned")
			return caller{}, false
		}
	}
	return caller{admin: adm, via: "session", session: s, secret: c.Value}, true
}

func (a *adminAPI) authFailed(w http.ResponseWriter, r *http.Request, err error, what string) {
	if errors.Is(err, registry.ErrUnauthorized) {
		a.log.Warn("admin API: refused "+what, "source", remoteAddr(r), "path", r.URL.Path)
		unauthorized(w, "the "+what+" is not valid (unknown, expired, revoked or logged out): log in again")
		return
	}
	a.log.Error("admin API: checking a "+what, "err", err)
	adminFail(w, http.StatusServiceUnavailable, "the registry is unavailable: try again; the gateway's log says why")
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="ptun admin"`)
	adminFail(w, http.StatusUnauthorized, msg)
}

// adminHeaders are on every answer: JSON that no browser sniffs into
// something else, never cached, never framed.
func adminHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
}

// adminFail answers an error. encoding/json escapes <, > and & (and
// control characters), so a name with markup in a message stays inert.
func adminFail(w http.ResponseWriter, status int, msg string) {
	adminHeaders(w)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(apiError{Error: msg})
}

func reply(w http.ResponseWriter, status int, v any) {
	adminHeaders(w)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// registryFail answers a registry error with the status its sentinel
// calls for.
func (a *adminAPI) registryFail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, registry.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, registry.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrConflict), errors.Is(err, registry.ErrPoolExhausted):
		status = http.StatusConflict
	case errors.Is(err, registry.ErrUnauthorized):
		status = http.StatusUnauthorized
	}
	if status == http.StatusInternalServerError {
		a.log.Error("admin API: registry", "err", err)
		adminFail(w, status, "the registry failed: the gateway's log says why")
		return
	}
	adminFail(w, status, err.Error())
}

// --- request bodies -----------------------------------------------------------

// errBodyTooLarge is readBody's error for a body over the limit.
var errBodyTooLarge = fmt.Errorf("request body over %d KiB", maxAdminBody>>10)

// readBody reads r's JSON body, at most maxAdminBody bytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	ct := r.Header.Get("Content-Type")
	if mt, _, _ := strings.Cut(ct, ";"); strings.TrimSpace(strings.ToLower(mt)) != "application/json" {
		adminFail(w, http.StatusUnsupportedMediaType, "send Content-Type: application/json")
		return nil, false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			adminFail(w, http.StatusRequestEntityTooLarge, errBodyTooLarge.Error())
		} else {
			adminFail(w, http.StatusBadRequest, "reading the request body: "+err.Error())
		}
		return nil, false
	}
	return b, true
}

// decodeStrict decodes exactly one JSON value of type T from b, refusing
// unknown fields.
func decodeStrict[T any](b []byte) (T, error) {
	var v T
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return v, fmt.Errorf("malformed JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return v, errors.New("malformed JSON: more than one value")
	}
	return v, nil
}

// LoginRequest is POST /login's body.
type LoginRequest struct {
	Name     string `json:"name"`
	Password string `json:"password"`
}

func parseLogin(b []byte) (LoginRequest, error) {
	req, err := decodeStrict[LoginRequest](b)
	if err != nil {
		return req, err
	}
	if req.Name == "" || req.Password == "" {
		return req, errors.New("give name and password")
	}
	if len(req.Password) > registry.MaxPasswordLen {
		return req, fmt.Errorf("the password is over %d bytes", registry.MaxPasswordLen)
	}
	return req, nil
}

// UserRequest is POST /users's body.
type UserRequest struct {
	Name   string   `json:"name"`
	Groups []string `json:"groups,omitempty"`
}

func parseUser(b []byte) (UserRequest, error) {
	req, err := decodeStrict[UserRequest](b)
	if err != nil {
		return req, err
	}
	if _, err := registry.ParseName(req.Name); err != nil {
		return req, fmt.Errorf("name: %w", err)
	}
	if len(req.Groups) > 64 {
		return req, errors.New("groups: at most 64")
	}
	for _, g := range req.Groups {
		if _, err := registry.ParseName(g); err != nil {
			return req, fmt.Errorf("groups: %w", err)
		}
	}
	return req, nil
}

// MemberRequest is POST /users/{name}/groups's body.
type MemberRequest struct {
	Group string `json:"group"`
}

func parseMember(b []byte) (MemberRequest, error) {
	req, err := decodeStrict[MemberRequest](b)
	if err != nil {
		return req, err
	}
	if _, err := registry.ParseName(req.Group); err != nil {
		return req, fmt.Errorf("group: %w", err)
	}
	return req, nil
}

// RenameRequest is POST /devices/{id}/rename's body: the device's new
// name, valid as an enrollment's.
type RenameRequest struct {
	Name string `json:"name"`
}

func parseRename(b []byte) (RenameRequest, error) {
	req, err := decodeStrict[RenameRequest](b)
	if err != nil {
		return req, err
	}
	if _, err := registry.ParseName(req.Name); err != nil {
		return req, fmt.Errorf("name: %w", err)
	}
	return req, nil
}

// InviteRequest is POST /invites's body. TTL is a Go duration ("24h";
// default 24h), Uses at least 1 (default 1).
type InviteRequest struct {
	User string `json:"user"`
	TTL  string `json:"ttl,omitempty"`
	Uses int    `json:"uses,omitempty"`
}

// invite is a checked InviteRequest.
type invite struct {
	user string
	ttl  time.Duration
	uses int
}

func parseInvite(b []byte) (invite, error) {
	req, err := decodeStrict[InviteRequest](b)
	if err != nil {
		return invite{}, err
	}
	inv := invite{user: req.User, ttl: 24 * time.Hour, uses: 1}
	if _, err := registry.ParseName(req.User); err != nil {
		return invite{}, fmt.Errorf("user: %w", err)
	}
	if req.TTL != "" {
		if inv.ttl, err = time.ParseDuration(req.TTL); err != nil || inv.ttl <= 0 || inv.ttl > 365*24*time.Hour {
			return invite{}, fmt.Errorf("ttl %q: give a duration from 1s to 8760h, such as 24h", req.TTL)
		}
	}
	if req.Uses != 0 {
		if req.Uses < 1 || req.Uses > 10000 {
			return invite{}, fmt.Errorf("uses %d: give 1 to 10000", req.Uses)
		}
		inv.uses = req.Uses
	}
	return inv, nil
}

// RuleRequest is POST /rules's body: Rule as `ptun gateway allow` takes
// it after the group ("198.18.2.0/24 tcp/443").
type RuleRequest struct {
	Group string `json:"group"`
	Rule  string `json:"rule"`
}

func parseRuleRequest(b []byte) (string, registry.Rule, error) {
	req, err := decodeStrict[RuleRequest](b)
	if err != nil {
		return "", registry.Rule{}, err
	}
	if _, err := registry.ParseName(req.Group); err != nil {
		return "", registry.Rule{}, fmt.Errorf("group: %w", err)
	}
	r, err := registry.ParseRule(req.Rule)
	if err != nil {
		return "", registry.Rule{}, fmt.Errorf("rule: %w", err)
	}
	return req.Group, r, nil
}

// body reads and parses r's body with parse, answering 4xx itself.
func body[T any](w http.ResponseWriter, r *http.Request, parse func([]byte) (T, error)) (T, bool) {
	var zero T
	b, ok := readBody(w, r)
	if !ok {
		return zero, false
	}
	v, err := parse(b)
	if err != nil {
		adminFail(w, http.StatusBadRequest, err.Error())
		return zero, false
	}
	return v, true
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		adminFail(w, http.StatusBadRequest, "the id in the path is not a positive number")
		return 0, false
	}
	return id, true
}

func pathName(w http.ResponseWriter, r *http.Request, key string) (string, bool) {
	n, err := registry.ParseName(r.PathValue(key))
	if err != nil {
		adminFail(w, http.StatusBadRequest, key+": "+err.Error())
		return "", false
	}
	return n, true
}

// --- session ------------------------------------------------------------------

// LoginReply is what login and whoami answer.
type LoginReply struct {
	Admin     string    `json:"admin"`
	Via       string    `json:"via"`                  // "session" or "token"
	CSRFToken string    `json:"csrf_token,omitempty"` // send it as X-CSRF-Token (sessions only)
	ExpiresAt time.Time `json:"expires_at,omitzero"`  // the session's end
}

func (a *adminAPI) login(w http.ResponseWriter, r *http.Request, _ caller) {
	src := remoteAddr(r)
	now := a.o.Now()
	if !a.bySource.allow(src, now) {
		a.log.Warn("admin login refused: rate limit (source)", "source", src)
		w.Header().Set("Retry-After", "10")
		adminFail(w, http.StatusTooManyRequests, "too many login attempts from your address: wait and try again")
		return
	}
	req, ok := body(w, r, parseLogin)
	if !ok {
		return
	}
	// Only real names get a bucket of their own (the table holds at most
	// maxLoginKeys short keys); every invalid one shares "".
	nameKey := req.Name
	if _, err := registry.ParseName(nameKey); err != nil {
		nameKey = ""
	}
	if !a.byName.allow(nameKey, now) {
		a.log.Warn("admin login refused: rate limit (name)", "source", src, "name", req.Name)
		w.Header().Set("Retry-After", "20")
		adminFail(w, http.StatusTooManyRequests, "too many login attempts for this name: wait and try again")
		return
	}
	ctx := r.Context()
	adm, err := a.o.Registry.CheckAdminPassword(ctx, req.Name, req.Password)
	if err != nil {
		if errors.Is(err, registry.ErrUnauthorized) {
			a.log.Warn("admin login refused", "source", src, "name", req.Name)
			adminFail(w, http.StatusUnauthorized, "wrong name or password")
			return
		}
		a.registryFail(w, err)
		return
	}
	s, secret, err := a.o.Registry.CreateAdminSession(registry.WithActor(ctx, "admin:"+adm.Name), adm.Name, adminSessionTTL, src.String())
	if err != nil {
		a.registryFail(w, err)
		return
	}
	a.log.Info("admin logged in", "source", src, "admin", adm.Name, "session", s.Prefix)
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: secret, Path: "/", Expires: s.ExpiresAt,
		MaxAge: int(adminSessionTTL.Seconds()), HttpOnly: true, Secure: a.o.Secure, SameSite: http.SameSiteStrictMode})
	reply(w, http.StatusOK, LoginReply{Admin: adm.Name, Via: "session", CSRFToken: csrfToken(secret), ExpiresAt: s.ExpiresAt})
}

func (a *adminAPI) logout(w http.ResponseWriter, r *http.Request, who caller) {
	if who.via != "session" {
		adminFail(w, http.StatusBadRequest, "a token does not log out: revoke it with DELETE "+AdminPrefix+"/tokens/ID")
		return
	}
	if err := a.o.Registry.EndAdminSession(r.Context(), who.secret); err != nil {
		a.registryFail(w, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: a.o.Secure, SameSite: http.SameSiteStrictMode})
	reply(w, http.StatusOK, map[string]string{"status": "logged out"})
}

func (a *adminAPI) whoami(w http.ResponseWriter, r *http.Request, who caller) {
	rep := LoginReply{Admin: who.admin.Name, Via: who.via}
	if who.via == "session" {
		rep.CSRFToken, rep.ExpiresAt = csrfToken(who.secret), who.session.ExpiresAt
	}
	reply(w, http.StatusOK, rep)
}

// --- tokens -------------------------------------------------------------------

// AdminTokenJSON is an API token as the API shows it.
type AdminTokenJSON struct {
	ID        int64     `json:"id"`
	Prefix    string    `json:"prefix"`
	Admin     string    `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	Token     string    `json:"token,omitempty"` // only in the answer that made it
}

func tokenJSON(t registry.AdminToken) AdminTokenJSON {
	return AdminTokenJSON{ID: t.ID, Prefix: t.Prefix, Admin: t.Admin, CreatedAt: t.CreatedAt, RevokedAt: t.RevokedAt}
}

func (a *adminAPI) listTokens(w http.ResponseWriter, r *http.Request, who caller) {
	toks, err := a.o.Registry.ListAdminTokens(r.Context(), who.admin.Name)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	out := []AdminTokenJSON{}
	for _, t := range toks {
		out = append(out, tokenJSON(t))
	}
	reply(w, http.StatusOK, out)
}

func (a *adminAPI) createToken(w http.ResponseWriter, r *http.Request, who caller) {
	tok, secret, err := a.o.Registry.CreateAdminToken(r.Context(), who.admin.Name)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	j := tokenJSON(tok)
	j.Token = secret
	reply(w, http.StatusCreated, j)
}

// revokeToken revokes one of the caller's own tokens.
func (a *adminAPI) revokeToken(w http.ResponseWriter, r *http.Request, who caller) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	toks, err := a.o.Registry.ListAdminTokens(r.Context(), who.admin.Name)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	for _, t := range toks {
		if t.ID == id && t.RevokedAt.IsZero() {
			if err := a.o.Registry.RevokeAdminToken(r.Context(), id); err != nil {
				a.registryFail(w, err)
				return
			}
			reply(w, http.StatusOK, map[string]any{"revoked": id})
			return
		}
	}
	adminFail(w, http.StatusNotFound, fmt.Sprintf("you have no live token with id %d", id))
}

// --- users and groups ---------------------------------------------------------

// UserJSON is a user as the API shows it.
type UserJSON struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Groups    []string  `json:"groups"`
	CreatedAt time.Time `json:"created_at"`
}

func (a *adminAPI) listUsers(w http.ResponseWriter, r *http.Request, _ caller) {
	ctx := r.Context()
	users, err := a.o.Registry.ListUsers(ctx)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	out := []UserJSON{}
	for _, u := range users {
		gs, err := a.o.Registry.GroupsOf(ctx, u.Name)
		if err != nil {
			a.registryFail(w, err)
			return
		}
		j := UserJSON{ID: u.ID, Name: u.Name, Groups: []string{}, CreatedAt: u.CreatedAt}
		for _, g := range gs {
			j.Groups = append(j.Groups, g.Name)
		}
		out = append(out, j)
	}
	reply(w, http.StatusOK, out)
}

// addUser adds a user and puts them in the groups (made if need be). The
// body is checked whole before anything is written.
func (a *adminAPI) addUser(w http.ResponseWriter, r *http.Request, _ caller) {
	req, ok := body(w, r, parseUser)
	if !ok {
		return
	}
	ctx := r.Context()
	u, err := a.o.Registry.AddUser(ctx, req.Name)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	j := UserJSON{ID: u.ID, Name: u.Name, Groups: []string{}, CreatedAt: u.CreatedAt}
	for _, g := range req.Groups {
		if err := a.addToGroup(ctx, g, u.Name); err != nil {
			a.registryFail(w, err)
			return
		}
		j.Groups = append(j.Groups, g)
	}
	reply(w, http.StatusCreated, j)
}

func (a *adminAPI) addToGroup(ctx context.Context, group, user string) error {
	if _, err := a.o.Registry.AddGroup(ctx, group); err != nil && !errors.Is(err, registry.ErrExists) {
		return err
	}
	return a.o.Registry.AddMember(ctx, group, user)
}

func (a *adminAPI) removeUser(w http.ResponseWriter, r *http.Request, _ caller) {
	name, ok := pathName(w, r, "name")
	if !ok {
		return
	}
	if err := a.o.Registry.RemoveUser(r.Context(), name); err != nil {
		a.registryFail(w, err)
		return
	}
	reply(w, http.StatusOK, map[string]string{"removed": name})
}

func (a *adminAPI) addMember(w http.ResponseWriter, r *http.Request, _ caller) {
	name, ok := pathName(w, r, "name")
	if !ok {
		return
	}
	req, ok := body(w, r, parseMember)
	if !ok {
		return
	}
	if _, err := a.o.Registry.User(r.Context(), name); err != nil { // before a group is made for nobody
		a.registryFail(w, err)
		return
	}
	if err := a.addToGroup(r.Context(), req.Group, name); err != nil {
		a.registryFail(w, err)
		return
	}
	reply(w, http.StatusOK, map[string]string{"user": name, "group": req.Group})
}

func (a *adminAPI) removeMember(w http.ResponseWriter, r *http.Request, _ caller) {
	name, ok := pathName(w, r, "name")
	if !ok {
		return
	}
	group, ok := pathName(w, r, "group")
	if !ok {
		return
	}
	if err := a.o.Registry.RemoveMember(r.Context(), group, name); err != nil {
		a.registryFail(w, err)
		return
	}
	reply(w, http.StatusOK, map[string]string{"user": name, "removed_from": group})
}

// GroupJSON is a group with its members and its rules.
type GroupJSON struct {
	ID      int64      `json:"id"`
	Name    string     `json:"name"`
	Members []string   `json:"members"`
	Rules   []RuleJSON `json:"rules"`
}

func (a *adminAPI) listGroups(w http.ResponseWriter, r *http.Request, _ caller) {
	ctx := r.Context()
	gs, err := a.o.Registry.ListGroups(ctx)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	rules, err := a.o.Registry.ListRules(ctx, "")
	if err != nil {
		a.registryFail(w, err)
		return
	}
	out := []GroupJSON{}
	for _, g := range gs {
		ms, err := a.o.Registry.Members(ctx, g.Name)
		if err != nil {
			a.registryFail(w, err)
			return
		}
		j := GroupJSON{ID: g.ID, Name: g.Name, Members: []string{}, Rules: []RuleJSON{}}
		for _, m := range ms {
			j.Members = append(j.Members, m.Name)
		}
		for _, ru := range rules {
			if ru.Group == g.Name {
				j.Rules = append(j.Rules, ruleJSON(ru))
			}
		}
		out = append(out, j)
	}
	reply(w, http.StatusOK, out)
}

// --- devices ------------------------------------------------------------------

// DeviceJSON is a device with, while the gateway runs, its peer's live
// figures (as `ptun gateway devices --json` shows them).
type DeviceJSON struct {
	ID            int64        `json:"id"`
	User          string       `json:"user"`
	Name          string       `json:"name"`
	Protocol      string       `json:"protocol"`   // "wireguard" or "openconnect"
	PublicKey     string       `json:"public_key"` // openconnect: random bytes, not a WireGuard key
	Addresses     []netip.Addr `json:"addresses"`
	CreatedAt     time.Time    `json:"created_at"`
	LastSeenAt    time.Time    `json:"last_seen_at,omitzero"`
	RevokedAt     time.Time    `json:"revoked_at,omitzero"`
	Endpoint      string       `json:"endpoint,omitempty"`
	LastHandshake time.Time    `json:"last_handshake,omitzero"`
	RxBytes       uint64       `json:"rx_bytes"`
	TxBytes       uint64       `json:"tx_bytes"`
	Online        bool         `json:"online"`
	// Path is the path of the device's session over the TLS listener
	// ("dtls" or "cstp"; "": none, or WireGuard): an openconnect
	// device's, or a WireGuard device's on its fallback. Its figures are
	// then the session's.
	Path string `json:"path,omitempty"`
}

// OnlineWithin is how recent a device's last handshake is when it counts
// as online: sessions are renewed every 2 minutes while traffic flows.
const OnlineWithin = 3 * time.Minute

// DevicesReply is GET /devices's answer; Live is false when the figures
// could not be read (the interface is not up).
type DevicesReply struct {
	Live    bool         `json:"live"`
	Devices []DeviceJSON `json:"devices"`
}

func (a *adminAPI) listDevices(w http.ResponseWriter, r *http.Request, _ caller) {
	q := r.URL.Query()
	f := registry.DeviceFilter{User: q.Get("user"), IncludeRevoked: q.Get("all") == "1" || q.Get("all") == "true"}
	devs, err := a.o.Registry.ListDevices(r.Context(), f)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	peers, live := a.livePeers()
	sessions := a.tlsSessions()
	now := a.o.Now()
	out := DevicesReply{Live: live, Devices: make([]DeviceJSON, 0, len(devs))}
	for _, d := range devs {
		out.Devices = append(out.Devices, deviceJSON(d, peers, sessions, now))
	}
	reply(w, http.StatusOK, out)
}

// livePeers reads the interface's peers by key; live is false when they
// could not be read (or the gateway does not run).
func (a *adminAPI) livePeers() (peers map[registry.Key]wgcfg.PeerState, live bool) {
	if a.o.Peers == nil {
		return nil, false
	}
	ps, err := a.o.Peers()
	if err != nil {
		return nil, false
	}
	peers = make(map[registry.Key]wgcfg.PeerState, len(ps))
	for _, p := range ps {
		peers[registry.Key(p.PublicKey)] = p
	}
	return peers, true
}

// tlsSessions are the TLS listener's sessions with a path, by device.
func (a *adminAPI) tlsSessions() map[int64]ocengine.SessionInfo {
	if a.o.TLSSessions == nil {
		return nil
	}
	ss := a.o.TLSSessions()
	m := make(map[int64]ocengine.SessionInfo, len(ss))
	for _, s := range ss {
		if s.Path != "" {
			m[s.DeviceID] = s
		}
	}
	return m
}

// deviceJSON is d with its live figures: its peer's from peers, or its
// TLS session's from sessions (either nil: none).
func deviceJSON(d registry.Device, peers map[registry.Key]wgcfg.PeerState, sessions map[int64]ocengine.SessionInfo, now time.Time) DeviceJSON {
	j := DeviceJSON{ID: d.ID, User: d.User, Name: d.Name, Protocol: d.Protocol, PublicKey: base64.StdEncoding.EncodeToString(d.PublicKey[:]),
		Addresses: d.Addresses, CreatedAt: d.CreatedAt, LastSeenAt: d.LastSeenAt, RevokedAt: d.RevokedAt}
	if j.Addresses == nil {
		j.Addresses = []netip.Addr{}
	}
	if p, ok := peers[d.PublicKey]; ok && !d.Revoked() && d.Protocol == registry.ProtocolWireGuard {
		if p.Endpoint.IsValid() {
			j.Endpoint = p.Endpoint.String()
		}
		j.LastHandshake, j.RxBytes, j.TxBytes = p.LastHandshake, p.RxBytes, p.TxBytes
		j.Online = !p.LastHandshake.IsZero() && now.Sub(p.LastHandshake) < OnlineWithin
	}
	if s, ok := sessions[d.ID]; ok && !d.Revoked() {
		j.Endpoint, j.Online, j.Path = "", true, s.Path
		j.LastHandshake, j.RxBytes, j.TxBytes = s.Started, s.RxBytes, s.TxBytes
	}
	return j
}

// renameDevice renames an active device; the answer is the device, with
// its live figures.
func (a *adminAPI) renameDevice(w http.ResponseWriter, r *http.Request, _ caller) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	req, ok := body(w, r, parseRename)
	if !ok {
		return
	}
	d, err := a.o.Registry.RenameDevice(r.Context(), id, req.Name)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	peers, _ := a.livePeers()
	reply(w, http.StatusOK, deviceJSON(d, peers, a.tlsSessions(), a.o.Now()))
}

func (a *adminAPI) revokeDevice(w http.ResponseWriter, r *http.Request, _ caller) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	if err := a.o.Registry.RevokeDevice(r.Context(), id); err != nil {
		a.registryFail(w, err)
		return
	}
	reply(w, http.StatusOK, map[string]any{"revoked": id})
}

// --- invites ------------------------------------------------------------------

// InviteJSON is an invite; URL only in the answer that made it.
type InviteJSON struct {
	ID        int64     `json:"id"`
	Prefix    string    `json:"prefix"`
	User      string    `json:"user"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	UsesLeft  int       `json:"uses_left"`
	URL       string    `json:"url,omitempty"`
}

func inviteJSON(inv registry.Invite) InviteJSON {
	return InviteJSON{ID: inv.ID, Prefix: inv.Prefix, User: inv.User, CreatedAt: inv.CreatedAt, ExpiresAt: inv.ExpiresAt, UsesLeft: inv.UsesLeft}
}

// listInvites lists the pending invites: not expired, not used up.
func (a *adminAPI) listInvites(w http.ResponseWriter, r *http.Request, _ caller) {
	invs, err := a.o.Registry.ListInvites(r.Context(), r.URL.Query().Get("user"))
	if err != nil {
		a.registryFail(w, err)
		return
	}
	now := a.o.Now()
	out := []InviteJSON{}
	for _, inv := range invs {
		if inv.UsesLeft > 0 && now.Before(inv.ExpiresAt) {
			out = append(out, inviteJSON(inv))
		}
	}
	reply(w, http.StatusOK, out)
}

func (a *adminAPI) createInvite(w http.ResponseWriter, r *http.Request, _ caller) {
	req, ok := body(w, r, parseInvite)
	if !ok {
		return
	}
	if a.o.InviteURL == nil {
		adminFail(w, http.StatusServiceUnavailable, "this gateway cannot make invite URLs")
		return
	}
	inv, secret, err := a.o.Registry.CreateInvite(r.Context(), req.user, req.ttl, req.uses)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	u, err := a.o.InviteURL(secret)
	if err != nil {
		a.o.Registry.RevokeInvite(r.Context(), inv.ID) // nobody can use it
		a.log.Error("admin API: invite URL", "err", err)
		adminFail(w, http.StatusInternalServerError, "making the invite URL failed: the gateway's log says why")
		return
	}
	j := inviteJSON(inv)
	j.URL = u
	reply(w, http.StatusCreated, j)
}

func (a *adminAPI) withdrawInvite(w http.ResponseWriter, r *http.Request, _ caller) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	if err := a.o.Registry.RevokeInvite(r.Context(), id); err != nil {
		a.registryFail(w, err)
		return
	}
	reply(w, http.StatusOK, map[string]any{"withdrawn": id})
}

// --- rules --------------------------------------------------------------------

// RuleJSON is an access rule; Rule is its text as ParseRule reads it.
type RuleJSON struct {
	ID    int64  `json:"id"`
	Group string `json:"group"`
	Rule  string `json:"rule"`
}

func ruleJSON(r registry.Rule) RuleJSON { return RuleJSON{ID: r.ID, Group: r.Group, Rule: r.String()} }

func (a *adminAPI) listRules(w http.ResponseWriter, r *http.Request, _ caller) {
	rules, err := a.o.Registry.ListRules(r.Context(), r.URL.Query().Get("group"))
	if err != nil {
		a.registryFail(w, err)
		return
	}
	out := []RuleJSON{}
	for _, ru := range rules {
		out = append(out, ruleJSON(ru))
	}
	reply(w, http.StatusOK, out)
}

// addRule adds a rule for a group, making the group if need be (as
// `ptun gateway allow` does).
func (a *adminAPI) addRule(w http.ResponseWriter, r *http.Request, _ caller) {
	group, rule, ok := parseRuleBody(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	if _, err := a.o.Registry.AddGroup(ctx, group); err != nil && !errors.Is(err, registry.ErrExists) {
		a.registryFail(w, err)
		return
	}
	added, err := a.o.Registry.AddRule(ctx, group, rule)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	reply(w, http.StatusCreated, ruleJSON(added))
}

func parseRuleBody(w http.ResponseWriter, r *http.Request) (string, registry.Rule, bool) {
	b, ok := readBody(w, r)
	if !ok {
		return "", registry.Rule{}, false
	}
	g, ru, err := parseRuleRequest(b)
	if err != nil {
		adminFail(w, http.StatusBadRequest, err.Error())
		return "", registry.Rule{}, false
	}
	return g, ru, true
}

func (a *adminAPI) removeRule(w http.ResponseWriter, r *http.Request, _ caller) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	if err := a.o.Registry.RemoveRule(r.Context(), id); err != nil {
		a.registryFail(w, err)
		return
	}
	reply(w, http.StatusOK, map[string]any{"removed": id})
}

// --- audit --------------------------------------------------------------------

// AuditJSON is an audit entry.
type AuditJSON struct {
	ID     int64     `json:"id"`
	At     time.Time `json:"at"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Target string    `json:"target"`
	Detail string    `json:"detail"`
}

// AuditReply is GET /audit's answer: entries oldest first; pass Next as
// ?after= for the following page (0: no more).
type AuditReply struct {
	Entries []AuditJSON `json:"entries"`
	Next    int64       `json:"next"`
}

// auditMatches reports whether an entry is about user (its target is the
// user, one of their devices "user/device", or a membership
// "group/user") and about device ("user/device").
func auditMatches(e registry.AuditEntry, user, device string) bool {
	if device != "" && e.Target != device {
		return false
	}
	// GROUP/USER is a membership's target; USER/DEVICE every other's
	// (devices, TLS logins).
	if user != "" && e.Target != user && !strings.HasPrefix(e.Target, user+"/") &&
		!(strings.HasSuffix(e.Target, "/"+user) && strings.HasPrefix(e.Action, "group.member.")) {
		return false
	}
	return true
}

// audit lists the audit log: ?after=ID&limit=N (default 100, at most
// 1000), ?user=NAME, ?device=USER/DEVICE.
func (a *adminAPI) audit(w http.ResponseWriter, r *http.Request, _ caller) {
	q := r.URL.Query()
	after, limit := int64(0), 100
	var err error
	if s := q.Get("after"); s != "" {
		if after, err = strconv.ParseInt(s, 10, 64); err != nil || after < 0 {
			adminFail(w, http.StatusBadRequest, "after: give an audit entry id")
			return
		}
	}
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > maxAuditLimit {
			adminFail(w, http.StatusBadRequest, fmt.Sprintf("limit: give 1 to %d", maxAuditLimit))
			return
		}
	}
	user, device := q.Get("user"), q.Get("device")
	if user != "" {
		if _, err := registry.ParseName(user); err != nil {
			adminFail(w, http.StatusBadRequest, "user: "+err.Error())
			return
		}
	}
	if device != "" {
		u, d, ok := strings.Cut(device, "/")
		_, uerr := registry.ParseName(u)
		_, derr := registry.ParseName(d)
		if !ok || uerr != nil || derr != nil {
			adminFail(w, http.StatusBadRequest, "device: give USER/DEVICE")
			return
		}
	}
	out := AuditReply{Entries: []AuditJSON{}}
	scanned := 0
	for scanned < maxAuditScan {
		page, err := a.o.Registry.Audit(r.Context(), after, maxAuditLimit)
		if err != nil {
			a.registryFail(w, err)
			return
		}
		for _, e := range page {
			after = e.ID
			scanned++
			if auditMatches(e, user, device) {
				out.Entries = append(out.Entries, AuditJSON{ID: e.ID, At: e.At, Actor: e.Actor, Action: e.Action, Target: e.Target, Detail: e.Detail})
				if len(out.Entries) == limit {
					out.Next = e.ID
					reply(w, http.StatusOK, out)
					return
				}
			}
		}
		if len(page) < maxAuditLimit {
			reply(w, http.StatusOK, out)
			return
		}
	}
	out.Next = after // scanned enough for one request: go on from here
	reply(w, http.StatusOK, out)
}
