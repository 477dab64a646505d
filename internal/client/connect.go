package client

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/netconf"
	"github.com/ptun-vpn/ptun/internal/occlient"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/tun"
)

// `ptun connect https://HOST[:PORT] --user NAME` runs a tunnel to any
// OpenConnect server (ocserv, a Cisco-compatible gateway, ptun's) in a
// daemon of its own (Connect), as `ptun up` runs a profile's:
//
//   - the front, in the daemon, holds the privilege: it creates the TUN
//     device, dials every socket to the server itself (marked FwMark, so
//     that they pass a full tunnel's policy routing and the kill switch),
//     applies what the server pushes (addresses, routes or a full tunnel,
//     excludes, DNS, search domains, MTU) with package netconf as a
//     profile's plan, and supervises the engine;
//   - the engine (package occlient, `ptun --oc-client-engine-of IFNAME`,
//     confined as the WireGuard engine is) does TLS, the login, CONNECT,
//     CSTP and DTLS and the data path, and asks the front for its sockets.
//
// When the session ends (the TLS connection dies, the server restarts or
// kicks it) the engine connects again with the session's cookie while the
// interface, routes and kill switch stay; when the server refuses the
// cookie the daemon gives up, keeps the host configuration (kill switch
// included) and says so in ptun status, until ptun down. An engine that
// dies is started again with the cookie, never the password: the front
// forgets the password once the first engine has it.
//
// The state record is the same as ptun up's (Kind "openconnect"), so
// ptun down and ptun status work alike.

// KindOpenConnect is the State.Kind of a ptun connect tunnel.
const KindOpenConnect = "openconnect"

// DefaultOCPort is the port of an https:// URL without one.
const DefaultOCPort = 443

// ConnectOptions configure Connect.
type ConnectOptions struct {
	// Options: State, KillSwitch, ResolvConf, Logf, Verbosef, Mode,
	// EngineCommand and Probe (how often the engine is asked for its
	// state, default 2 s) are used; Wait bounds the first login and
	// connect (default 30 s).
	Options
	URL         string // https://HOST[:PORT]
	User        string
	Password    string // read once; never logged, never written down
	Pin         string // pin-sha256:BASE64, or "" to check the certificate against the system's roots
	DisableDTLS bool
	// RootsFile is the system's CA bundle, read when there is no Pin
	// (default: the first of the usual Debian, Fedora and SUSE paths).
	RootsFile string
	// Reconnect bounds the engine's wait between reconnection attempts
	// (default 30 s); for tests.
	Reconnect time.Duration
	// Verbose asks the engine for its detailed log lines too.
	Verbose bool
}

// Server is an OpenConnect server's URL, checked.
type Server struct {
	Host string // a name or an address (IPv6 without brackets)
	Port uint16
}

// String is the URL in its canonical form.
func (s Server) String() string {
	return "https://" + net.JoinHostPort(s.Host, strconv.Itoa(int(s.Port)))
}

