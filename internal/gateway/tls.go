package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/ocengine"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/openconnect"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// The gateway's OpenConnect side: a second interface (Config.TLSInterface)
// whose front (package internal/ocengine) owns the TLS port and starts a
// confined engine that speaks the protocol. Logins are decided here, by
// TLSAuth against the registry: a login is a device of the user's, with
// the protocol openconnect, its addresses from the same pools and its
// access from the same rules as a WireGuard peer's. Every sync the
// sessions are held to the registry: a revoked device's sessions end, a
// device whose rules changed gets them.

// TLSSessionsFile is where a running gateway writes its OpenConnect
// sessions (every second) for `ptun gateway devices`.
const TLSSessionsFile = "tls-sessions.json"

// TLS timers pushed to OpenConnect clients.
const (
	tlsDPD       = 30 * time.Second
	tlsDTLSDPD   = 5 * time.Second // short: a silent UDP path moves to CSTP soon
	tlsKeepalive = 20 * time.Second
	tlsCookieTTL = 5 * time.Minute
)

type tlsGateway struct {
	front *ocengine.Front
	auth  *TLSAuth
	cfg   *Config
	file  string
	logf  func(string, ...any)

	mu       sync.Mutex
	sessions []ocengine.SessionInfo
	wrote    time.Time
}

// startTLS starts the OpenConnect interface of cfg, or returns nil when
// the gateway has none.
func startTLS(dir string, cfg *Config, reg registry.Registry, key noise.PrivateKey, mode ipc.Mode, cmd func() (*exec.Cmd, error), logf, verbosef func(string, ...any)) (*tlsGateway, error) {
	if !cfg.TLS.IsValid() {
		return nil, nil
	}
	if cmd == nil {
		return nil, errors.New("the OpenConnect listener needs an engine command")
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, err
	}
	pools, err := reg.ListPools(context.Background())
	if err != nil {
		return nil, err
	}
	var sources []netip.Prefix
	for _, p := range pools {
		// The pool's first address is the gateway's (on the WireGuard
		// interface, as hostState.apply gives it).
		sources = append(sources, netip.PrefixFrom(p.Prefix.Addr().Next(), p.Prefix.Bits()))
	}
	tg := &tlsGateway{auth: NewTLSAuth(reg, cfg, key, logf), cfg: cfg, file: filepath.Join(dir, TLSSessionsFile), logf: logf}
	tg.front, err = ocengine.StartFront(ocengine.FrontConfig{
		Interface: cfg.TLSInterface(), MTU: cfg.Site.MTU, Mode: mode, Listen: cfg.TLS, DTLS: true,
		ServerName: cfg.Name, CertPEM: certPEM, KeyPEM: keyPEM,
		DPD: tlsDPD, DTLSDPD: tlsDTLSDPD, Keepalive: tlsKeepalive, CookieTTL: tlsCookieTTL,
		EngineCommand: cmd, Sources: sources, Login: tg.login, Recheck: tg.recheck, Logf: logf, Verbosef: verbosef,
	})
	if err != nil {
		return nil, fmt.Errorf("the OpenConnect listener on %v: %w", cfg.TLS, err)
	}
	return tg, nil
}

// lastSessions are the sessions as of the last sync's reading (about a
// second old at most).
func (tg *tlsGateway) lastSessions() []ocengine.SessionInfo {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.sessions
}

// setConfig takes a reloaded gateway.json (its routes, DNS, search
// domains reach the next logins and resumes).
func (tg *tlsGateway) setConfig(cfg *Config) {
	tg.mu.Lock()
	tg.cfg = cfg
	tg.mu.Unlock()
	tg.auth.SetConfig(cfg)
}

func (tg *tlsGateway) close() {
	tg.front.Close()
	os.Remove(tg.file)
}

