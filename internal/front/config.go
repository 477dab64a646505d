package front

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// heldConfig is the device's configuration as the UAPI set it, kept by the
// front. It is what a new engine is given after a restart and what `get`
// answers (with the engine's statistics for known peers), so an engine
// cannot add a peer, an allowed IP or a key that outlives it: the only thing
// taken from an engine is a roamed endpoint of a peer the front knows.
//
// A heldConfig is guarded by its owner's lock; update changes it in
// place, apply and clone make new ones.
type heldConfig struct {
	privateKey noise.PrivateKey // zero: none
	listenPort uint16           // as set; 0: any
	fwmark     uint32
	peers      map[noise.PublicKey]*heldPeer
	owner      map[netip.Prefix]noise.PublicKey // which peer holds each allowed IP
	nextOrder  uint64
}

type heldPeer struct {
	order     uint64 // creation order, for a stable replay
	psk       noise.PresharedKey
	endpoint  netip.AddrPort // as set; invalid: none
	roamed    netip.AddrPort // as the engine last reported it; invalid: none
	keepalive uint16
	allowed   []netip.Prefix     // in the order added
	access    *wgcfg.AccessRules // nil: none
}

func newHeldConfig() *heldConfig {
	return &heldConfig{peers: map[noise.PublicKey]*heldPeer{}, owner: map[netip.Prefix]noise.PublicKey{}}
}

func (h *heldConfig) clone() *heldConfig {
	c := *h
	c.peers = make(map[noise.PublicKey]*heldPeer, len(h.peers))
	for k, p := range h.peers {
		cp := *p
		cp.allowed = slices.Clone(p.allowed)
		cp.access = cloneAccess(p.access)
		c.peers[k] = &cp
	}
	c.owner = make(map[netip.Prefix]noise.PublicKey, len(h.owner))
	for k, v := range h.owner {
		c.owner[k] = v
	}
	return &c
}

// publicKey is the device's own public key (zero without a private key).
func (h *heldConfig) publicKey() noise.PublicKey {
	if h.privateKey.IsZero() {
		return noise.PublicKey{}
	}
	return noise.NewLocal(h.privateKey).Public
}

// apply returns the configuration after cfg, applied with the device's
// rules (see wgcfg.PeerConfig): h is not changed. A peer with the device's
// own public key is ignored, as the device ignores it.
func (h *heldConfig) apply(cfg *wgcfg.DeviceConfig) *heldConfig {
	n := h.clone()
	n.update(cfg)
	return n
}

// update is apply in place: it changes h, in time and memory in the size
// of cfg, not of h (the front of a gateway with 1,000 devices applies one
// device's change without copying the other 999).
func (h *heldConfig) update(cfg *wgcfg.DeviceConfig) {
	if cfg.PrivateKey != nil {
		h.privateKey = *cfg.PrivateKey
		if own := h.publicKey(); !own.IsZero() {
			h.removePeer(own)
		}
	}
	if cfg.ListenPort != nil {
		h.listenPort = *cfg.ListenPort
	}
	if cfg.FwMark != nil {
		h.fwmark = *cfg.FwMark
	}
	if cfg.ReplacePeers {
		for k := range h.peers {
			h.removePeer(k)
		}
	}
	own := h.publicKey()
	for i := range cfg.Peers {
		pc := &cfg.Peers[i]
		if pc.PublicKey.IsZero() || (!own.IsZero() && pc.PublicKey == own) {
			continue
		}
		h.applyPeer(pc)
	}
}

func (h *heldConfig) applyPeer(pc *wgcfg.PeerConfig) {
	p := h.peers[pc.PublicKey]
	if pc.Remove {
		h.removePeer(pc.PublicKey)
		return
	}
	if p == nil {
		if pc.UpdateOnly {
			return
		}
		h.nextOrder++
		p = &heldPeer{order: h.nextOrder}
		h.peers[pc.PublicKey] = p
	}
	if pc.PresharedKey != nil {
		p.psk = *pc.PresharedKey
	}
	if pc.Endpoint != nil {
		p.endpoint, p.roamed = *pc.Endpoint, netip.AddrPort{}
	}
	if pc.PersistentKeepalive != nil {
		p.keepalive = *pc.PersistentKeepalive
	}
	if pc.ClearAccess {
		p.access = nil
	}
	if pc.Access != nil {
		p.access = cloneAccess(pc.Access)
	}
	if pc.ReplaceAllowedIPs {
		for _, pfx := range p.allowed {
			delete(h.owner, pfx)
		}
		p.allowed = nil
	}
	for _, pfx := range pc.RemoveAllowedIPs {
		pfx = pfx.Masked()
		if h.owner[pfx] == pc.PublicKey {
			delete(h.owner, pfx)
			p.allowed = slices.DeleteFunc(p.allowed, func(q netip.Prefix) bool { return q == pfx })
		}
	}
	for _, pfx := range pc.AddAllowedIPs {
		pfx = pfx.Masked()
		prev, taken := h.owner[pfx]
		if taken && prev == pc.PublicKey {
			continue
		}
		if taken {
			if q := h.peers[prev]; q != nil {
				q.allowed = slices.DeleteFunc(q.allowed, func(r netip.Prefix) bool { return r == pfx })
			}
		}
		h.owner[pfx] = pc.PublicKey
		p.allowed = append(p.allowed, pfx)
	}
}