// ParseServerURL checks a server's URL: https://HOST[:PORT] (the scheme may
// be left out), HOST a DNS name or an address, no user, path, query or
// fragment.
func ParseServerURL(s string) (Server, error) {
	if s == "" {
		return Server{}, errors.New("no server URL (https://HOST[:PORT])")
	}
	raw := s
	if !strings.Contains(s, "://") {
		raw = "https://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Server{}, fmt.Errorf("server URL %q: %v", s, unwrapURLError(err))
	}
	switch {
	case u.Scheme != "https":
		return Server{}, fmt.Errorf("server URL %q: the scheme must be https (OpenConnect runs over TLS)", s)
	case u.User != nil:
		return Server{}, fmt.Errorf("server URL %q: give the user name with --user, not in the URL", s)
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(raw, "?") || strings.HasSuffix(raw, "#"):
		return Server{}, fmt.Errorf("server URL %q: no query or fragment, just https://HOST[:PORT]", s)
	case u.Path != "" && u.Path != "/":
		return Server{}, fmt.Errorf("server URL %q: a path (%s) selects a user group, which ptun connect does not support: give https://HOST[:PORT]", s, u.Path)
	case u.Hostname() == "":
		return Server{}, fmt.Errorf("server URL %q: no host", s)
	}
	srv := Server{Host: u.Hostname(), Port: DefaultOCPort}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return Server{}, fmt.Errorf("server URL %q: port %q is not a number from 1 to 65535", s, p)
		}
		srv.Port = uint16(n)
	} else if strings.HasSuffix(u.Host, ":") {
		return Server{}, fmt.Errorf("server URL %q: an empty port", s)
	}
	if a, err := netip.ParseAddr(srv.Host); err == nil {
		if a.Zone() != "" {
			return Server{}, fmt.Errorf("server URL %q: an address with a zone is not supported", s)
		}
		srv.Host = a.Unmap().String()
	} else if strings.HasPrefix(u.Host, "[") || !netconf.ValidDomain(srv.Host) {
		return Server{}, fmt.Errorf("server URL %q: %q is neither an IP address nor a DNS name", s, srv.Host)
	}
	return srv, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// CheckPin checks a --servercert pin: pin-sha256: and the base64 of a
// SHA-256 digest (the server's public key's, as openconnect prints it).
func CheckPin(pin string) error {
	const hint = "want pin-sha256:BASE64, the SHA-256 of the server's public key as openconnect --servercert takes it (openconnect prints it when it rejects a certificate)"
	b64, ok := strings.CutPrefix(pin, "pin-sha256:")
	if !ok {
		return fmt.Errorf("--servercert %q: %s", clip(pin), hint)
	}
	sum, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha256.Size {
		return fmt.Errorf("--servercert %q: not the base64 of a 32-byte SHA-256 digest; %s", clip(pin), hint)
	}
	return nil
}

// CheckUser checks a --user name: 1-256 bytes, no control characters.
func CheckUser(u string) error {
	if u == "" {
		return errors.New("--user is required: the user name to log in with")
	}
	if len(u) > 256 {
		return errors.New("--user: longer than 256 bytes")
	}
	for _, r := range u {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("--user %q: holds a control character", clip(u))
		}
	}
	return nil
}

// DefaultConnectName is the name of a tunnel to host when --name is not
// given: the host, with what a name may not hold replaced by '-'.
func DefaultConnectName(host string) string {
	b := []byte(host)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// rootsFiles are where distributions keep the system's CA bundle.
var rootsFiles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu
	"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL
	"/etc/ssl/ca-bundle.pem",                            // openSUSE
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS
}

// readRoots reads the system's CA bundle for an engine that has no
// filesystem.
func readRoots(file string) ([]byte, error) {
	files := rootsFiles
	if file != "" {
		files = []string{file}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && len(b) > 0 {
			return b, nil
		}
	}
	return nil, fmt.Errorf("no pin (--servercert) and no system CA bundle (%s) to check the server's certificate with", strings.Join(files, ", "))
}

// resolveServer returns the address to dial: the host's own, or its first
// address in DNS (IPv4 first), looked up once, before the tunnel changes
// the resolver.
func resolveServer(ctx context.Context, s Server) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s.Host); err == nil {
		return netip.AddrPortFrom(a, s.Port), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", s.Host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("looking up %s: %w", s.Host, err)
	}
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
		switch {
		case a.Unmap().Is4() && !b.Unmap().Is4():
			return -1
		case !a.Unmap().Is4() && b.Unmap().Is4():
			return 1
		}
		return 0
	})
	if len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%s has no address", s.Host)
	}
	return netip.AddrPortFrom(addrs[0].Unmap(), s.Port), nil
}

// ocEvent is a notice of the engine's, for the daemon's loop.
type ocEvent struct {
	up   *occlient.UpNotice
	down *occlient.DownNotice
}