func (tg *tlsGateway) grantOf(l TLSLogin) *ocengine.Grant {
	tg.mu.Lock()
	site := tg.cfg.Site
	tg.mu.Unlock()
	return &ocengine.Grant{
		User: l.User, Device: l.User + "/" + l.Device, DeviceID: l.DeviceID, Addresses: l.Addresses,
		Routes: fullRoutes(site.Routes), DNS: site.DNS, Search: site.Search,
		// Never "all": the rules are the WireGuard peers' (the
		// routes, or the groups' rules, and the control service).
		Access: ocengine.Access{Rules: l.Rules},
	}
}

// fullRoutes are the routes to push: none for a full tunnel (OpenConnect
// clients take no split include as "everything through the tunnel").
func fullRoutes(rs []netip.Prefix) []netip.Prefix {
	for _, r := range rs {
		if r.Bits() == 0 {
			return nil
		}
	}
	return rs
}

func (tg *tlsGateway) login(ctx context.Context, r ocengine.LoginRequest) (*ocengine.Grant, error) {
	from, _ := netip.ParseAddrPort(r.From)
	l, err := tg.auth.Authenticate(ctx, r.Login, r.Password, from)
	switch {
	case errors.Is(err, ErrRateLimited):
		return nil, fmt.Errorf("%w: %v", ocengine.ErrRateLimited, err)
	case errors.Is(err, openconnect.ErrLoginFailed):
		return nil, fmt.Errorf("%w: %v", ocengine.ErrRefused, err)
	case err != nil:
		return nil, err
	}
	tg.logf("gateway: OpenConnect login of %s/%s from %v", l.User, l.Device, from)
	return tg.grantOf(l), nil
}

// recheck keeps a resumed session only if its device is still active,
// with its current addresses and rules.
func (tg *tlsGateway) recheck(ctx context.Context, g *ocengine.Grant) error {
	active, err := tg.auth.Active(ctx)
	if err != nil {
		return err
	}
	l, ok := active[g.DeviceID]
	if !ok {
		return errors.New("the device was revoked")
	}
	cookie := g.Cookie
	*g = *tg.grantOf(l)
	g.Cookie = cookie
	return nil
}

// sync holds the logged-in devices to the registry, and writes the
// sessions file about every second.
func (tg *tlsGateway) sync(ctx context.Context) error {
	held := tg.front.Devices()
	if len(held) > 0 {
		active, err := tg.auth.Active(ctx)
		if err != nil {
			return err
		}
		for id, g := range held {
			l, ok := active[id]
			if !ok {
				tg.logf("gateway: %s was revoked: ending its OpenConnect sessions", g.Device)
				if err := tg.front.Revoke(id); err != nil {
					tg.logf("gateway: ending the sessions of %s: %v", g.Device, err)
				}
				continue
			}
			want := ocengine.Access{Rules: l.Rules}
			if want.All != g.Access.All || !slices.Equal(want.Rules, g.Access.Rules) {
				if err := tg.front.SetAccess(id, want); err != nil {
					tg.logf("gateway: new rules for %s: %v", g.Device, err)
				}
			}
		}
	}
	if time.Since(tg.wrote) >= time.Second {
		tg.wrote = time.Now()
		ss, err := tg.front.Sessions()
		if err == nil {
			tg.mu.Lock()
			tg.sessions = ss
			tg.mu.Unlock()
			writeSessions(tg.file, ss)
		}
	}
	return nil
}

// TLSSessions is what the sessions file holds.
type TLSSessions struct {
	At       time.Time              `json:"at"`
	Sessions []ocengine.SessionInfo `json:"sessions"`
}

func writeSessions(path string, ss []ocengine.SessionInfo) {
	b, err := json.Marshal(TLSSessions{At: time.Now().UTC(), Sessions: ss})
	if err != nil {
		return
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		os.Rename(tmp, path)
	}
}

// ReadTLSSessions reads a running gateway's sessions file; stale (over
// 5 s old) or missing is an error.
func ReadTLSSessions(dir string) (*TLSSessions, error) {
	b, err := os.ReadFile(filepath.Join(dir, TLSSessionsFile))
	if err != nil {
		return nil, err
	}
	var s TLSSessions
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	if time.Since(s.At) > 5*time.Second {
		return nil, errors.New("the OpenConnect sessions file is stale: is the gateway running?")
	}
	return &s, nil
}
