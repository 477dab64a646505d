package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/netconf"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// The supervisor keeps a running tunnel current and alive:
//
//   - every Options.Probe it asks the gateway in use for the device's
//     offer, inside the tunnel (the offer's Control address). An answer
//     proves the path works both ways; a changed offer (routes, DNS,
//     gateways) is stored in the profile and applied at once with
//     netconf.Update and a new peer configuration.
//   - after Options.FailAfter missed answers in a row it moves to the next
//     gateway of the profile (with one gateway: the same one again, with a
//     fresh handshake, which is what a restarted gateway needs). The kill
//     switch stays all along.
//   - when a whole round of gateways failed, it asks their APIs (outside
//     the tunnel, by the firewall mark) whether the device is still
//     enrolled; a revoked device says so in its state and stops trying.
//
// A change of the host's own addresses needs nothing: WireGuard sends from
// the new one and the gateway follows the device's endpoint.
type supervisor struct {
	name       string
	o          *Options
	p          *profile.Profile
	key        noise.PrivateKey
	h          uapi.Handler
	st         *State
	plan       *netconf.Plan
	cur        int // the gateway in use, in p.Offer.Gateways
	killSwitch bool

	fb *fallback // the TLS path, nil: none

	etag   string
	fails  int // missed answers in a row
	round  int // gateways moved to since the last answer
	client *http.Client
}

func (s *supervisor) saveRecord(r *netconf.Record) error {
	s.st.Netconf = *r
	return saveState(s.o, s.st)
}

// peer is the WireGuard peer of gateway i.
func (s *supervisor) peer(i int) wgcfg.PeerConfig {
	pc := s.p.Peer(s.p.Offer.Gateways[i])
	if *pc.PersistentKeepalive == 0 {
		ka := uint16(defaultKeepalive)
		pc.PersistentKeepalive = &ka
	}
	return pc
}

// makePlan is the host configuration of the current offer.
func (s *supervisor) makePlan() *netconf.Plan {
	o := &s.p.Offer
	plan := &netconf.Plan{Interface: s.st.Interface, Addresses: o.Addresses, MTU: o.MTU,
		Routes: o.TunnelRoutes(), FwMark: FwMark, DNS: o.DNS, Search: o.Search}
	if s.killSwitch {
		plan.KillSwitch = &netconf.KillSwitch{}
		for _, g := range o.Gateways {
			plan.KillSwitch.Endpoints = append(plan.KillSwitch.Endpoints, g.Endpoint)
			if a := apiAddr(g.API); a.IsValid() {
				plan.KillSwitch.Endpoints = append(plan.KillSwitch.Endpoints, a)
			}
			// The TLS path's TCP and UDP (DTLS) port.
			if a := apiAddr(g.TLS); a.IsValid() && s.fb != nil && !slices.Contains(plan.KillSwitch.Endpoints, a) {
				plan.KillSwitch.Endpoints = append(plan.KillSwitch.Endpoints, a)
			}
		}
	}
	return plan
}

