package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// ptun up's TLS path. A profile whose gateway has an OpenConnect listener
// (profile.Gateway.TLS) falls back to it by itself when WireGuard gets no
// handshake over UDP: at start, within FallbackAfter; later, when the
// gateway stops answering over the tunnel (Options.FailAfter probes). The
// interface stays what it is, with its addresses, routes, DNS and kill
// switch: the WireGuard engine is held (it stops reading the TUN file,
// front.TUNHolder) and an OpenConnect client engine is given the same file
// (ipc.NewLink in the fd flow), logging in with the device's key
// (enroll.DeviceLogin), so the gateway takes its packets as this device's.
// Applications see a pause, not a new interface.
//
// On the TLS path the WireGuard engine goes on trying UDP: every
// udpRetry its peer is renewed, which sends a fresh handshake initiation.
// Once one completes, UDP passes again: the OpenConnect engine logs out
// (the gateway then routes the device's address through WireGuard again)
// and the WireGuard engine reads the TUN file again.
//
// It needs the fd flow (the front reads the device itself in the others)
// and an engine in a process of its own.

// Defaults of the fallback. A TLS path whose session the gateway refused,
// or that had no session for tlsNoSession, is left (the UDP side's
// failover to the profile's other gateways goes on) and not taken again
// for tlsPause, so that a gateway refusing it is not asked every few
// seconds.
const (
	defaultFallbackAfter = 2 * time.Second
	udpRetry             = 10 * time.Second
	tlsNoSession         = 20 * time.Second
	tlsPause             = time.Minute
)

// fallback is a running tunnel's TLS path: what it takes, and its engine
// while the tunnel is on it. The supervisor's loop alone uses it.
type fallback struct {
	s    *supervisor
	dev  tun.Device
	hold front.TUNHolder
	cmd  func() (*exec.Cmd, error)
	// notBefore: the TLS path is not taken again before then (tlsPause).
	notBefore time.Time

	// While on the TLS path (f != nil):
	f       *ocFront
	ep      *ocEngine
	entered time.Time // when the TLS path was taken
	poked   time.Time // when the WireGuard peer was last renewed
	down    time.Time // since when it has had no session (zero: it has one)
	mtu     int       // the interface's MTU before a session's smaller one (0: unchanged)
	retry   <-chan time.Time
	backoff time.Duration

	// active is f, for the metrics' scrapes (nil: on WireGuard).
	active atomic.Pointer[ocFront]
}

// addMetrics gives tel (nil: none) the metrics of the TLS path's session:
// ptun_session_up is 0 while the tunnel is on WireGuard.
func (fb *fallback) addMetrics(tel *telemetry.Server) error {
	if fb == nil {
		return nil
	}
	return tel.AddSession(telemetry.Session{Name: fb.s.st.Interface, Read: func() (telemetry.SessionInfo, error) {
		if f := fb.active.Load(); f != nil {
			return f.session()
		}
		return telemetry.SessionInfo{}, nil
	}})
}

// newFallback is the TLS path of s over dev, or nil (saying why in the
// verbose log) when the profile, the flow or the front cannot have one.
func newFallback(s *supervisor, dev tun.Device, o *Options) *fallback {
	if _, err := tlsGateway(s.p, ""); err != nil {
		s.o.Verbosef("%s: no fallback to TLS: %v", s.name, err)
		return nil
	}
	hold, ok := s.h.(front.TUNHolder)
	switch {
	case o.TLSEngineCommand == nil:
		s.o.Verbosef("%s: no fallback to TLS: no OpenConnect engine command", s.name)
		return nil
	case dev == nil || !ok || o.Mode != ipc.FD:
		s.o.Logf("%s: no fallback to TLS with the %s flow (it needs fd)", s.name, o.Mode)
		return nil
	}
	return &fallback{s: s, dev: dev, hold: hold, cmd: o.TLSEngineCommand}
}

// onTLS reports whether the tunnel is on the TLS path.
func (fb *fallback) onTLS() bool { return fb != nil && fb.f != nil }

// up reports whether the TLS path has a session.
func (fb *fallback) up() bool { return fb.onTLS() && fb.f.isUp && fb.f.st.Path != "" }

