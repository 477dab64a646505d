package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ptun-vpn/ptun/internal/netconf"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// `ptun up NAME` brings profile NAME's tunnel up: it starts a ptun daemon
// for the interface (front and engine, as `ptun IFNAME` does), gives it the
// device's key and the gateway as its peer through the UAPI, applies the
// host configuration (package netconf) and returns once a handshake with
// the gateway completed. What it did is recorded in STATE/NAME.json as it
// goes, so `ptun down NAME` undoes exactly that, also after a crash.

// DefaultStateDir is where up records what it applied.
const DefaultStateDir = "/var/lib/ptun/client"

// FwMark marks the tunnel's own datagrams (and routes them around a full
// tunnel), as wg-quick's default does.
const FwMark = 0xca6c

// defaultKeepalive is the keepalive a profile without one gets: a roaming
// client behind NAT needs one, and it makes the first handshake at once.
const defaultKeepalive = 25

// Options configure Up and Down.
type Options struct {
	Profiles   string        // profile directory (default profile.DefaultDir)
	State      string        // state directory (default DefaultStateDir)
	KillSwitch bool          // Up: nothing leaves but through the tunnel
	Binary     string        // the ptun binary that serves the interface (default: this one)
	ResolvConf string        // default /etc/resolv.conf
	Wait       time.Duration // Up: how long to wait for a handshake (default 10 s)
	Logf       func(format string, args ...any)
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
}

// State is what up recorded of one profile.
type State struct {
	Profile   string         `json:"profile"`
	Interface string         `json:"interface"`
	Gateway   string         `json:"gateway"`
	Netconf   netconf.Record `json:"netconf"`
	Since     time.Time      `json:"since"`
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

// Up brings profile name's tunnel up (see above). Whatever fails, nothing
// it did is left behind.
func Up(ctx context.Context, name string, o Options) (err error) {
	o.defaults()
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
		if linkUp(st.Interface) {
			return fmt.Errorf("%s is up already (interface %s): ptun down %s first", name, st.Interface, name)
		}
		o.Logf("cleaning up what a previous ptun up %s left", name)
		if err := Down(name, o); err != nil {
			return fmt.Errorf("cleaning up a previous ptun up %s: %w", name, err)
		}
	}
	if linkUp(ifname) {
		return fmt.Errorf("interface %s exists already and is not ptun's record of %s: remove it (ip link del %s) or rename the profile", ifname, name, ifname)
	}
	gw := p.Offer.Gateways[0]
	st := &State{Profile: name, Interface: ifname, Gateway: gw.Name, Since: time.Now().UTC()}
	if err := saveState(&o, st); err != nil {
		return fmt.Errorf("recording the state in %s: %w", o.State, err)
	}
	defer func() {
		if err != nil {
			if derr := Down(name, o); derr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, derr)
			}
		}
	}()
	if err := startDaemon(ctx, o.Binary, ifname, p.Offer.MTU); err != nil {
		return err
	}
	peer := p.Peer(gw)
	if *peer.PersistentKeepalive == 0 {
		ka := uint16(defaultKeepalive)
		peer.PersistentKeepalive = &ka
	}
	mark := uint32(FwMark)
	if err := uapi.Set(uapi.SocketPath(ifname), &wgcfg.DeviceConfig{
		PrivateKey: &key, FwMark: &mark, ReplacePeers: true, Peers: []wgcfg.PeerConfig{peer},
	}); err != nil {
		return fmt.Errorf("configuring %s: %w", ifname, err)
	}
	plan := &netconf.Plan{Interface: ifname, Addresses: p.Offer.Addresses, MTU: p.Offer.MTU,
		Routes: p.Offer.Routes, FwMark: FwMark, DNS: p.Offer.DNS, Search: p.Offer.Search}
	if o.KillSwitch {
		plan.KillSwitch = &netconf.KillSwitch{}
		for _, g := range p.Offer.Gateways {
			plan.KillSwitch.Endpoints = append(plan.KillSwitch.Endpoints, g.Endpoint)
		}
	}
	save := func(r *netconf.Record) error { st.Netconf = *r; return saveState(&o, st) }
	var rec netconf.Record
	if err := netconf.Apply(plan, &rec, netconf.Options{Save: save, ResolvConf: o.ResolvConf}); err != nil {
		return err
	}
	return waitHandshake(ctx, ifname, gw, o.Wait)
}

// linkUp reports whether interface name exists.
func linkUp(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// startDaemon runs `BINARY --mtu MTU IFNAME`, which returns once the
// interface and its UAPI socket are ready and keeps serving in the
// background.
func startDaemon(ctx context.Context, bin, ifname string, mtu int) error {
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return err
		}
	}
	args := []string{ifname}
	if mtu != 0 {
		args = []string{"--mtu", fmt.Sprint(mtu), ifname}
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("starting the interface %s: %v: %s", ifname, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// waitHandshake waits (bounded) until the gateway's handshake completed.
func waitHandshake(ctx context.Context, ifname string, gw profile.Gateway, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		st, err := uapi.Get(uapi.SocketPath(ifname))
		if err == nil {
			for _, p := range st.Peers {
				if p.PublicKey == gw.PublicKey && !p.LastHandshake.IsZero() {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no handshake with gateway %s at %s within %v: is it reachable on UDP, and is this device still enrolled?", gw.Name, gw.Endpoint, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Down takes profile name's tunnel down: it undoes the host configuration
// up recorded and deletes the interface (its daemon then exits). With no
// record it does nothing and says so.
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
	var errs []error
	save := func(r *netconf.Record) error { st.Netconf = *r; return saveState(&o, st) }
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
		os.Remove(statePath(&o, name))
	}
	return errors.Join(errs...)
}

// waitSocketGone waits (bounded) for the daemon of ifname to remove its
// UAPI socket as it exits.
func waitSocketGone(ifname string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		if _, err := os.Stat(uapi.SocketPath(ifname)); errors.Is(err, os.ErrNotExist) {
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
	dev, err := uapi.Get(uapi.SocketPath(st.Interface))
	if err != nil {
		return s, fmt.Errorf("%s is recorded as up on %s, but its daemon does not answer (%v): ptun down %s cleans up", name, st.Interface, err, name)
	}
	for _, p := range dev.Peers {
		s.Endpoint, s.LastHandshake, s.RxBytes, s.TxBytes = p.Endpoint, p.LastHandshake, p.RxBytes, p.TxBytes
	}
	return s, nil
}
