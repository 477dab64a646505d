package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/netconf"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// `ptun up NAME` runs profile NAME's tunnel in a daemon of its own (Run):
// the interface (a front in the daemon and its confined engine), the
// device's key and one gateway as its peer, the host configuration
// (package netconf), and then, for as long as it runs, a supervisor that
// keeps the tunnel current and alive (supervise.go). `ptun up` returns once
// the first handshake completed. What the daemon applied is recorded in
// STATE/NAME.json as it goes, so that `ptun down NAME` (which asks the
// daemon to stop, and cleans up after one that died) removes exactly that.

// DefaultStateDir is where up records what it applied.
const DefaultStateDir = "/var/lib/ptun/client"

// FwMark marks the tunnel's own datagrams (and routes them around a full
// tunnel), as wg-quick's default does. The daemon's requests to the
// gateways' APIs carry it too, so that they never go into the tunnel.
const FwMark = 0xca6c

// defaultKeepalive is the keepalive a profile without one gets: a roaming
// client behind NAT needs one, and it makes the first handshake at once.
const defaultKeepalive = 25

// Options configure Run, Down and StatusOf.
type Options struct {
	Profiles   string        // profile directory (default profile.DefaultDir)
	State      string        // state directory (default DefaultStateDir)
	KillSwitch bool          // Run: nothing leaves but through the tunnel
	Gateway    string        // Run: the gateway to use first (default: the profile's first)
	ResolvConf string        // default /etc/resolv.conf
	Wait       time.Duration // Run: how long to wait for the first handshake (default 10 s)
	Logf       func(format string, args ...any)
	Verbosef   func(format string, args ...any)
	// Mode and EngineCommand are the interface's, as front.Config has them.
	Mode          ipc.Mode
	EngineCommand func() (*exec.Cmd, error)
	// Supervision: how often the gateway is asked for the profile
	// (default 2 s), and how many missed answers in a row make the client
	// move to the next gateway (default 2: one lost request, which TCP
	// retries within the request's 1.5 s, is not an outage).
	Probe     time.Duration
	FailAfter int
	// Metrics is Run's plain-HTTP listener of /metrics and /healthz (zero:
	// none). It has no authentication: loopback or a management network
	// only.
	Metrics netip.AddrPort
	// TLSEngineCommand runs an OpenConnect client engine: with it (and
	// the fd flow), Run falls back to the gateway's TLS listener when
	// UDP gets no handshake (fallback.go), FallbackAfter (default 2 s)
	// after the start at the latest.
	TLSEngineCommand func() (*exec.Cmd, error)
	FallbackAfter    time.Duration
}