func (h *heldConfig) removePeer(k noise.PublicKey) {
	p := h.peers[k]
	if p == nil {
		return
	}
	for _, pfx := range p.allowed {
		delete(h.owner, pfx)
	}
	delete(h.peers, k)
}

// sortedKeys returns the peers in the order they were created.
func (h *heldConfig) sortedKeys() []noise.PublicKey {
	keys := make([]noise.PublicKey, 0, len(h.peers))
	for k := range h.peers {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b noise.PublicKey) int {
		return cmp.Compare(h.peers[a].order, h.peers[b].order)
	})
	return keys
}

// replay is the set request that gives a fresh engine this configuration:
// every peer with its roamed endpoint where one was reported, else the one
// set. port is the listen port to bind (the one in use, when the
// configuration asked for any).
func (h *heldConfig) replay(port uint16) *wgcfg.DeviceConfig {
	key, mark := h.privateKey, h.fwmark
	cfg := &wgcfg.DeviceConfig{PrivateKey: &key, ListenPort: &port, FwMark: &mark, ReplacePeers: true}
	for _, k := range h.sortedKeys() {
		p := h.peers[k]
		psk, keepalive := p.psk, p.keepalive
		pc := wgcfg.PeerConfig{
			PublicKey:           k,
			PresharedKey:        &psk,
			PersistentKeepalive: &keepalive,
			ReplaceAllowedIPs:   true,
			AddAllowedIPs:       slices.Clone(p.allowed),
			Access:              cloneAccess(p.access),
			ClearAccess:         p.access == nil,
		}
		if ep := p.currentEndpoint(); ep.IsValid() {
			pc.Endpoint = &ep
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	return cfg
}

func cloneAccess(a *wgcfg.AccessRules) *wgcfg.AccessRules {
	if a == nil {
		return nil
	}
	return &wgcfg.AccessRules{Rules: slices.Clone(a.Rules)}
}

func (p *heldPeer) currentEndpoint() netip.AddrPort {
	if p.roamed.IsValid() {
		return p.roamed
	}
	return p.endpoint
}

// validEndpoint reports whether ep can be a peer's roamed endpoint: a
// unicast address and a port.
func validEndpoint(ep netip.AddrPort) bool {
	a := ep.Addr()
	return ep.IsValid() && ep.Port() != 0 && !a.IsUnspecified() && !a.IsMulticast() &&
		!a.IsInterfaceLocalMulticast() && !(a.Is4() && a.As4() == [4]byte{255, 255, 255, 255})
}

// takeRoamed records the endpoints an engine reports for peers this
// configuration knows; peers it does not know, and endpoints that are not
// valid, are ignored. It returns how many were ignored.
func (h *heldConfig) takeRoamed(st *wgcfg.DeviceState) (ignored int) {
	for i := range st.Peers {
		ps := &st.Peers[i]
		p := h.peers[ps.PublicKey]
		if p == nil {
			ignored++
			continue
		}
		if !ps.Endpoint.IsValid() || ps.Endpoint == p.currentEndpoint() {
			continue
		}
		if !validEndpoint(ps.Endpoint) {
			ignored++
			continue
		}
		p.roamed = ps.Endpoint
	}
	return ignored
}

// state is the get answer: this configuration, with the statistics and
// the roamed endpoints the engine reports for the peers it knows (eng may
// be nil), and port as the listen port.
func (h *heldConfig) state(eng *wgcfg.DeviceState, port uint16) *wgcfg.DeviceState {
	st := &wgcfg.DeviceState{PrivateKey: h.privateKey, ListenPort: port, FwMark: h.fwmark}
	stats := map[noise.PublicKey]*wgcfg.PeerState{}
	if eng != nil {
		for i := range eng.Peers {
			stats[eng.Peers[i].PublicKey] = &eng.Peers[i]
		}
	}
	for _, k := range h.sortedKeys() {
		p := h.peers[k]
		ps := wgcfg.PeerState{
			PublicKey:           k,
			PresharedKey:        p.psk,
			Endpoint:            p.currentEndpoint(),
			PersistentKeepalive: p.keepalive,
			AllowedIPs:          slices.Clone(p.allowed),
			Access:              cloneAccess(p.access),
		}
		if e := stats[k]; e != nil {
			ps.TxBytes, ps.RxBytes = e.TxBytes, e.RxBytes
			if !e.LastHandshake.IsZero() && e.LastHandshake.Before(time.Now().Add(time.Minute)) {
				ps.LastHandshake = e.LastHandshake
			}
			if validEndpoint(e.Endpoint) {
				ps.Endpoint = e.Endpoint
			}
		}
		st.Peers = append(st.Peers, ps)
	}
	return st
}