// enter takes the TLS path, for reason: the engine is started; its session
// comes (or not) as an event.
func (fb *fallback) enter(ctx context.Context, reason string) error {
	s := fb.s
	g, err := tlsGateway(s.p, s.p.Offer.Gateways[s.cur].Name)
	if errors.Is(err, ErrNoTLS) {
		g, err = tlsGateway(s.p, "")
	}
	if err != nil {
		return err
	}
	srv, err := ParseServerURL(g.TLS)
	if err != nil {
		return fmt.Errorf("gateway %s's TLS listener: %w", g.Name, err)
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	addr, err := resolveServer(rctx, srv)
	cancel()
	if err != nil {
		return err
	}
	user, password, err := enroll.DeviceLogin(s.key, g.PublicKey, time.Now())
	if err != nil {
		return err
	}
	pin := g.Pin
	if pin == "" {
		pin = s.p.Pin
	}
	co := &ConnectOptions{Options: *s.o, URL: srv.String(), User: user, Pin: pin}
	co.EngineCommand, co.Mode = fb.cmd, ipc.FD
	co.Verbose = false
	f := &ocFront{name: s.name, ifname: s.st.Interface, o: co, srv: srv, addr: addr, dev: fb.dev, password: password,
		st: &State{Profile: s.name, Interface: s.st.Interface, Kind: KindOpenConnect}, hosted: true,
		events: make(chan ocEvent, 16), stop: make(chan struct{})}
	f.hostname, _ = os.Hostname()
	if err := fb.hold.HoldTUN(true); err != nil {
		return fmt.Errorf("holding the WireGuard engine: %w", err)
	}
	ep, err := f.startEngine()
	if err != nil {
		close(f.stop)
		if herr := fb.hold.HoldTUN(false); herr != nil {
			s.o.Logf("%s: letting the WireGuard engine read again: %v", s.name, herr)
		}
		return fmt.Errorf("starting the OpenConnect engine: %w", err)
	}
	now := time.Now()
	fb.f, fb.ep, fb.entered, fb.poked, fb.down, fb.retry, fb.backoff = f, ep, now, now, now, nil, 0
	fb.active.Store(f)
	s.st.Via, s.st.Path = ViaTLS, ""
	s.o.Logf("%s: %s: moving to TLS, gateway %s at %s (logging in with the device's key)", s.name, reason, g.Name, srv)
	s.save()
	return nil
}

// leave ends the TLS path, for reason: the WireGuard engine reads the TUN
// file again, then the OpenConnect engine logs out and exits, then the
// MTU is put back.
//
// In that order, traffic never waits for the OpenConnect engine's exit
// (its logout takes up to 2 s, and the engine is killed after 5): until
// it has closed its descriptor, the two engines share what the TUN gives
// (what the OpenConnect engine reads still reaches the gateway, over
// TLS), and it writes what the gateway still sends to the session. The
// MTU stays the session's, which fits both, until it is gone.
func (fb *fallback) leave(reason string) {
	if !fb.onTLS() {
		return
	}
	s := fb.s
	began := time.Now()
	fb.active.Store(nil)
	if err := fb.hold.HoldTUN(false); err != nil {
		s.o.Logf("%s: letting the WireGuard engine read again: %v", s.name, err)
	}
	switched := time.Since(began)
	if fb.ep != nil {
		fb.f.stopEngine(fb.ep)
	}
	close(fb.f.stop)
	if fb.mtu != 0 {
		if err := setLinkMTU(s.st.Interface, fb.mtu); err != nil {
			s.o.Logf("%s: the MTU back to %d: %v", s.name, fb.mtu, err)
		}
		fb.mtu = 0
	}
	s.o.Logf("%s: %s: back to WireGuard over UDP after %v on TLS (the switch took %v, the TLS session's end %v)", s.name, reason,
		time.Since(fb.entered).Round(time.Second), switched.Round(time.Millisecond), (time.Since(began) - switched).Round(time.Millisecond))
	fb.f, fb.ep, fb.retry = nil, nil, nil
	s.st.Via, s.st.Path = "", ""
	s.save()
}

// onEvent handles a notice of the OpenConnect engine's.
func (fb *fallback) onEvent(ev ocEvent) {
	s, f := fb.s, fb.f
	if ev.up != nil {
		first := !f.isUp
		f.sessionUp(ev.up, f.isUp) // hosted: records, applies nothing
		f.isUp = true
		fb.down = time.Time{}
		fb.fitMTU(ev.up.Tunnel.MTU)
		s.st.Path = f.st.Path
		if first {
			s.o.Logf("%s: traffic goes over TLS (%s) %v after the move", s.name, f.st.Path, time.Since(fb.entered).Round(time.Millisecond))
		}
		s.save()
		return
	}
	d := ev.down
	s.st.Path = ""
	if fb.down.IsZero() {
		fb.down = time.Now()
	}
	if d.Final {
		f.gaveUp = true
		s.o.Logf("%s: the gateway refused the TLS session (%s)", s.name, d.Reason)
		s.setProblem("the gateway refused the TLS session (" + d.Reason + ")")
		return
	}
	s.o.Logf("%s: the TLS session ended (%s): reconnecting with its cookie", s.name, d.Reason)
	s.save()
}

// fitMTU lowers the interface's MTU to a session's, if smaller (the TLS
// path carries less than WireGuard: the session drops what does not fit,
// and the host's TCP sizes its segments to the interface); leave puts
// it back.
func (fb *fallback) fitMTU(mtu int) {
	s := fb.s
	cur, err := linkMTU(s.st.Interface)
	if err != nil || mtu < 576 || mtu >= cur {
		return
	}
	if err := setLinkMTU(s.st.Interface, mtu); err != nil {
		s.o.Logf("%s: the TLS session's MTU %d: %v", s.name, mtu, err)
		return
	}
	if fb.mtu == 0 {
		fb.mtu = cur
	}
	s.o.Verbosef("%s: MTU %d while over TLS (was %d)", s.name, mtu, fb.mtu)
}

// exited handles the OpenConnect engine's exit: a new one, with the
// session's cookie, unless the gateway refused the session.
func (fb *fallback) exited() {
	fb.f.stopEngine(fb.ep)
	fb.ep = nil
	for drained := false; !drained; {
		select {
		case ev := <-fb.f.events:
			fb.onEvent(ev)
		default:
			drained = true
		}
	}
	if fb.f.gaveUp {
		return
	}
	fb.retry = time.After(fb.backoff)
}

// restart starts a new OpenConnect engine (after exited).
func (fb *fallback) restart() {
	fb.retry = nil
	ep, err := fb.f.startEngine()
	if err != nil {
		fb.s.o.Logf("%s: starting a new OpenConnect engine: %v", fb.s.name, err)
		fb.backoff = min(max(2*fb.backoff, 100*time.Millisecond), 5*time.Second)
		fb.retry = time.After(fb.backoff)
		return
	}
	fb.ep, fb.backoff = ep, 0
	fb.s.o.Logf("%s: OpenConnect engine restarted; it connects with the session's cookie", fb.s.name)
}

// canEnter reports whether the TLS path may be taken at now.
func (fb *fallback) canEnter(now time.Time) bool { return fb != nil && !now.Before(fb.notBefore) }

// failing reports whether, at now, the TLS path is to be left as not
// working: the gateway refused its session, or it has had none for
// tlsNoSession.
func (fb *fallback) failing(now time.Time) bool {
	return fb.onTLS() && (fb.f.gaveUp || !fb.down.IsZero() && now.Sub(fb.down) >= tlsNoSession)
}

// abandon leaves a failing TLS path and keeps it closed for tlsPause.
func (fb *fallback) abandon(now time.Time) {
	why := fmt.Sprintf("no session over TLS for %v", now.Sub(fb.down).Round(time.Second))
	if fb.f.gaveUp {
		why = "the gateway refused the TLS session"
	}
	fb.leave(why + fmt.Sprintf(" (not tried again for %v)", tlsPause))
	fb.notBefore = now.Add(tlsPause)
}

// udpWorks reports whether, on the TLS path, WireGuard completed a
// handshake since it was taken; if not, and udpRetry passed since the
// last try, it makes WireGuard try again (a renewed peer sends a fresh
// initiation at once).
func (fb *fallback) udpWorks() bool {
	s := fb.s
	gw := s.p.Offer.Gateways[s.cur]
	if st, err := s.h.Get(); err == nil {
		for _, p := range st.Peers {
			if p.PublicKey == gw.PublicKey && p.LastHandshake.After(fb.entered) {
				return true
			}
		}
	}
	if time.Since(fb.poked) >= udpRetry {
		fb.poked = time.Now()
		s.h.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: gw.PublicKey, Remove: true}}})
		if err := s.h.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{s.peer(s.cur)}}); err != nil {
			s.o.Logf("%s: renewing gateway %s: %v", s.name, gw.Name, err)
		}
	}
	return false
}

