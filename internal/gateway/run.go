package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// syncEvery is how often Run looks for registry changes: a revocation is in
// force within it.
const syncEvery = 250 * time.Millisecond

// RunOptions are the process-level settings of Run.
type RunOptions struct {
	Logf, Verbosef func(format string, args ...any)
	Mode           ipc.Mode
	EngineCommand  func() (*exec.Cmd, error)
	// TLSEngineCommand starts the OpenConnect engine of a gateway with a
	// TLS listener (Config.TLS).
	TLSEngineCommand func() (*exec.Cmd, error)
	// Ready is called once: nil when the interface, the engine and the
	// enrollment API are up, or the error that stopped them.
	Ready func(error)
}

// Run serves the gateway of state folder dir until ctx ends: its interface
// (a front and its engine, as `ptun IFNAME` runs), its addresses in each
// pool and forwarding (and masquerade), the enrollment API, and a loop that
// keeps the interface's peers in step with the registry, one peer at a
// time. Everything it adds to the host it removes when it stops.
func Run(ctx context.Context, dir string, o RunOptions) (err error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Verbosef == nil {
		o.Verbosef = func(string, ...any) {}
	}
	ready := func(e error) { // reports once
		if o.Ready != nil {
			o.Ready(e)
			o.Ready = nil
		}
	}
	defer func() { ready(err) }()
	cfg, reg, err := Load(ctx, dir)
	if err != nil {
		return err
	}
	defer reg.Close()
	keyText, err := os.ReadFile(filepath.Join(dir, "gateway.key"))
	if err != nil {
		return err
	}
	key, err := noise.ParsePrivateKeyBase64(strings.TrimSpace(string(keyText)))
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, "gateway.key"), err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return err
	}
	pools, err := reg.ListPools(ctx)
	if err != nil {
		return err
	}
	// The metrics listener first: a port that is taken fails the start
	// before anything is made.
	var tel *telemetry.Server // nil: no metrics
	if cfg.Metrics.IsValid() {
		tel = telemetry.New()
		if err := tel.Listen(cfg.Metrics); err != nil {
			return err
		}
		defer tel.Close()
	}

	// The interface: a front in this process, its engine confined.
	handlers := make(chan uapi.Handler, 1)
	upErr := make(chan error, 1)
	stop := make(chan struct{})
	frontDone := make(chan error, 1)
	go func() {
		frontDone <- front.Run(front.Config{
			Name: cfg.Interface, MTU: cfg.Site.MTU, Mode: o.Mode, Logf: o.Logf, Verbosef: o.Verbosef,
			EngineCommand: o.EngineCommand,
			OnUp:          func(h uapi.Handler) { handlers <- h },
		}, stop, func(e error) { upErr <- e })
	}()
	defer func() {
		close(stop)
		<-frontDone
	}()
	if err := <-upErr; err != nil {
		return err
	}
	h := <-handlers
	port := cfg.Endpoint.Port()
	if err := h.Set(&wgcfg.DeviceConfig{PrivateKey: &key, ListenPort: &port, ReplacePeers: true}); err != nil {
		return fmt.Errorf("configuring %s: %w", cfg.Interface, err)
	}
	host := hostState{record: filepath.Join(dir, "host.json")}
	defer host.undo(o.Logf)
	if err := host.apply(cfg, pools); err != nil {
		return err
	}

	// The enrollment API, and the device status endpoint beside it.
	ln, err := net.Listen("tcp", cfg.API.String())
	if err != nil {
		return fmt.Errorf("the enrollment API on %s: %w", cfg.API, err)
	}
	if ca := controlAddr(pools); ca.IsValid() {
		cfg.Site.Control = netip.AddrPortFrom(ca, ControlPort)
	}
	s := &syncer{reg: reg, cfg: cfg, h: h, logf: o.Logf, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	// The OpenConnect listener and its engine, if the gateway has one.
	tg, err := startTLS(dir, cfg, reg, key, o.Mode, o.TLSEngineCommand, o.Logf, o.Verbosef)
	if err != nil {
		return err
	}
	if tg != nil {
		defer tg.close()
	}
	// Devices learn where the listener is from their offers: the
	// registry's record of this gateway says so, whatever gateway.json
	// said at init.
	tlsURL := cfg.TLSURL()
	advertiseTLS(ctx, reg, cfg.Name, tlsURL, o.Logf)
	var api apiCounter
	if err := s.serveMetrics(tel, &api); err != nil {
		return err
	}
	if tg != nil && tel != nil {
		if err := tel.Register(newTLSCollector(tg)); err != nil {
			return err
		}
	}
	logger := slog.New(slog.NewTextHandler(logWriter{o.Logf}, nil))
	// A new device is a peer before its offer leaves, so that its first
	// handshake is answered.
	enroller := &RegistryEnroller{Registry: reg, SiteNow: s.site, AfterEnroll: s.afterEnroll}
	mux := http.NewServeMux()
	mux.Handle(EnrollPath, EnrollHandler(enroller, logger))
	mux.Handle(enroll.StatusPath, statusHandler(key, reg, logger))
	srv := NewServer(api.wrap(mux))
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()

	// The admin API, on its own listener.
	if cfg.Admin.IsValid() {
		health := tel.Health()
		if health == nil {
			health = &telemetry.Health{}
			health.Add(telemetry.Check{Name: "registry", Run: s.registryHealth})
			health.Add(telemetry.Check{Name: "engine", Run: func() error { return front.EngineRunning(h) }})
		}
		// The page's charts: sampled while the gateway runs, stopped
		// (after the listener) when it stops.
		var hist *History
		if dev, ok := h.(telemetry.Device); ok {
			hist = NewHistory(HistoryOptions{Source: dev, DeviceID: s.peerDevice})
			hctx, stopHist := context.WithCancel(ctx)
			histDone := make(chan struct{})
			go func() {
				defer close(histDone)
				hist.Run(hctx)
			}()
			defer func() {
				stopHist()
				<-histDone
			}()
		}
		asrv, _, err := serveAdmin(dir, cfg, reg, cert, health, h, tg, hist, logger)
		if err != nil {
			return err
		}
		defer asrv.Close()
	}

	// The control service, inside the tunnel.
	if c := cfg.Site.Control; c.IsValid() {
		cln, err := listenControl(ctx, c.Addr(), cfg.Interface)
		if err != nil {
			return fmt.Errorf("the control service on %v: %w", c, err)
		}
		csrv := NewServer(controlHandler(s, logger))
		go csrv.Serve(cln)
		defer csrv.Close()
	}

	if err := s.sync(ctx); err != nil {
		return fmt.Errorf("the first sync with the registry: %w", err)
	}
	o.Logf("gateway %s up: %s on UDP %s, enrollment API %s, control service http://%v, %d devices",
		cfg.Name, cfg.Interface, cfg.Endpoint, cfg.APIURL(), cfg.Site.Control, len(s.peers))
	if cfg.Admin.IsValid() {
		o.Logf("gateway %s: admin API on %s%s/ and health on %s%s", cfg.Name, cfg.AdminURL(), AdminPrefix, cfg.AdminURL(), AdminHealthPath)
	}
	if tel != nil {
		o.Logf("gateway %s: metrics on http://%v%s and health on http://%v%s (plain HTTP: keep it on loopback or a management network)",
			cfg.Name, tel.Addr(), telemetry.MetricsPath, tel.Addr(), telemetry.HealthPath)
	}
	ready(nil)
	cfgFile := filepath.Join(dir, "gateway.json")
	cfgStat, _ := os.Stat(cfgFile)
	tick := time.NewTicker(syncEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-frontDone:
			frontDone <- err
			return fmt.Errorf("the interface stopped: %v", err)
		case <-tick.C:
			// gateway.json edited (ptun gateway route add, or by hand):
			// its routes, DNS and search domains reach devices at once.
			if st, err := os.Stat(cfgFile); err == nil && (cfgStat == nil || !st.ModTime().Equal(cfgStat.ModTime()) || st.Size() != cfgStat.Size()) {
				cfgStat = st
				if nc, err := LoadConfig(dir); err != nil {
					o.Logf("gateway: %v: keeping the configuration it had", err)
				} else {
					s.setConfig(nc)
					if tg != nil {
						tg.setConfig(nc)
					}
					o.Logf("gateway: configuration reloaded: routes %v, DNS %v, search %v", nc.Site.Routes, nc.Site.DNS, nc.Site.Search)
					if u := nc.TLSURL(); u != tlsURL {
						// The listener is the one Run started: advertising
						// another would send devices where none listens.
						o.Logf("gateway: the OpenConnect listener changed in gateway.json (%s, was %s): it moves, and devices are told, when the gateway restarts",
							orNone(u), orNone(tlsURL))
					}
				}
			}
			if err := s.sync(ctx); err != nil {
				// The devices already configured keep working.
				s.logOnce("the registry is unreachable (%v): devices already configured keep working; enrollment and changes wait", err)
			}
			if tg != nil {
				if err := tg.sync(ctx); err != nil {
					s.logOnce("the registry is unreachable (%v): OpenConnect sessions keep working; logins wait", err)
				}
			}
		}
	}
}