// ocFront is the privileged side of one ptun connect tunnel.
type ocFront struct {
	name, ifname string
	o            *ConnectOptions
	srv          Server
	addr         netip.AddrPort // what the front dials
	st           *State
	dev          tun.Device
	roots        []byte
	hostname     string

	events chan ocEvent
	stop   chan struct{}

	// hosted: the interface, the host configuration and the state file
	// are the caller's (ptun up's TLS path, fallback.go): a session's
	// push is recorded in st, never applied, and st never saved.
	hosted bool

	mu     sync.Mutex // guards cookie, password
	cookie string
	// password is given to the first engine only, then forgotten.
	password string

	// addrs are the tunnel's addresses: a relaying flow (shm, seqpacket)
	// writes to the TUN only packets for them (dstCheck).
	addrs atomic.Pointer[[]netip.Addr]
	// engine is the running engine, for the metrics' scrapes (nil: none).
	engine atomic.Pointer[ocEngine]

	// The daemon's loop's alone:
	plan   *netconf.Plan
	isUp   bool // the first session came up
	gaveUp bool
}

// ocEngine is one engine process.
type ocEngine struct {
	*front.EngineProcess
	link ipc.Link
}

// Connect is the daemon of a ptun connect tunnel called name (see above).
// It calls ready once: nil when the first session is up and its network
// configuration applied, or the error that stopped it (a refused
// password, say). It returns when ctx ends, having logged out and undone
// everything, or on an error before ready (having undone everything too).
func Connect(ctx context.Context, name string, o ConnectOptions, ready func(error)) (err error) {
	if o.Wait == 0 {
		o.Wait = 30 * time.Second
	}
	o.defaults()
	reported := false
	report := func(e error) {
		if !reported && ready != nil {
			reported = true
			ready(e)
		}
	}
	defer func() { report(err) }()
	if os.Geteuid() != 0 {
		return errors.New("ptun connect needs root (it creates an interface and sets routes): run it with sudo")
	}
	if err := profile.CheckName(name); err != nil {
		return err
	}
	srv, err := ParseServerURL(o.URL)
	if err != nil {
		return err
	}
	if o.Pin != "" {
		if err := CheckPin(o.Pin); err != nil {
			return err
		}
	}
	if err := CheckUser(o.User); err != nil {
		return err
	}
	if o.Password == "" {
		return errors.New("an empty password")
	}
	if o.EngineCommand == nil {
		return errors.New("ptun connect: no engine command")
	}
	if o.Mode == ipc.Inproc || o.Mode == "" {
		o.Mode = ipc.FD
	}
	ifname := Interface(name)
	if st, err := loadState(&o.Options, name); err == nil {
		if daemonAlive(st) {
			return fmt.Errorf("%s is up already (interface %s, daemon %d): ptun down %s first", name, st.Interface, st.PID, name)
		}
		o.Logf("cleaning up what a previous tunnel %s left", name)
		if err := cleanup(st, &o.Options); err != nil {
			return fmt.Errorf("cleaning up a previous tunnel %s: %w", name, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if linkUp(ifname) {
		return fmt.Errorf("interface %s exists already and is not ptun's record of %s: remove it (ip link del %s) or choose another --name", ifname, name, ifname)
	}
	addr, err := resolveServer(ctx, srv)
	if err != nil {
		return err
	}
	// The metrics listener before anything is made: a port that is taken
	// fails the start with nothing to undo.
	var tel *telemetry.Server // nil: no metrics
	if o.Metrics.IsValid() {
		tel = telemetry.New()
		if err := tel.Listen(o.Metrics); err != nil {
			return err
		}
		defer tel.Close()
	}
	f := &ocFront{name: name, ifname: ifname, o: &o, srv: srv, addr: addr, password: o.Password,
		events: make(chan ocEvent, 16), stop: make(chan struct{})}
	if err := f.addSessionMetrics(tel); err != nil {
		return err
	}
	o.Password = ""
	if o.Pin == "" {
		if f.roots, err = readRoots(o.RootsFile); err != nil {
			return err
		}
	}
	f.hostname, _ = os.Hostname()
	f.st = &State{Profile: name, Interface: ifname, Kind: KindOpenConnect, Server: srv.String(), Endpoint: addr,
		User: o.User, PID: os.Getpid(), Started: startTime(os.Getpid()), Since: time.Now().UTC()}
	if err := saveState(&o.Options, f.st); err != nil {
		return fmt.Errorf("recording the state in %s: %w", o.State, err)
	}
	if f.dev, err = tun.Create(ifname, tun.OptionsFromEnv(tun.Options{MTU: 1400, Logf: o.Verbosef})); err != nil {
		os.Remove(statePath(&o.Options, name))
		return err
	}
	if o.Mode == ipc.FD {
		if err := tun.Park(f.dev); err != nil {
			f.dev.Close()
			os.Remove(statePath(&o.Options, name))
			return err
		}
	}
	var ep *ocEngine
	keep := false // the interface died under a running tunnel
	defer func() {
		close(f.stop)
		if ep != nil {
			f.stopEngine(ep)
		}
		if keep {
			o.Logf("%s: the host configuration (and kill switch) stays until ptun down %s", name, name)
			f.dev.Close()
			return
		}
		save := func(r *netconf.Record) error { f.st.Netconf = *r; return saveState(&o.Options, f.st) }
		uerr := netconf.Undo(&f.st.Netconf, netconf.Options{Save: save})
		f.dev.Close()
		if uerr != nil {
			err = errors.Join(err, uerr)
			return
		}
		os.Remove(statePath(&o.Options, name))
	}()
	if ep, err = f.startEngine(); err != nil {
		ep = nil // startEngine stopped it
		return err
	}
	first := time.NewTimer(o.Wait)
	defer first.Stop()
	tick := time.NewTicker(o.Probe)
	defer tick.Stop()
	misses := 0
	backoff := time.Duration(0)
	var retry <-chan time.Time // a new engine is due
	for {
		var exited <-chan struct{}
		if ep != nil {
			exited = ep.Exited
		}
		select {
		case <-ctx.Done():
			if !f.isUp {
				return ctx.Err()
			}
			return nil
		case <-first.C:
			if !f.isUp {
				return fmt.Errorf("no session with %s within %v", srv, o.Wait)
			}
		case ev := <-f.events:
			if err := f.onEvent(ev, report); err != nil {
				return err
			}
		case <-tick.C:
			if ep == nil || !f.isUp {
				continue
			}
			info, err := f.info(ep)
			if err != nil && !errors.Is(err, ctl.ErrClosed) {
				if misses++; misses >= 3 {
					o.Logf("%s: engine %d does not answer (%v): replacing it", name, ep.Cmd.Process.Pid, err)
					ep.Cmd.Process.Kill()
				}
				continue
			}
			misses = 0
			if err == nil && info.Up && info.Path != f.st.Path {
				o.Verbosef("%s: outgoing packets now take %s", name, info.Path)
				f.st.Path = info.Path
				f.save()
			}
		case <-exited:
			f.stopEngine(ep)
			ep = nil
			// What it said before it went (a final refusal) first.
			for drained := false; !drained; {
				select {
				case ev := <-f.events:
					if err := f.onEvent(ev, report); err != nil {
						return err
					}
				default:
					drained = true
				}
			}
			switch {
			case !f.isUp:
				return errors.New("the engine exited before the session came up")
			case f.gaveUp:
				continue // nothing more to do until ptun down
			case !linkUp(ifname):
				keep = true
				return fmt.Errorf("interface %s is gone", ifname)
			}
			retry = time.After(backoff)
		case <-retry:
			retry = nil
			if ep, err = f.startEngine(); err != nil {
				ep = nil
				o.Logf("%s: starting a new engine: %v", name, err)
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				retry = time.After(backoff)
				continue
			}
			backoff = 0
			o.Logf("%s: engine restarted; it connects with the session's cookie", name)
		}
	}
}

// onEvent handles a notice of the engine's; an error ends the daemon
// (only before the first session is up).
func (f *ocFront) onEvent(ev ocEvent, report func(error)) error {
	if ev.up != nil {
		if err := f.sessionUp(ev.up, f.isUp); err != nil {
			if !f.isUp {
				return err
			}
			f.o.Logf("%s: applying what the server pushed: %v", f.name, err)
			f.setProblem(fmt.Sprintf("applying what the server pushed: %v", err))
			return nil
		}
		if !f.isUp {
			f.isUp = true
			report(nil)
		}
		return nil
	}
	d := ev.down
	if !f.isUp {
		return errors.New(d.Reason)
	}
	f.st.Path = ""
	if !d.Final {
		f.setProblem("reconnecting: " + d.Reason)
		f.o.Logf("%s: the session ended (%s): reconnecting with its cookie", f.name, d.Reason)
		return nil
	}
	f.gaveUp = true
	f.st.GaveUp = time.Now().UTC()
	f.setProblem("the server refused the session (" + d.Reason + ")")
	f.o.Logf("%s: the server refused the session (%s): giving up; the host configuration stays until ptun down %s, then ptun connect again",
		f.name, d.Reason, f.name)
	return nil
}

func (f *ocFront) save() {
	if f.hosted {
		return
	}
	if err := saveState(&f.o.Options, f.st); err != nil {
		f.o.Logf("recording the state: %v", err)
	}
}

func (f *ocFront) setProblem(p string) {
	if f.st.Problem == p {
		return
	}
	f.st.Problem = p
	f.save()
}

// sessionUp applies (or, after a reconnect, updates to) what the server
// pushed.
func (f *ocFront) sessionUp(up *occlient.UpNotice, reconnect bool) error {
	f.mu.Lock()
	f.cookie = up.Cookie
	f.mu.Unlock()
	if f.hosted {
		var addrs []netip.Addr
		for _, p := range []netip.Prefix{up.Tunnel.Address4, up.Tunnel.Address6} {
			if p.IsValid() {
				addrs = append(addrs, p.Addr())
			}
		}
		f.addrs.Store(&addrs)
		f.st.Path, f.st.Connected, f.st.Problem = up.Path, time.Now().UTC(), ""
		if reconnect {
			f.st.Reconnects++
		}
		return nil
	}
	plan := f.makePlan(up.Tunnel)
	opts := netconf.Options{Save: f.saveRecord, ResolvConf: f.o.ResolvConf}
	switch {
	case f.plan == nil:
		if err := netconf.Apply(plan, &f.st.Netconf, opts); err != nil {
			return err
		}
	case !reflect.DeepEqual(plan, f.plan):
		if err := netconf.Update(f.plan, plan, &f.st.Netconf, opts); err != nil {
			return err
		}
		f.o.Logf("%s: the server pushed another configuration: addresses %v, routes %v, DNS %v", f.name, plan.Addresses, plan.Routes, plan.DNS)
	}
	f.plan = plan
	addrs := make([]netip.Addr, 0, len(plan.Addresses))
	for _, a := range plan.Addresses {
		addrs = append(addrs, a.Addr())
	}
	f.addrs.Store(&addrs)
	f.st.Addresses = plan.Addresses
	f.st.Path = up.Path
	f.st.Connected = time.Now().UTC()
	if reconnect {
		f.st.Reconnects++
		f.o.Logf("%s: connected again", f.name)
	} else {
		f.o.Logf("%s: connected to %s: addresses %v, routes %v, excluded %v, DNS %v, search %v, MTU %d",
			f.name, f.srv, plan.Addresses, plan.Routes, plan.Exclude, plan.DNS, plan.Search, plan.MTU)
		if up.Tunnel.Banner != "" {
			f.o.Logf("%s: the server's banner: %s", f.name, front.EscapeLine(up.Tunnel.Banner))
		}
	}
	f.st.Problem = ""
	f.save()
	return nil
}

func (f *ocFront) saveRecord(r *netconf.Record) error {
	f.st.Netconf = *r
	return saveState(&f.o.Options, f.st)
}

// makePlan is the host configuration of what the server pushed: its
// addresses (IPv4 as a /32, as vpnc-script sets it), its split includes
// as routes or, with none, a full tunnel of each family it gave an
// address of; its excludes where they apply (out of a full tunnel);
// DNS, search domains, MTU; and the kill switch's way to the server.
func (f *ocFront) makePlan(t occlient.Tunnel) *netconf.Plan {
	p := &netconf.Plan{Interface: f.ifname, MTU: t.MTU, FwMark: FwMark}
	if p.MTU != 0 && (p.MTU < 576 || p.MTU > 65535) {
		p.MTU = 0
	}
	if t.Address4.IsValid() && t.Address4.Addr().Is4() {
		p.Addresses = append(p.Addresses, netip.PrefixFrom(t.Address4.Addr(), 32))
	}
	if t.Address6.IsValid() && t.Address6.Addr().Is6() {
		p.Addresses = append(p.Addresses, t.Address6)
	}
	add := func(r netip.Prefix) {
		r = r.Masked()
		if r.IsValid() && !slices.Contains(p.Routes, r) {
			p.Routes = append(p.Routes, r)
		}
	}
	if len(t.Include) == 0 {
		if t.Address4.IsValid() {
			add(netip.MustParsePrefix("0.0.0.0/0"))
		}
		if t.Address6.IsValid() {
			add(netip.MustParsePrefix("::/0"))
		}
	}
	for _, r := range t.Include {
		if r.Contains(f.addr.Addr()) && r.Bits() > 0 {
			f.o.Logf("%s: the server routes %v, which holds its own address, into the tunnel: left out", f.name, r)
			continue
		}
		add(r)
	}
	for _, x := range t.Exclude {
		x = x.Masked()
		fam := netip.MustParsePrefix("0.0.0.0/0")
		if x.Addr().Is6() {
			fam = netip.MustParsePrefix("::/0")
		}
		if !x.IsValid() || slices.Contains(p.Exclude, x) {
			continue
		}
		if !slices.Contains(p.Routes, fam) {
			f.o.Verbosef("%s: excluded route %v: nothing to exclude it from (no full tunnel of its family)", f.name, x)
			continue
		}
		p.Exclude = append(p.Exclude, x)
	}
	for _, d := range t.DNS {
		if d.IsValid() && !slices.Contains(p.DNS, d) {
			p.DNS = append(p.DNS, d)
		}
	}
	for _, s := range t.Search {
		if netconf.ValidDomain(s) && !slices.Contains(p.Search, s) {
			p.Search = append(p.Search, s)
		}
	}
	if f.o.KillSwitch {
		p.KillSwitch = &netconf.KillSwitch{Endpoints: []netip.AddrPort{f.addr}}
		if t.DTLSPort != 0 && t.DTLSPort != f.addr.Port() {
			p.KillSwitch.Endpoints = append(p.KillSwitch.Endpoints, netip.AddrPortFrom(f.addr.Addr(), t.DTLSPort))
		}
	}
	return p
}

// setupTimeout bounds an engine's start.
const ocSetupTimeout = 10 * time.Second

func (f *ocFront) startEngine() (_ *ocEngine, err error) {
	cmd, err := f.o.EngineCommand()
	if err != nil {
		return nil, err
	}
	ep := &ocEngine{}
	if ep.EngineProcess, err = front.StartEngineProcess(cmd, "oc engine", f.o.Logf,
		func(_ *front.EngineProcess, req *ctl.Msg) *ctl.Msg { return f.handleEngine(ep, req) }); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.stopEngine(ep)
		}
	}()
	if ep.link, err = ipc.NewLink(f.o.Mode, f.dev, f.o.Logf); err != nil {
		return ep, err
	}
	if sc, ok := ep.link.(ipc.SourceChecker); ok {
		sc.SetSourceCheck(f.dstCheck)
	}
	mtu, err := f.dev.MTU()
	if err != nil {
		return ep, err
	}
	f.mu.Lock()
	setup := occlient.Setup{
		Flow: ep.link.Setup(), FlowFiles: len(ep.link.Files()), Verbose: f.o.Verbose,
		Server: f.addr, ServerName: f.srv.Host, Pin: f.o.Pin, RootsPEM: f.roots,
		User: f.o.User, Password: f.password, Cookie: f.cookie,
		Hostname: f.hostname, DisableDTLS: f.o.DisableDTLS, MTU: mtu, Reconnect: f.o.Reconnect,
	}
	if f.cookie != "" {
		setup.Password = ""
	}
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), ocSetupTimeout)
	defer cancel()
	rep, err := ep.Conn.Call(ctx, &ctl.Msg{Op: ctl.OpSetup, Body: ctl.Body(setup), Files: ep.link.Files()})
	ep.link.HandedOver()
	if rep != nil {
		ipc.CloseFiles(rep.Files)
	}
	if err != nil {
		return ep, fmt.Errorf("OpenConnect engine setup: %w", err)
	}
	// The engine has the password now; a later one connects with the
	// cookie.
	f.mu.Lock()
	f.password = ""
	f.mu.Unlock()
	ep.link.Start()
	f.engine.Store(ep)
	return ep, nil
}