// waitHandshake waits (bounded) until the gateway in use completed a
// handshake.
func (s *supervisor) waitHandshake(ctx context.Context, wait time.Duration) error {
	gw := s.p.Offer.Gateways[s.cur]
	deadline := time.Now().Add(wait)
	for {
		if st, err := s.h.Get(); err == nil {
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
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// loop supervises until ctx ends or the interface stops.
func (s *supervisor) loop(ctx context.Context, frontDone chan error) error {
	if !s.p.Offer.Control.IsValid() {
		s.o.Logf("the gateway offers no control service: the profile is not refreshed and there is no failover")
	}
	s.client = &http.Client{Timeout: s.o.Probe * 3 / 4, Transport: &http.Transport{Proxy: nil, MaxIdleConns: 1, DisableKeepAlives: true}}
	t := time.NewTicker(s.o.Probe)
	defer t.Stop()
	for {
		var events <-chan ocEvent
		var exited <-chan struct{}
		var retry <-chan time.Time
		if s.fb.onTLS() {
			events, retry = s.fb.f.events, s.fb.retry
			if s.fb.ep != nil {
				exited = s.fb.ep.Exited
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-frontDone:
			frontDone <- err
			return fmt.Errorf("the interface stopped: %v", err)
		case ev := <-events:
			s.fb.onEvent(ev)
			continue
		case <-exited:
			s.fb.exited()
			continue
		case <-retry:
			s.fb.restart()
			continue
		case <-t.C:
		}
		if !s.st.Revoked.IsZero() {
			continue
		}
		if s.fb.onTLS() && s.fb.udpWorks() {
			s.fb.leave("a handshake over UDP completed")
			s.fails = 0
			continue
		}
		if now := time.Now(); s.fb.failing(now) {
			s.fb.abandon(now)
			s.fails = 0
			continue
		}
		if !s.p.Offer.Control.IsValid() {
			continue
		}
		if err := s.poll(ctx); err == nil {
			if s.fails > 0 || s.st.Problem != "" {
				s.o.Logf("gateway %s answers again", s.st.Gateway)
			}
			s.fails, s.round = 0, 0
			s.setProblem("")
			continue
		} else {
			s.fails++
			s.o.Verbosef("gateway %s: %v", s.st.Gateway, err)
			if s.fails < s.o.FailAfter {
				continue
			}
			s.setProblem(fmt.Sprintf("gateway %s does not answer (%v)", s.st.Gateway, err))
		}
		s.fails = 0
		switch {
		case s.fb.onTLS():
			// Over TLS too: its engine reconnects by itself; the
			// gateways may say the device was revoked.
			if at, ok := s.revoked(ctx); ok {
				s.fb.leave("revoked")
				s.revoke(at)
			}
			continue
		case s.fb.canEnter(time.Now()):
			if err := s.fb.enter(ctx, fmt.Sprintf("gateway %s does not answer over UDP", s.st.Gateway)); err == nil {
				continue
			} else {
				s.o.Logf("%s: no fallback to TLS: %v", s.name, err)
			}
		}
		s.round++
		if s.round >= len(s.p.Offer.Gateways) {
			s.round = 0
			if at, ok := s.revoked(ctx); ok {
				s.revoke(at)
				continue
			}
		}
		s.moveTo((s.cur + 1) % len(s.p.Offer.Gateways))
	}
}

// revoke stops the tunnel of a device the gateways say was revoked at at.
func (s *supervisor) revoke(at time.Time) {
	s.o.Logf("the gateways say this device was revoked at %s: the tunnel stays down, nothing is retried; run ptun down %s, and ptun join with a new invite",
		at.Format(time.RFC3339), s.name)
	s.st.Revoked = at
	s.setProblem("this device was revoked")
	s.h.Set(&wgcfg.DeviceConfig{ReplacePeers: true})
}

func (s *supervisor) save() {
	if err := saveState(s.o, s.st); err != nil {
		s.o.Logf("recording the state: %v", err)
	}
}

func (s *supervisor) setProblem(p string) {
	if s.st.Problem == p {
		return
	}
	s.st.Problem = p
	if err := saveState(s.o, s.st); err != nil {
		s.o.Logf("recording the state: %v", err)
	}
}

// moveTo makes gateway i the peer: the old peer goes (with its session)
// and the new one starts with a fresh handshake.
func (s *supervisor) moveTo(i int) {
	old := s.p.Offer.Gateways[s.cur]
	next := s.p.Offer.Gateways[i]
	if err := s.h.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: old.PublicKey, Remove: true}}}); err != nil {
		s.o.Logf("removing gateway %s: %v", old.Name, err)
	}
	if err := s.h.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{s.peer(i)}}); err != nil {
		s.o.Logf("configuring gateway %s: %v", next.Name, err)
	}
	if next.Name != old.Name {
		s.o.Logf("moving from gateway %s to %s (%s)", old.Name, next.Name, next.Endpoint)
	} else {
		s.o.Logf("gateway %s: starting a new session", next.Name)
	}
	s.cur = i
	s.st.Gateway = next.Name
	s.etag = ""
	if err := saveState(s.o, s.st); err != nil {
		s.o.Logf("recording the state: %v", err)
	}
}