// advertiseTLS makes the registry's record of gateway name say that its
// OpenConnect listener is at u ("": none) if it says otherwise, so that
// devices' offers name the listener this gateway runs. A failure is
// logged: the listener works, and the next start tries again.
func advertiseTLS(ctx context.Context, reg registry.Gateways, name, u string, logf func(string, ...any)) {
	gws, err := reg.ListGateways(ctx)
	if err != nil {
		logf("gateway %s: cannot read its registry record to advertise its OpenConnect listener: %v", name, err)
		return
	}
	for _, g := range gws {
		if g.Name != name {
			continue
		}
		if g.TLS == u {
			return
		}
		if err := reg.SetGatewayTLS(registry.WithActor(ctx, "gateway:"+name), name, u); err != nil {
			logf("gateway %s: cannot advertise its OpenConnect listener %s (the registry says %s): %v", name, orNone(u), orNone(g.TLS), err)
			return
		}
		logf("gateway %s: advertises its OpenConnect listener to devices: %s (was %s)", name, orNone(u), orNone(g.TLS))
		return
	}
	logf("gateway %s: the registry has no record of this gateway: its OpenConnect listener is not advertised", name)
}

// orNone is s, or "none" for "".
func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// serveAdmin serves the admin API of the gateway in dir on cfg.Admin,
// HTTPS with cert unless cfg.AdminPlain, with health at /healthz, the
// live figures of h's peers (nil: none) and hist's overview and history
// (nil: none), until the server is closed. It returns the listener's
// address.
func serveAdmin(dir string, cfg *Config, reg registry.Registry, cert tls.Certificate, health *telemetry.Health, h uapi.Handler, tg *tlsGateway, hist *History, logger *slog.Logger) (*http.Server, net.Addr, error) {
	pin, err := Pin(dir)
	if err != nil {
		return nil, nil, err
	}
	o := AdminOptions{Registry: reg, Health: health, Secure: !cfg.AdminPlain, Logger: logger, Gateway: cfg.Name, History: hist,
		InviteURL: func(secret string) (string, error) { return InviteURL(cfg, secret, pin) }}
	if h != nil {
		o.Peers = func() ([]wgcfg.PeerState, error) {
			st, err := h.Get()
			if err != nil {
				return nil, err
			}
			return st.Peers, nil
		}
	}
	if tg != nil {
		o.TLSSessions = tg.lastSessions
	}
	ln, err := net.Listen("tcp", cfg.Admin.String())
	if err != nil {
		return nil, nil, fmt.Errorf("the admin API on %s: %w", cfg.Admin, err)
	}
	srv := NewServer(AdminHandler(o))
	if cfg.AdminPlain {
		go srv.Serve(ln)
	} else {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
		go srv.ServeTLS(ln, "", "")
	}
	return srv, ln.Addr(), nil
}