// dstCheck is the check of a relaying flow on what the engine writes to the
// TUN: packets from anywhere (the server's side is the whole network in a
// full tunnel), but only to the addresses the server gave this host.
func (f *ocFront) dstCheck(pkt []byte) bool {
	p := f.addrs.Load()
	if p == nil {
		return false
	}
	var dst netip.Addr
	switch pkt[0] >> 4 {
	case 4:
		dst = netip.AddrFrom4([4]byte(pkt[16:20]))
	case 6:
		if len(pkt) < 40 {
			return false
		}
		dst = netip.AddrFrom16([16]byte(pkt[24:40]))
	default:
		return false
	}
	return slices.Contains(*p, dst)
}

func (f *ocFront) stopEngine(ep *ocEngine) {
	f.engine.CompareAndSwap(ep, nil)
	if ep.EngineProcess == nil {
		return
	}
	if ep.Conn != nil {
		ep.Conn.Close() // the engine logs out and exits
	}
	select {
	case <-ep.Exited:
	case <-time.After(5 * time.Second):
		ep.Cmd.Process.Kill()
		<-ep.Exited
	}
	if ep.link != nil {
		ep.link.Close()
	}
}

func (f *ocFront) info(ep *ocEngine) (*occlient.Info, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := ep.Conn.Call(ctx, &ctl.Msg{Op: occlient.OpStats})
	if err != nil {
		return nil, err
	}
	ipc.CloseFiles(rep.Files)
	var in occlient.Info
	if err := ctl.Decode(rep.Body, &in); err != nil {
		return nil, err
	}
	return &in, nil
}