// poll asks the control service for the offer and applies a changed one.
func (s *supervisor) poll(ctx context.Context) error {
	ctl := s.p.Offer.Control
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ctl.String()+profile.ControlPath, nil)
	if err != nil {
		return err
	}
	if s.etag != "" {
		req.Header.Set("If-None-Match", s.etag)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		s.st.Refreshed = time.Now().UTC()
		return nil
	case http.StatusOK:
	default:
		return fmt.Errorf("the control service answered %s", resp.Status)
	}
	offer, err := profile.DecodeOffer(resp.Body)
	if err != nil {
		return err
	}
	s.st.Refreshed = time.Now().UTC()
	if offer.User != s.p.Offer.User || offer.Device != s.p.Offer.Device {
		return fmt.Errorf("the control service answered for %s/%s", offer.User, offer.Device)
	}
	if !reflect.DeepEqual(*offer, s.p.Offer) {
		if err := s.apply(offer); err != nil {
			s.o.Logf("applying the gateway's new profile: %v", err)
			return nil // the gateway answered; the tunnel works as it was
		}
	}
	s.etag = resp.Header.Get("ETag")
	return nil
}

// apply makes offer the profile's: stored, then the peer and the host
// configuration changed to it, only where they differ.
func (s *supervisor) apply(offer *profile.Offer) error {
	old := s.p.Offer
	np := *s.p
	np.Offer = *offer
	if err := profile.Save(s.o.Profiles, &np); err != nil {
		return err
	}
	s.p = &np
	cur := -1
	for i, g := range offer.Gateways {
		if g.Name == old.Gateways[s.cur].Name {
			cur = i
		}
	}
	switch {
	case cur < 0: // the gateway in use is gone from the profile
		s.cur = 0
		s.moveToFresh(old.Gateways)
	default:
		s.cur = cur
		if err := s.h.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{s.peer(cur)}}); err != nil {
			return err
		}
	}
	plan := s.makePlan()
	if err := netconf.Update(s.plan, plan, &s.st.Netconf, netconf.Options{Save: s.saveRecord, ResolvConf: s.o.ResolvConf}); err != nil {
		return err
	}
	s.plan = plan
	s.o.Logf("profile updated by gateway %s: routes %v, DNS %v, search %v, %d gateways", s.st.Gateway, offer.Routes, offer.DNS, offer.Search, len(offer.Gateways))
	return nil
}

// moveToFresh replaces every peer with the current gateway's.
func (s *supervisor) moveToFresh(was []profile.Gateway) {
	cfg := &wgcfg.DeviceConfig{}
	for _, g := range was {
		cfg.Peers = append(cfg.Peers, wgcfg.PeerConfig{PublicKey: g.PublicKey, Remove: true})
	}
	s.h.Set(cfg)
	s.h.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{s.peer(s.cur)}})
	s.st.Gateway = s.p.Offer.Gateways[s.cur].Name
	saveState(s.o, s.st)
}

// revoked asks each gateway's API whether this device is still enrolled,
// outside the tunnel; ok when one says it is revoked.
func (s *supervisor) revoked(ctx context.Context) (at time.Time, ok bool) {
	for _, g := range s.p.Offer.Gateways {
		if g.API == "" {
			continue
		}
		pinText := g.Pin
		if pinText == "" {
			pinText = s.p.Pin
		}
		pin, err := enroll.ParsePin(pinText)
		if err != nil {
			continue
		}
		ans, err := askStatus(ctx, g, pin, s.key)
		if err != nil {
			s.o.Verbosef("asking gateway %s whether this device is enrolled: %v", g.Name, err)
			continue
		}
		if ans.State == enroll.StateRevoked {
			if ans.At.IsZero() {
				ans.At = time.Now().UTC()
			}
			return ans.At, true
		}
		return time.Time{}, false // enrolled: the gateways are unreachable, or restarting
	}
	return time.Time{}, false
}

// askStatus asks gateway g's API, with sockets marked FwMark (around the
// tunnel, and through the kill switch to the API's address).
func askStatus(ctx context.Context, g profile.Gateway, pin enroll.Pin, key noise.PrivateKey) (*enroll.StatusAnswer, error) {
	sr, err := enroll.NewStatusRequest(key, g.PublicKey, time.Now())
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(sr)
	dialer := &net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, FwMark) }); err != nil {
			return err
		}
		return serr
	}}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: enroll.PinnedTLS(pin), DialContext: dialer.DialContext, Proxy: nil, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.API+enroll.StatusPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(resp.Status)
	}
	var ans enroll.StatusAnswer
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 4<<10)).Decode(&ans); err != nil {
		return nil, err
	}
	return &ans, nil
}