// waitFirst is Run's wait for traffic with a fallback: a handshake over
// UDP within FallbackAfter, else the TLS path's first session (or, still,
// a handshake), within wait in all.
func (s *supervisor) waitFirst(ctx context.Context, wait time.Duration) error {
	fb := s.fb
	after := min(s.o.FallbackAfter, wait)
	udpErr := s.waitHandshake(ctx, after)
	if udpErr == nil || ctx.Err() != nil {
		return udpErr
	}
	if err := fb.enter(ctx, fmt.Sprintf("no handshake over UDP within %v", after)); err != nil {
		return fmt.Errorf("%w; and TLS: %v", udpErr, err)
	}
	deadline := time.NewTimer(wait - after)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var exited <-chan struct{}
		if fb.ep != nil {
			exited = fb.ep.Exited
		}
		select {
		case <-ctx.Done():
			fb.leave("stopping")
			return ctx.Err()
		case <-deadline.C:
			fb.leave("no TLS session either")
			return fmt.Errorf("%w; and no session over TLS within %v", udpErr, wait-after)
		case ev := <-fb.f.events:
			fb.onEvent(ev)
			if fb.f.gaveUp {
				fb.leave("the gateway refused the TLS session")
				return fmt.Errorf("%w; and the gateway refused the TLS session: %s", udpErr, ev.down.Reason)
			}
			if fb.up() {
				return nil
			}
		case <-exited:
			fb.leave("the OpenConnect engine exited before its session came up")
			return fmt.Errorf("%w; and the OpenConnect engine exited before its session came up", udpErr)
		case <-tick.C:
			if fb.udpWorks() {
				fb.leave("a handshake over UDP completed meanwhile")
				return nil
			}
		}
	}
}

// Via values of State.
const ViaTLS = "tls"

func linkMTU(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().MTU, nil
}

func setLinkMTU(name string, mtu int) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetMTU(l, mtu)
}