// errNoEngine: the tunnel has no engine running (it is being restarted,
// or the TLS path is not taken).
var errNoEngine = errors.New("no OpenConnect engine running")

// session is what the metrics read: the running engine's figures.
func (f *ocFront) session() (telemetry.SessionInfo, error) {
	ep := f.engine.Load()
	if ep == nil {
		return telemetry.SessionInfo{}, errNoEngine
	}
	in, err := f.info(ep)
	if err != nil {
		return telemetry.SessionInfo{}, err
	}
	return telemetry.SessionInfo{Up: in.Up, Path: in.Path, Reconnects: in.Reconnects, Counters: in.Counters}, nil
}

// addSessionMetrics gives tel (nil: none) the metrics of f's session and
// the check engine.
func (f *ocFront) addSessionMetrics(tel *telemetry.Server) error {
	if tel == nil {
		return nil
	}
	tel.AddCheck(telemetry.Check{Name: "engine", Run: func() error {
		if f.engine.Load() == nil {
			return errNoEngine
		}
		return nil
	}})
	return tel.AddSession(telemetry.Session{Name: f.ifname, Read: f.session})
}

// handleEngine answers the engine's requests.
func (f *ocFront) handleEngine(ep *ocEngine, req *ctl.Msg) *ctl.Msg {
	ipc.CloseFiles(req.Files) // the engine has no descriptor to give
	req.Files = nil
	switch req.Op {
	case ctl.OpLog:
		f.o.Logf("oc engine %d: %s", ep.Cmd.Process.Pid, front.EscapeLine(req.Text))
		return nil
	case ctl.OpMTU:
		mtu, err := f.dev.MTU()
		if err != nil {
			return ctl.Fail(err)
		}
		return &ctl.Msg{Body: ctl.Body(mtu)}
	case occlient.OpDial:
		var r occlient.DialRequest
		if err := ctl.Decode(req.Body, &r); err != nil {
			return ctl.Fail(err)
		}
		file, err := f.dial(r)
		if err != nil {
			return ctl.Fail(err)
		}
		return &ctl.Msg{Files: []*os.File{file}}
	case occlient.OpUp:
		var n occlient.UpNotice
		if err := ctl.Decode(req.Body, &n); err != nil {
			return ctl.Fail(err)
		}
		return f.event(ocEvent{up: &n})
	case occlient.OpDown:
		var n occlient.DownNotice
		if err := ctl.Decode(req.Body, &n); err != nil {
			return ctl.Fail(err)
		}
		n.Reason = front.EscapeLine(n.Reason)
		return f.event(ocEvent{down: &n})
	}
	return ctl.Fail(fmt.Errorf("the front has no request %q: %w", front.EscapeLine(req.Op), syscall.EOPNOTSUPP))
}