// serveMetrics gives tel (nil: none) the interface's metrics, labelled by
// user and device, the gateway's own, and the checks engine and registry.
func (s *syncer) serveMetrics(tel *telemetry.Server, api *apiCounter) error {
	if tel == nil {
		return nil
	}
	dev, ok := s.h.(telemetry.Device)
	if !ok {
		return fmt.Errorf("metrics: the interface %s has no counters to read", s.cfg.Interface)
	}
	// The registry's check first: with only the engine's, /healthz would
	// say ok before the first sync.
	tel.AddCheck(telemetry.Check{Name: "registry", Run: s.registryHealth})
	h := s.h
	if err := tel.AddInterface(telemetry.Interface{Name: s.cfg.Interface, Device: dev, PeerNames: s.peerName,
		Engine: func() error { return front.EngineRunning(h) }}); err != nil {
		return err
	}
	return tel.Register(newGatewayCollector(s, api))
}

// logWriter makes a log function an io.Writer (for slog).
type logWriter struct{ logf func(string, ...any) }

func (w logWriter) Write(b []byte) (int, error) {
	w.logf("%s", strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// syncer keeps the interface's peers equal to the registry's active
// devices, changing only the peers that differ.
type syncer struct {
	mu      sync.Mutex // serializes sync; guards the fields below
	reg     registry.Registry
	cfg     *Config
	h       uapi.Handler
	logf    func(string, ...any)
	peers   map[noise.PublicKey]wgcfg.PeerConfig // what the interface has
	seq     uint64
	synced  bool
	lastErr string

	// What the control service answers from, as of the last sync.
	byAddr   map[netip.Addr]registry.Device
	gateways []registry.Gateway

	// What the metrics and /healthz read, without mu: a sync holds mu for
	// as long as the registry takes to answer.
	stats syncStats
	names atomic.Pointer[map[noise.PublicKey]deviceName] // as of the last sync
}

// syncStats are the syncer's event counts and the registry's state as the
// last sync found it.
type syncStats struct {
	enrollments    atomic.Uint64 // devices enrolled through this gateway's API
	revocations    atomic.Uint64 // peers removed because their device left the registry's active ones
	registryErrors atomic.Uint64 // syncs the registry did not answer
	applyFailures  atomic.Uint64 // syncs whose peer changes the interface refused
	devices        atomic.Int64  // the registry's active devices, the interface's peers
	lastAnswer     atomic.Int64  // Unix ns of the last sync the registry answered; 0: none yet
	lastErr        atomic.Pointer[syncFailure]
}

// syncFailure is a sync that the registry did not answer.
type syncFailure struct {
	at  time.Time
	err error
}

// deviceName is how the metrics label a device's peer, and the device's
// registry ID (for the admin page's history).
type deviceName struct {
	user, device string
	id           int64
}

// registryStale is how long without an answer from the registry (a sync
// blocked on it) makes the gateway unhealthy. A sync asks every syncEvery.
const registryStale = 15 * time.Second

// registryFailed records that the registry did not answer a sync, and
// returns err.
func (s *syncer) registryFailed(err error) error {
	s.stats.registryErrors.Add(1)
	s.stats.lastErr.Store(&syncFailure{at: time.Now(), err: err})
	return err
}

func (s *syncer) registryAnswered() {
	s.stats.lastErr.Store(nil)
	s.stats.lastAnswer.Store(time.Now().UnixNano())
}

// registryHealth is /healthz's check "registry": the registry answered at
// the last sync, and a sync has not waited on it for registryStale.
func (s *syncer) registryHealth() error {
	if f := s.stats.lastErr.Load(); f != nil {
		return fmt.Errorf("unreachable at the last sync (%s): %v", f.at.UTC().Format(time.RFC3339), f.err)
	}
	last := s.stats.lastAnswer.Load()
	if last == 0 {
		return errors.New("not synced with the registry yet")
	}
	if age := time.Since(time.Unix(0, last)); age > registryStale {
		return fmt.Errorf("no answer from the registry for %v", age.Round(time.Second))
	}
	return nil
}

// afterEnroll is the RegistryEnroller's AfterEnroll: it counts the
// enrollment and makes the new device a peer.
func (s *syncer) afterEnroll(ctx context.Context) error {
	s.stats.enrollments.Add(1)
	return s.sync(ctx)
}

// peerName names the device whose key is k, as of the last sync.
func (s *syncer) peerName(k noise.PublicKey) (user, device string, ok bool) {
	m := s.names.Load()
	if m == nil {
		return "", "", false
	}
	n, ok := (*m)[k]
	return n.user, n.device, ok
}

// peerDevice is the registry ID of the device whose key is k, as of the
// last sync.
func (s *syncer) peerDevice(k noise.PublicKey) (int64, bool) {
	m := s.names.Load()
	if m == nil {
		return 0, false
	}
	n, ok := (*m)[k]
	return n.id, ok
}

// site is the current Site.
func (s *syncer) site() Site {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.Site
}

// setConfig makes cfg (reloaded from the state folder) the syncer's: the
// next sync recomputes every peer's access.
func (s *syncer) setConfig(cfg *Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cfg.Site.Control = s.cfg.Site.Control
	s.cfg, s.synced = cfg, false
}

// offerByAddr implements offerSource from the last sync's view.
func (s *syncer) offerByAddr(a netip.Addr) (*profile.Offer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.byAddr[a.Unmap()]
	if !ok {
		return nil, errNoDevice
	}
	return makeOffer(s.gateways, s.cfg.Site, d)
}

func (s *syncer) logOnce(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if msg != s.lastErr {
		s.logf("%s", msg)
		s.lastErr = msg
	}
}

func (s *syncer) sync(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	changes, now, err := s.reg.Changes(ctx, s.seq)
	if err != nil {
		return s.registryFailed(err)
	}
	if len(changes) == 0 && s.synced {
		s.registryAnswered()
		return nil
	}
	want, byAddr, names, err := s.desired(ctx)
	if err != nil {
		return s.registryFailed(err)
	}
	gws, err := s.reg.ListGateways(ctx)
	if err != nil {
		return s.registryFailed(err)
	}
	s.registryAnswered()
	var cfg wgcfg.DeviceConfig
	removed := 0
	for k := range s.peers {
		if _, ok := want[k]; !ok {
			cfg.Peers = append(cfg.Peers, wgcfg.PeerConfig{PublicKey: k, Remove: true})
			removed++
		}
	}
	for k, pc := range want {
		if cur, ok := s.peers[k]; ok && samePeer(cur, pc) {
			continue
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	if len(cfg.Peers) > 0 {
		if err := s.h.Set(&cfg); err != nil {
			s.stats.applyFailures.Add(1)
			return fmt.Errorf("configuring the interface: %w", err)
		}
		s.logf("registry sync: %d peer changes", len(cfg.Peers))
	}
	s.stats.revocations.Add(uint64(removed))
	s.stats.devices.Store(int64(len(want)))
	s.names.Store(&names)
	s.peers, s.seq, s.synced = want, now, true
	s.byAddr, s.gateways = byAddr, gws
	s.lastErr = ""
	return nil
}

// desired computes every active WireGuard device's peer: its addresses
// as allowed IPs and the access rules of its user's groups; and each
// device by its addresses and its name by its key. OpenConnect devices
// are left out: their keys are random bytes, never peers (TLSAuth serves
// them), and the control service's offers are WireGuard profiles.
func (s *syncer) desired(ctx context.Context) (map[noise.PublicKey]wgcfg.PeerConfig, map[netip.Addr]registry.Device, map[noise.PublicKey]deviceName, error) {
	devs, err := s.reg.ListDevices(ctx, registry.DeviceFilter{Protocol: registry.ProtocolWireGuard})
	if err != nil {
		return nil, nil, nil, err
	}
	byGroup, err := rulesByGroup(ctx, s.reg)
	if err != nil {
		return nil, nil, nil, err
	}
	groupsOf, err := memberships(ctx, s.reg)
	if err != nil {
		return nil, nil, nil, err
	}
	want := make(map[noise.PublicKey]wgcfg.PeerConfig, len(devs))
	byAddr := make(map[netip.Addr]registry.Device, len(devs))
	names := make(map[noise.PublicKey]deviceName, len(devs))
	for _, d := range devs {
		if d.Protocol != registry.ProtocolWireGuard { // the filter says so; a second look costs nothing
			continue
		}
		gs := groupsOf[d.User]
		k := noise.PublicKey(d.PublicKey)
		pc := wgcfg.PeerConfig{PublicKey: k, ReplaceAllowedIPs: true, Access: &wgcfg.AccessRules{Rules: s.access(gs, byGroup)}}
		for _, a := range d.Addresses {
			pc.AddAllowedIPs = append(pc.AddAllowedIPs, netip.PrefixFrom(a, a.BitLen()))
			byAddr[a] = d
		}
		want[k] = pc
		names[k] = deviceName{user: d.User, device: d.Name, id: d.ID}
	}
	return want, byAddr, names, nil
}

// rulesByGroup is every access rule, by group name.
func rulesByGroup(ctx context.Context, reg registry.Rules) (map[string][]registry.Rule, error) {
	rules, err := reg.ListRules(ctx, "")
	if err != nil {
		return nil, err
	}
	byGroup := map[string][]registry.Rule{}
	for _, r := range rules {
		byGroup[r.Group] = append(byGroup[r.Group], r)
	}
	return byGroup, nil
}

// memberships returns every user's groups, by name, each user's in name
// order (as GroupsOf gives them): one query per group, not one per user,
// so a sync at a gateway of 1,000 users costs a few queries instead of a
// thousand. A group removed meanwhile is left out: its change brings
// another sync.
func memberships(ctx context.Context, reg registry.Groups) (map[string][]registry.Group, error) {
	groups, err := reg.ListGroups(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]registry.Group{}
	for _, g := range groups {
		members, err := reg.Members(ctx, g.Name)
		if errors.Is(err, registry.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, u := range members {
			out[u.Name] = append(out[u.Name], g)
		}
	}
	return out, nil
}

// access is accessRules at the syncer's configuration.
func (s *syncer) access(groups []registry.Group, byGroup map[string][]registry.Rule) []acl.Rule {
	return accessRules(s.cfg, groups, byGroup)
}

// accessRules is what a member of groups may reach at a gateway of cfg:
// each group's rules, and for a group without rules (or a user in no
// group) every route the gateway offers, unless the gateway denies by
// default; and the gateway's control service. The answer is never nil:
// there is no "allow all" (an open device gets one rule per route
// offered), and an empty list allows nothing. WireGuard peers and
// OpenConnect sessions get their rules from here alike.
func accessRules(cfg *Config, groups []registry.Group, byGroup map[string][]registry.Rule) []acl.Rule {
	var out []acl.Rule
	open := len(groups) == 0
	for _, g := range groups {
		rs := byGroup[g.Name]
		if len(rs) == 0 {
			open = true
		}
		for _, r := range rs {
			out = append(out, acl.Rule{Dst: r.Dest, Proto: map[registry.Proto]uint8{registry.ProtoTCP: acl.ProtoTCP,
				registry.ProtoUDP: acl.ProtoUDP, registry.ProtoICMP: acl.ProtoICMP}[r.Proto], PortLo: r.PortFrom, PortHi: r.PortTo})
		}
	}
	if open && !cfg.DefaultDeny {
		for _, r := range cfg.Site.Routes {
			out = append(out, acl.Rule{Dst: r})
		}
	}
	if c := cfg.Site.Control; c.IsValid() {
		// Every device may reach the gateway's control service (and ping
		// the gateway), whatever its access rules.
		host := netip.PrefixFrom(c.Addr(), c.Addr().BitLen())
		out = append(out, acl.Rule{Dst: host, Proto: acl.ProtoTCP, PortLo: c.Port(), PortHi: c.Port()},
			acl.Rule{Dst: host, Proto: acl.ProtoICMP})
	}
	if out == nil {
		out = []acl.Rule{} // nothing: a filter that allows nothing
	}
	return out
}

// controlAddr is the gateway's address in the first IPv4 pool (else the
// first pool): where the control service listens.
func controlAddr(pools []registry.Pool) netip.Addr {
	var a netip.Addr
	for _, p := range pools {
		if g := p.Prefix.Addr().Next(); g.Is4() {
			return g
		} else if !a.IsValid() {
			a = g
		}
	}
	return a
}

func samePeer(a, b wgcfg.PeerConfig) bool {
	return slices.Equal(a.AddAllowedIPs, b.AddAllowedIPs) && slices.Equal(a.Access.Rules, b.Access.Rules)
}

// hostState is what Run adds to the host, to be removed when it stops.
// The sysctls' values before are also written to a record in the state
// folder before they change, so that a run after one that crashed puts
// back the values from before that one (not the "1" it left).
type hostState struct {
	record   string            // the record's path
	sysctls  map[string]string // path -> value before
	nftTable string
}

// hostRecord is host.json.
type hostRecord struct {
	Sysctls map[string]string `json:"sysctls"`
}

// apply gives the interface the gateway's address in each pool, turns on
// forwarding, and with masquerade adds the NAT table.
func (hs *hostState) apply(cfg *Config, pools []registry.Pool) error {
	link, err := netlink.LinkByName(cfg.Interface)
	if err != nil {
		return err
	}
	for _, p := range pools {
		gw := p.Prefix.Addr().Next() // the first address: reserved for the gateway
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(p.Prefix.Bits(), gw.BitLen())}}
		if gw.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("address %v on %s: %w", gw, cfg.Interface, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	if err := hs.forward(); err != nil {
		return err
	}
	if cfg.Masquerade {
		ifnames := []string{cfg.Interface}
		if cfg.TLS.IsValid() {
			ifnames = append(ifnames, cfg.TLSInterface())
		}
		return hs.masquerade(ifnames...)
	}
	return nil
}

// forward turns IPv4 and IPv6 forwarding on, recording the values before.
func (hs *hostState) forward() error {
	hs.sysctls = map[string]string{}
	var prev hostRecord // what a run that crashed found before it
	if b, err := os.ReadFile(hs.record); err == nil {
		json.Unmarshal(b, &prev)
	}
	for _, path := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		cur, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		old := strings.TrimSpace(string(cur))
		if v, ok := prev.Sysctls[path]; ok {
			old = v
		}
		if old == "1" {
			continue
		}
		hs.sysctls[path] = old
		if err := writeRecord(hs.record, hostRecord{Sysctls: hs.sysctls}); err != nil {
			return fmt.Errorf("recording the host's settings in %s: %w", hs.record, err)
		}
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("turning on forwarding: %w", err)
		}
	}
	return nil
}

// masquerade adds an inet nat table that source-NATs what comes from the
// tunnel and leaves by another interface. A table that a gateway which
// died left behind is emptied first, in the same transaction, so that a
// restart does not add its rule a second time.
func (hs *hostState) masquerade(ifnames ...string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	name := "ptun_gateway_" + ifnames[0]
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	c.FlushTable(t)
	ch := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	// One rule per tunnel interface (WireGuard's, OpenConnect's).
	for _, ifname := range ifnames {
		b := make([]byte, unix.IFNAMSIZ)
		copy(b, ifname)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: b},
			&expr.Masq{},
		}})
	}
	hs.nftTable = name
	if err := c.Flush(); err != nil {
		hs.nftTable = ""
		return fmt.Errorf("masquerade: %w", err)
	}
	return nil
}

func (hs *hostState) undo(logf func(string, ...any)) {
	if hs.nftTable != "" {
		if c, err := nftables.New(); err == nil {
			c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: hs.nftTable})
			if err := c.Flush(); err != nil {
				logf("gateway: removing the masquerade table: %v", err)
			}
		}
	}
	restored := true
	for path, old := range hs.sysctls {
		if err := os.WriteFile(path, []byte(old), 0o644); err != nil {
			logf("gateway: restoring %s: %v", path, err)
			restored = false
		}
	}
	if restored && hs.record != "" {
		os.Remove(hs.record)
	}
}

// writeRecord replaces path with r, whole or not at all.
func writeRecord(path string, r hostRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
