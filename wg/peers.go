package wg

// The peer lifecycle: how a set request's peer changes are applied, and how
// a peer is removed.

import (
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// applyPeer applies one peer change of a validated set request (see
// wgcfg.PeerConfig for the order), with its access rules compiled (nil: no
// change). configMu is held.
func (d *Device) applyPeer(pc *wgcfg.PeerConfig, access *acl.List) {
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
	if pc.ClearAccess {
		p.access.Store(nil)
	}
	if access != nil {
		p.access.Store(access)
	}
	if pc.PersistentKeepalive != nil {
		was := p.persistentKeepalive.Swap(uint32(*pc.PersistentKeepalive))
		if was == 0 && *pc.PersistentKeepalive != 0 {
			// Start at once, as wg-quick users expect the tunnel to come up.
			if p.keypairs.current.Load() != nil {
				d.requestControl(p, controlKeepalive)
			} else {
				d.initiateHandshake(p, false)
			}
		}
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
	p.unstageLocked(len(p.staged))
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
