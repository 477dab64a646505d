package wg

import (
	"errors"
	"fmt"
	"sort"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// Get returns the device's configuration and peer state (uapi get=1).
func (d *Device) Get() (*wgcfg.DeviceState, error) {
	d.configMu.Lock()
	defer d.configMu.Unlock()
	st := &wgcfg.DeviceState{ListenPort: d.listenPort, FwMark: d.fwmark}
	if l := d.local.Load(); l != nil {
		st.PrivateKey = l.Private
	}
	peers := d.peerList()
	sort.Slice(peers, func(i, j int) bool {
		a, b := peers[i].publicKey, peers[j].publicKey
		return string(a[:]) < string(b[:])
	})
	for _, p := range peers {
		ps := wgcfg.PeerState{
			PublicKey:           p.publicKey,
			TxBytes:             p.txBytes.Load(),
			RxBytes:             p.rxBytes.Load(),
			PersistentKeepalive: uint16(p.persistentKeepalive.Load()),
			AllowedIPs:          d.allowed.Prefixes(p),
		}
		p.handshake.Lock()
		ps.PresharedKey = p.handshake.psk
		p.handshake.Unlock()
		if ep, ok := p.Endpoint(); ok {
			ps.Endpoint = ep
		}
		if l := p.access.Load(); l != nil {
			ps.Access = &wgcfg.AccessRules{Rules: l.Rules()}
		}
		if lh := p.lastHandshake.Load(); lh != 0 {
			ps.LastHandshake = time.Unix(0, lh)
		}
		st.Peers = append(st.Peers, ps)
	}
	return st, nil
}

// EndpointChanges reports the peers whose remote endpoint changed after
// generation since (0: every peer with an endpoint), with their current
// endpoints, and the generation to pass next time. A caller that keeps a
// copy of the endpoints (the front, for a restart) thus reads what changed,
// not every peer each time. It allocates only for the peers it reports.
func (d *Device) EndpointChanges(since uint64) wgcfg.EndpointChanges {
	d.peers.RLock()
	defer d.peers.RUnlock()
	d.endpoints.Lock()
	defer d.endpoints.Unlock()
	out := wgcfg.EndpointChanges{Gen: d.endpoints.gen}
	for _, p := range d.peers.byKey {
		if p.endpointGen <= since {
			continue
		}
		if ep := p.endpoint.Load(); ep != nil {
			out.Peers = append(out.Peers, wgcfg.PeerEndpoint{PublicKey: p.publicKey, Endpoint: ep.Remote})
		}
	}
	return out
}

// Set applies a configuration change (uapi set=1) all or nothing: it checks
// everything first, and if any part fails the device is as it was.
func (d *Device) Set(cfg *wgcfg.DeviceConfig) error {
	d.configMu.Lock()
	defer d.configMu.Unlock()
	if d.isClosed() {
		return &wgcfg.Error{Errno: syscall.ENODEV, Err: errors.New("device is closed")}
	}

	// Check: what the new private key and the peer list will be.
	newLocal := d.local.Load()
	if cfg.PrivateKey != nil {
		if cfg.PrivateKey.IsZero() {
			newLocal = nil
		} else {
			newLocal = noise.NewLocal(*cfg.PrivateKey)
		}
	}
	// Any public key is accepted, as the kernel and wireguard-go do: a
	// low-order one (all zeros among them) makes a peer that never
	// completes a handshake and is never sent to, and the device's own key
	// makes no peer at all (so one configuration can serve every host).
	access := make([]*acl.List, len(cfg.Peers)) // compiled access rules, by peer change
	for i := range cfg.Peers {
		pc := &cfg.Peers[i]
		if pc.Access != nil {
			l, err := d.compileAccess(pc.Access.Rules)
			if err != nil {
				return &wgcfg.Error{Errno: syscall.EINVAL, Err: err}
			}
			access[i] = l
		}
		for _, pfx := range append(pc.AddAllowedIPs, pc.RemoveAllowedIPs...) {
			if !pfx.IsValid() {
				return &wgcfg.Error{Errno: syscall.EINVAL, Err: fmt.Errorf("invalid allowed IP %v", pfx)}
			}
		}
		if pc.Endpoint != nil && (!pc.Endpoint.Addr().IsValid() || pc.Endpoint.Port() == 0) {
			return &wgcfg.Error{Errno: syscall.EINVAL, Err: fmt.Errorf("invalid endpoint %v", *pc.Endpoint)}
		}
	}

	// The steps that can fail on the system's side come first, and each
	// puts back what it changed when it fails.
	if err := d.setTransport(cfg); err != nil {
		return err
	}

	// Apply: nothing below fails.
	if cfg.PrivateKey != nil {
		d.setLocal(newLocal)
	}
	if cfg.ReplacePeers {
		d.removeAllPeers()
	}
	for i := range cfg.Peers {
		if newLocal != nil && cfg.Peers[i].PublicKey == newLocal.Public {
			continue // ignored, not refused
		}
		d.applyPeer(&cfg.Peers[i], access[i])
	}
	return nil
}

// setTransport applies cfg's listen port and fwmark. On failure the
// transport is as it was (see rebind for the one exception).
func (d *Device) setTransport(cfg *wgcfg.DeviceConfig) error {
	port, mark := d.listenPort, d.fwmark
	if cfg.ListenPort != nil {
		port = *cfg.ListenPort
	}
	if cfg.FwMark != nil {
		mark = *cfg.FwMark
	}
	switch {
	case cfg.ListenPort != nil && (!d.bound || port != d.listenPort):
		// The new sockets get the new mark before they are in force.
		if err := d.rebind(port, mark); err != nil {
			return &wgcfg.Error{Errno: wgcfg.Errno(err, syscall.EADDRINUSE), Err: fmt.Errorf("listen port %d: %w", port, err)}
		}
		d.fwmark = mark
	case mark != d.fwmark && !d.bound:
		d.fwmark = mark // in force when a listen port is set
	case mark != d.fwmark:
		if err := d.transport.SetMark(mark); err != nil {
			// Some sockets may carry the new mark already.
			if err2 := d.transport.SetMark(d.fwmark); err2 != nil {
				if err3 := d.rebind(d.listenPort, d.fwmark); err3 != nil {
					err = fmt.Errorf("%w (and restoring fwmark %d failed: %v)", err, d.fwmark, err3)
				}
			}
			return &wgcfg.Error{Errno: wgcfg.Errno(err, syscall.EINVAL), Err: fmt.Errorf("fwmark: %w", err)}
		}
		d.fwmark = mark
	}
	return nil
}

// setLocal installs a new identity; every session made with the old key ends.
func (d *Device) setLocal(l *noise.Local) {
	old := d.local.Load()
	if old != nil && l != nil && old.Private == l.Private {
		return
	}
	d.local.Store(l)
	if l != nil {
		d.cookies.Store(noise.NewCookieChecker(l.Public))
		if p := d.lookupPeer(l.Public); p != nil {
			d.removePeer(p)
		}
	} else {
		d.cookies.Store(nil)
	}
	d.peers.RLock()
	for _, p := range d.peers.byKey {
		p.clearSessions()
	}
	d.peers.RUnlock()
}