func (f *ocFront) event(ev ocEvent) *ctl.Msg {
	select {
	case f.events <- ev:
		return nil
	case <-f.stop:
		return ctl.Fail(fmt.Errorf("the tunnel is stopping: %w", syscall.ESHUTDOWN))
	}
}

// dialTimeout bounds a dial the front makes for its engine (within the
// engine's own bound of its request).
const dialTimeout = 8 * time.Second

// dial opens the socket the engine asked for, marked FwMark: only to the
// server, TCP to its port, UDP to any port of its address (the server
// chooses the DTLS port).
func (f *ocFront) dial(r occlient.DialRequest) (*os.File, error) {
	switch {
	case r.Network == "tcp" && r.Address == f.addr:
	case r.Network == "udp" && r.Address.Addr() == f.addr.Addr() && r.Address.Port() != 0:
	case r.Network != "tcp" && r.Network != "udp":
		return nil, fmt.Errorf("dial: network %q: %w", front.EscapeLine(r.Network), syscall.EINVAL)
	default:
		return nil, fmt.Errorf("dial %s %v: only the server %v is dialed: %w", r.Network, r.Address, f.addr, syscall.EPERM)
	}
	d := net.Dialer{Timeout: dialTimeout, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, FwMark)
			if r.Network == "udp" {
				// As for WireGuard's sockets: room for a bulk flow's
				// bursts in the kernel (the engine reads one record at
				// a time) rather than drops there. Best effort.
				for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
					if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], udp.DefaultSocketBuffer) != nil {
						unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], udp.DefaultSocketBuffer)
					}
				}
			}
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial(r.Network, r.Address.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	fc, ok := c.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("dial %s: no descriptor", r.Network)
	}
	return fc.File()
}

// ocStatus fills in the status of a ptun connect tunnel: its interface's
// counters.
func ocStatus(s *Status) error {
	st := s.State
	if !daemonAlive(st) {
		return fmt.Errorf("%s is recorded as connected on %s, but its daemon is not running (did it crash?): its host configuration, kill switch included, is still in place; ptun down %s cleans up", st.Profile, st.Interface, st.Profile)
	}
	s.Endpoint = st.Endpoint
	if l, err := netlink.LinkByName(st.Interface); err == nil && l.Attrs().Statistics != nil {
		s.RxBytes, s.TxBytes = l.Attrs().Statistics.RxBytes, l.Attrs().Statistics.TxBytes
	}
	return nil
}