func (o *Options) defaults() {
	if o.Profiles == "" {
		o.Profiles = profile.DefaultDir
	}
	if o.State == "" {
		o.State = DefaultStateDir
	}
	if o.Wait == 0 {
		o.Wait = 10 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Verbosef == nil {
		o.Verbosef = func(string, ...any) {}
	}
	if o.Probe == 0 {
		o.Probe = 2 * time.Second
	}
	if o.FailAfter == 0 {
		o.FailAfter = 2
	}
	if o.FallbackAfter == 0 {
		o.FallbackAfter = defaultFallbackAfter
	}
}

// State is what the daemon of one profile (or one ptun connect tunnel)
// recorded.
type State struct {
	Profile   string `json:"profile"`
	Interface string `json:"interface"`
	Gateway   string `json:"gateway,omitempty"` // the gateway in use
	// Kind is "" for a profile's tunnel (ptun up), KindOpenConnect for
	// ptun connect's; the fields after Refreshed are the latter's.
	// PID and Started (its start time in clock ticks after boot) name the
	// daemon, so that a PID used again by another process is not taken
	// for it.
	PID     int            `json:"pid"`
	Started uint64         `json:"started"`
	Netconf netconf.Record `json:"netconf"`
	Since   time.Time      `json:"since"`
	// Problem says why no traffic passes now ("" when it does).
	Problem string `json:"problem,omitempty"`
	// Revoked is when a gateway said this device was revoked: the daemon
	// stopped trying.
	Revoked time.Time `json:"revoked,omitzero"`
	// Refreshed is when the gateway last answered the profile request.
	Refreshed time.Time `json:"refreshed,omitzero"`
	// Via is ViaTLS while a profile's tunnel falls back to its gateway's
	// TLS listener ("": WireGuard over UDP); Path is then that session's
	// path ("dtls", "cstp", "" while it connects).
	Via string `json:"via,omitempty"`

	Kind      string         `json:"kind,omitempty"`
	Server    string         `json:"server,omitempty"`    // the server's URL
	Endpoint  netip.AddrPort `json:"endpoint,omitzero"`   // the address dialed
	User      string         `json:"user,omitempty"`      // who logged in
	Path      string         `json:"path,omitempty"`      // "dtls", "cstp", or "" while reconnecting
	Addresses []netip.Prefix `json:"addresses,omitempty"` // what the server gave
	// Connected is when the session in use came up; Reconnects counts
	// the sessions after the first; GaveUp is when the server refused
	// the session for good.
	Connected  time.Time `json:"connected,omitzero"`
	Reconnects int       `json:"reconnects,omitempty"`
	GaveUp     time.Time `json:"gave_up,omitzero"`
}

// Interface is the tunnel interface of profile name: "pt-" and the name,
// cut to the 15 bytes Linux allows.
func Interface(name string) string {
	n := "pt-" + strings.ReplaceAll(name, ".", "-")
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

func statePath(o *Options, name string) string { return filepath.Join(o.State, name+".json") }

func saveState(o *Options, st *State) error {
	if err := os.MkdirAll(o.State, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(o, st.Profile) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(o, st.Profile))
}

func loadState(o *Options, name string) (*State, error) {
	b, err := os.ReadFile(statePath(o, name))
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("the state of %s (%s) is damaged: %w", name, statePath(o, name), err)
	}
	return &st, nil
}

// startTime is process pid's start time (field 22 of /proc/PID/stat), or 0.
func startTime(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// daemonAlive reports whether st's daemon still runs.
func daemonAlive(st *State) bool {
	return st.PID > 0 && st.Started != 0 && startTime(st.PID) == st.Started
}

// Run is the daemon of profile name (see above). It calls ready once: nil
// when the first handshake completed, or the error that stopped it. It
// returns when ctx ends (having undone everything), or on an error
// (having undone everything too). A profile that is up, or an interface
// that exists, is refused and nothing is changed.
func Run(ctx context.Context, name string, o Options, ready func(error)) (err error) {
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
		return errors.New("ptun up needs root (it creates an interface and sets routes): run it with sudo")
	}
	p, err := profile.Load(o.Profiles, name)
	if err != nil {
		return err
	}
	key, err := p.Key()
	if err != nil {
		return err
	}
	ifname := Interface(name)
	if st, err := loadState(&o, name); err == nil {
		if daemonAlive(st) {
			return fmt.Errorf("%s is up already (interface %s, daemon %d): ptun down %s first", name, st.Interface, st.PID, name)
		}
		o.Logf("cleaning up what a previous ptun up %s left", name)
		if err := cleanup(st, &o); err != nil {
			return fmt.Errorf("cleaning up a previous ptun up %s: %w", name, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if linkUp(ifname) {
		return fmt.Errorf("interface %s exists already and is not ptun's record of %s: remove it (ip link del %s) or rename the profile", ifname, name, ifname)
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
	first := 0
	if o.Gateway != "" {
		first = -1
		var names []string
		for i, g := range p.Offer.Gateways {
			names = append(names, g.Name)
			if g.Name == o.Gateway {
				first = i
			}
		}
		if first < 0 {
			return fmt.Errorf("--gateway %s: profile %s has no such gateway (it has %s)", o.Gateway, name, strings.Join(names, ", "))
		}
	}
	st := &State{Profile: name, Interface: ifname, Gateway: p.Offer.Gateways[first].Name,
		PID: os.Getpid(), Started: startTime(os.Getpid()), Since: time.Now().UTC()}
	if err := saveState(&o, st); err != nil {
		return fmt.Errorf("recording the state in %s: %w", o.State, err)
	}

	// The interface: a front in this process, its engine confined.
	handlers := make(chan uapi.Handler, 1)
	tunDevs := make(chan tun.Device, 1)
	upErr := make(chan error, 1)
	stop := make(chan struct{})
	frontDone := make(chan error, 1)
	go func() {
		frontDone <- front.Run(front.Config{
			Name: ifname, MTU: p.Offer.MTU, Mode: o.Mode, Logf: o.Logf, Verbosef: o.Verbosef,
			EngineCommand: o.EngineCommand,
			OnUp:          func(h uapi.Handler) { handlers <- h },
			OnTUN:         func(d tun.Device) { tunDevs <- d },
		}, stop, func(e error) { upErr <- e })
	}()
	keep := false // the interface died under a running tunnel
	defer func() {
		if keep {
			// The host configuration stays, kill switch included, and
			// its record: nothing leaks until ptun down (or the next
			// ptun up) removes it.
			close(stop)
			<-frontDone
			o.Logf("%s: the host configuration (and kill switch) stays until ptun down %s", name, name)
			return
		}
		// Everything goes, in the order it came: the host configuration,
		// then the interface, then the record.
		save := func(r *netconf.Record) error { st.Netconf = *r; return saveState(&o, st) }
		uerr := netconf.Undo(&st.Netconf, netconf.Options{Save: save})
		close(stop)
		<-frontDone
		if uerr != nil {
			err = errors.Join(err, uerr)
			return
		}
		os.Remove(statePath(&o, name))
	}()
	if err := <-upErr; err != nil {
		return err
	}
	h := <-handlers
	if err := addInterfaceMetrics(tel, ifname, h); err != nil {
		return err
	}
	sv := &supervisor{name: name, o: &o, p: p, key: key, h: h, st: st, cur: first, killSwitch: o.KillSwitch}
	sv.fb = newFallback(sv, <-tunDevs, &o)
	if err := sv.fb.addMetrics(tel); err != nil {
		return err
	}
	mark := uint32(FwMark)
	if err := h.Set(&wgcfg.DeviceConfig{PrivateKey: &key, FwMark: &mark, ReplacePeers: true,
		Peers: []wgcfg.PeerConfig{sv.peer(first)}}); err != nil {
		return fmt.Errorf("configuring %s: %w", ifname, err)
	}
	sv.plan = sv.makePlan()
	if err := netconf.Apply(sv.plan, &st.Netconf, netconf.Options{Save: sv.saveRecord, ResolvConf: o.ResolvConf}); err != nil {
		return err
	}
	if sv.fb != nil {
		err = sv.waitFirst(ctx, o.Wait)
	} else {
		err = sv.waitHandshake(ctx, o.Wait)
	}
	if err != nil {
		return err
	}
	report(nil)
	err = sv.loop(ctx, frontDone)
	sv.fb.leave("stopping")
	keep = err != nil
	return err
}

// addInterfaceMetrics gives tel (nil: none) the metrics of interface
// ifname, served by h, and the check engine.
func addInterfaceMetrics(tel *telemetry.Server, ifname string, h uapi.Handler) error {
	if tel == nil {
		return nil
	}
	dev, ok := h.(telemetry.Device)
	if !ok {
		return fmt.Errorf("metrics: interface %s has no counters to read", ifname)
	}
	return tel.AddInterface(telemetry.Interface{Name: ifname, Device: dev,
		Engine: func() error { return front.EngineRunning(h) }})
}

// linkUp reports whether interface name exists.
func linkUp(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// Down takes profile name's tunnel down: it asks its daemon to stop (which
// undoes everything it applied) and waits for it, then removes whatever a
// daemon that died left (the recorded host configuration, the interface).
// With no record it does nothing and says so.
func Down(name string, o Options) error {
	o.defaults()
	if err := profile.CheckName(name); err != nil {
		return err
	}
	st, err := loadState(&o, name)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s is not up (no record in %s)", name, o.State)
	}
	if err != nil {
		return err
	}
	if daemonAlive(st) {
		if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stopping the daemon of %s (%d): %w", name, st.PID, err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for daemonAlive(st) {
			if time.Now().After(deadline) {
				return fmt.Errorf("the daemon of %s (%d) did not stop within 15 s", name, st.PID)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// What a daemon that died (or was killed) left behind.
	st, err = loadState(&o, name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return cleanup(st, &o)
}

// cleanup removes what st records, the interface, and the record.
func cleanup(st *State, o *Options) error {
	var errs []error
	save := func(r *netconf.Record) error { st.Netconf = *r; return saveState(o, st) }
	if err := netconf.Undo(&st.Netconf, netconf.Options{Save: save}); err != nil {
		errs = append(errs, err)
	}
	if l, err := netlink.LinkByName(st.Interface); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", st.Interface, err))
		}
	}
	if err := waitSocketGone(st.Interface, 5*time.Second); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		os.Remove(statePath(o, st.Profile))
	}
	return errors.Join(errs...)
}

// waitSocketGone waits (bounded) for the UAPI socket of ifname to go. A
// socket whose daemon is gone is removed.
func waitSocketGone(ifname string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		path := uapi.SocketPath(ifname)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if _, err := uapi.Get(path); err != nil {
			os.Remove(path) // nobody answers: a dead daemon's
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon of %s did not exit within %v", ifname, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Status is what `ptun status NAME` shows.
type Status struct {
	State         *State
	Endpoint      netip.AddrPort
	LastHandshake time.Time
	RxBytes       uint64
	TxBytes       uint64
}

// StatusOf reports profile name's tunnel, or an error saying it is down.
func StatusOf(name string, o Options) (*Status, error) {
	o.defaults()
	st, err := loadState(&o, name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s is down", name)
	}
	if err != nil {
		return nil, err
	}
	s := &Status{State: st}
	if st.Kind == KindOpenConnect {
		return s, ocStatus(s)
	}
	if !daemonAlive(st) {
		return s, fmt.Errorf("%s is recorded as up on %s, but its daemon is not running (did it crash?): its host configuration, kill switch included, is still in place; ptun down %s cleans up", name, st.Interface, name)
	}
	dev, err := uapi.Get(uapi.SocketPath(st.Interface))
	if err != nil {
		return s, fmt.Errorf("%s is up on %s, but its daemon does not answer (%v): ptun down %s cleans up", name, st.Interface, err, name)
	}
	for _, p := range dev.Peers {
		s.Endpoint, s.LastHandshake, s.RxBytes, s.TxBytes = p.Endpoint, p.LastHandshake, p.RxBytes, p.TxBytes
	}
	return s, nil
}

// apiAddr is the address and port of an https://HOST:PORT API URL whose
// host is an address, or the zero value.
func apiAddr(api string) netip.AddrPort {
	u, err := url.Parse(api)
	if err != nil || u.Scheme != "https" {
		return netip.AddrPort{}
	}
	a, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]"))
	if err != nil {
		return netip.AddrPort{}
	}
	port := uint16(443)
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return netip.AddrPort{}
		}
		port = uint16(n)
	}
	return netip.AddrPortFrom(a, port)
}
