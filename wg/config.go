package wg

import (
	"errors"
	"fmt"
	"sort"
	"syscall"
	"time"

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
		if lh := p.lastHandshake.Load(); lh != 0 {
			ps.LastHandshake = time.Unix(0, lh)
		}
		st.Peers = append(st.Peers, ps)
	}
	return st, nil
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
	for i := range cfg.Peers {
		pc := &cfg.Peers[i]
		if pc.PublicKey.IsZero() {
			return &wgcfg.Error{Errno: syscall.EINVAL, Err: errors.New("peer public key is zero")}
		}
		if newLocal != nil && pc.PublicKey == newLocal.Public && !pc.Remove {
			return &wgcfg.Error{Errno: syscall.EINVAL, Err: errors.New("a peer cannot have this device's own public key")}
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

	// The only step that can fail on the system's side comes first.
	if cfg.ListenPort != nil && *cfg.ListenPort != d.listenPort {
		if err := d.rebind(*cfg.ListenPort); err != nil {
			return &wgcfg.Error{Errno: wgcfg.Errno(err, syscall.EADDRINUSE), Err: fmt.Errorf("listen port %d: %w", *cfg.ListenPort, err)}
		}
	}
	if cfg.FwMark != nil && *cfg.FwMark != d.fwmark {
		if err := d.transport.SetMark(*cfg.FwMark); err != nil {
			return &wgcfg.Error{Errno: wgcfg.Errno(err, syscall.EINVAL), Err: fmt.Errorf("fwmark: %w", err)}
		}
		d.fwmark = *cfg.FwMark
	}

	// Apply: nothing below fails.
	if cfg.PrivateKey != nil {
		d.setLocal(newLocal)
	}
	if cfg.ReplacePeers {
		d.removeAllPeers()
	}
	for i := range cfg.Peers {
		d.applyPeer(&cfg.Peers[i])
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

func (d *Device) applyPeer(pc *wgcfg.PeerConfig) {
	p := d.lookupPeer(pc.PublicKey)
	if pc.Remove {
		if p != nil {
			d.removePeer(p)
		}
		return
	}
	if p == nil {
		if pc.UpdateOnly {
			return
		}
		p = newPeer(d, pc.PublicKey)
		d.peers.Lock()
		d.peers.byKey[pc.PublicKey] = p
		d.peers.Unlock()
	}
	if pc.PresharedKey != nil {
		p.handshake.Lock()
		changed := p.handshake.psk != *pc.PresharedKey
		p.handshake.psk = *pc.PresharedKey
		p.handshake.Unlock()
		if changed {
			p.clearSessions()
		}
	}
	if pc.Endpoint != nil {
		p.setConfiguredEndpoint(*pc.Endpoint)
	}
	if pc.ReplaceAllowedIPs {
		d.allowed.RemoveValue(p)
	}
	for _, pfx := range pc.RemoveAllowedIPs {
		d.allowed.Remove(pfx, p)
	}
	for _, pfx := range pc.AddAllowedIPs {
		d.allowed.Insert(pfx, p)
	}
	if pc.PersistentKeepalive != nil {
		was := p.persistentKeepalive.Swap(uint32(*pc.PersistentKeepalive))
		if was == 0 && *pc.PersistentKeepalive != 0 {
			// Start at once, as wg-quick users expect the tunnel to come up.
			go d.sendKeepaliveOrHandshake(p)
		}
	}
}

func (d *Device) sendKeepaliveOrHandshake(p *Peer) {
	if p.keypairs.current.Load() != nil {
		d.sendKeepalive(p)
	} else {
		d.initiateHandshake(p, false)
	}
}

func (d *Device) removePeer(p *Peer) {
	p.removed.Store(true)
	d.peers.Lock()
	delete(d.peers.byKey, p.publicKey)
	d.peers.Unlock()
	d.allowed.RemoveValue(p)
	p.clearSessions()
	p.sendMu.Lock()
	clear(p.staged)
	p.staged = nil
	p.sendMu.Unlock()
}

func (d *Device) removeAllPeers() {
	peers := d.peerList()
	for _, p := range peers {
		d.removePeer(p)
	}
}

// String names a peer by its key's first characters, as wg does.
func (p *Peer) String() string {
	s := p.publicKey.Base64()
	return "(" + s[:4] + "…" + s[len(s)-5:] + ")"
}
