package front

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

func key(b byte) noise.PublicKey {
	var k noise.PublicKey
	k[0], k[31] = b, 1
	return k
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ptr[T any](v T) *T { return &v }

// TestHeldConfigApply: the front's copy of the configuration follows the
// device's rules for every kind of change.
func TestHeldConfigApply(t *testing.T) {
	var priv noise.PrivateKey
	priv[0] = 7
	own := noise.NewLocal(priv).Public
	h := newHeldConfig().apply(&wgcfg.DeviceConfig{
		PrivateKey: &priv, ListenPort: ptr(uint16(51820)), FwMark: ptr(uint32(0x20)),
		Peers: []wgcfg.PeerConfig{
			{PublicKey: key(1), Endpoint: ptr(netip.MustParseAddrPort("198.18.0.2:51820")),
				PersistentKeepalive: ptr(uint16(25)), AddAllowedIPs: []netip.Prefix{pfx("100.64.1.0/24"), pfx("2001:db8:1::/64")}},
			{PublicKey: key(2), AddAllowedIPs: []netip.Prefix{pfx("100.64.2.0/24")}},
			{PublicKey: own, AddAllowedIPs: []netip.Prefix{pfx("0.0.0.0/0")}}, // ignored
			{PublicKey: key(3), UpdateOnly: true},                             // not created
		},
	})
	if h.listenPort != 51820 || h.fwmark != 0x20 || h.privateKey != priv || len(h.peers) != 2 {
		t.Fatalf("after the first set: %+v", h)
	}
	// Peer 2 takes 100.64.1.0/24 from peer 1; peer 1 gives up its v6
	// prefix; removing a prefix it does not own changes nothing.
	h2 := h.apply(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{
		{PublicKey: key(2), AddAllowedIPs: []netip.Prefix{pfx("100.64.1.0/24")}},
		{PublicKey: key(1), RemoveAllowedIPs: []netip.Prefix{pfx("2001:db8:1::/64"), pfx("100.64.2.0/24")}},
	}})
	if got := h2.peers[key(1)].allowed; len(got) != 0 {
		t.Errorf("peer 1 still has %v", got)
	}
	if got := h2.peers[key(2)].allowed; !slices.Equal(got, []netip.Prefix{pfx("100.64.2.0/24"), pfx("100.64.1.0/24")}) {
		t.Errorf("peer 2 has %v", got)
	}
	if len(h.peers[key(1)].allowed) != 2 {
		t.Error("apply changed the configuration it was called on")
	}
	// Replace the allowed IPs, remove a peer, then replace every peer.
	h3 := h2.apply(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{
		{PublicKey: key(2), ReplaceAllowedIPs: true, AddAllowedIPs: []netip.Prefix{pfx("100.64.9.9/32")}},
		{PublicKey: key(1), Remove: true},
	}})
	if _, ok := h3.peers[key(1)]; ok || len(h3.owner) != 1 || h3.owner[pfx("100.64.9.9/32")] != key(2) {
		t.Errorf("after replace and remove: peers %v owner %v", h3.peers, h3.owner)
	}
	h4 := h3.apply(&wgcfg.DeviceConfig{ReplacePeers: true, Peers: []wgcfg.PeerConfig{{PublicKey: key(4)}}})
	if len(h4.peers) != 1 || h4.peers[key(4)] == nil || len(h4.owner) != 0 {
		t.Errorf("after replace_peers: %v", h4.peers)
	}
	// A new private key whose public key is a peer's removes that peer.
	var priv2 noise.PrivateKey
	priv2[0] = 9
	own2 := noise.NewLocal(priv2).Public
	h5 := h4.apply(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: own2}}})
	h5 = h5.apply(&wgcfg.DeviceConfig{PrivateKey: &priv2})
	if _, ok := h5.peers[own2]; ok {
		t.Error("the peer with the new own key stayed")
	}
}

// TestHeldConfigReplay: the replay gives a fresh engine the held
// configuration, with roamed endpoints for known peers only.
func TestHeldConfigReplay(t *testing.T) {
	var priv noise.PrivateKey
	priv[0] = 7
	set := netip.MustParseAddrPort("198.18.0.2:51820")
	h := newHeldConfig().apply(&wgcfg.DeviceConfig{
		PrivateKey: &priv, ListenPort: ptr(uint16(0)),
		Peers: []wgcfg.PeerConfig{
			{PublicKey: key(1), Endpoint: &set, AddAllowedIPs: []netip.Prefix{pfx("100.64.1.0/24")}},
			{PublicKey: key(2), AddAllowedIPs: []netip.Prefix{pfx("100.64.2.0/24")}},
		},
	})
	roamed := netip.MustParseAddrPort("198.18.0.3:40000")
	// What a lying engine reports: a roamed endpoint (kept), an endpoint
	// that is no address (ignored), a peer nobody configured, allowed IPs
	// and keys of its own (ignored).
	ignored := h.takeRoamed(&wgcfg.DeviceState{PrivateKey: noise.PrivateKey{1}, Peers: []wgcfg.PeerState{
		{PublicKey: key(1), Endpoint: roamed, AllowedIPs: []netip.Prefix{pfx("0.0.0.0/0")}},
		{PublicKey: key(2), Endpoint: netip.MustParseAddrPort("0.0.0.0:1")},
		{PublicKey: key(66), Endpoint: roamed, AllowedIPs: []netip.Prefix{pfx("::/0")}},
	}})
	if ignored != 2 {
		t.Errorf("ignored %d reports, want 2", ignored)
	}
	cfg := h.replay(34567)
	if *cfg.PrivateKey != priv || *cfg.ListenPort != 34567 || !cfg.ReplacePeers || len(cfg.Peers) != 2 {
		t.Fatalf("replay: %+v", cfg)
	}
	p1, p2 := cfg.Peers[0], cfg.Peers[1]
	if p1.PublicKey != key(1) || *p1.Endpoint != roamed || !slices.Equal(p1.AddAllowedIPs, []netip.Prefix{pfx("100.64.1.0/24")}) {
		t.Errorf("peer 1: %+v", p1)
	}
	if p2.PublicKey != key(2) || p2.Endpoint != nil || !p2.ReplaceAllowedIPs {
		t.Errorf("peer 2: %+v", p2)
	}
	// An endpoint set over the UAPI wins over the roamed one.
	h = h.apply(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: key(1), Endpoint: &set}}})
	if ep := *h.replay(1).Peers[0].Endpoint; ep != set {
		t.Errorf("after a set endpoint, the replay has %v", ep)
	}
}

// TestHeldConfigState: get answers the held configuration; the engine
// adds only statistics (and endpoints) of known peers.
func TestHeldConfigState(t *testing.T) {
	h := newHeldConfig().apply(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{
		{PublicKey: key(1), AddAllowedIPs: []netip.Prefix{pfx("100.64.1.0/24")}},
	}})
	hs := time.Unix(1700000000, 0)
	st := h.state(&wgcfg.DeviceState{ListenPort: 9, FwMark: 9, Peers: []wgcfg.PeerState{
		{PublicKey: key(1), TxBytes: 10, RxBytes: 20, LastHandshake: hs, AllowedIPs: []netip.Prefix{pfx("0.0.0.0/0")}},
		{PublicKey: key(66), TxBytes: 1},
	}}, 51820)
	if st.ListenPort != 51820 || st.FwMark != 0 || len(st.Peers) != 1 {
		t.Fatalf("state: %+v", st)
	}
	p := st.Peers[0]
	if p.TxBytes != 10 || p.RxBytes != 20 || !p.LastHandshake.Equal(hs) || !slices.Equal(p.AllowedIPs, []netip.Prefix{pfx("100.64.1.0/24")}) {
		t.Errorf("peer: %+v", p)
	}
	if st := h.state(nil, 1); len(st.Peers) != 1 || st.Peers[0].TxBytes != 0 {
		t.Errorf("without the engine's answer: %+v", st)
	}
}

// TestHeldConfigAccess: a peer's access rules are held, replayed and
// answered as set; an engine's report of other rules changes nothing.
func TestHeldConfigAccess(t *testing.T) {
	rule := acl.Rule{Dst: pfx("198.18.2.0/24"), Proto: acl.ProtoTCP, PortLo: 22, PortHi: 22}
	h := newHeldConfig().apply(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{
		{PublicKey: key(1), Access: &wgcfg.AccessRules{Rules: []acl.Rule{rule}}},
		{PublicKey: key(2)},
	}})
	r := h.replay(1)
	if a := r.Peers[0].Access; a == nil || len(a.Rules) != 1 || a.Rules[0] != rule || r.Peers[0].ClearAccess {
		t.Errorf("replayed access %+v", r.Peers[0])
	}
	if r.Peers[1].Access != nil || !r.Peers[1].ClearAccess {
		t.Errorf("a peer without rules replays as %+v", r.Peers[1])
	}
	lie := &wgcfg.DeviceState{Peers: []wgcfg.PeerState{{PublicKey: key(1), Access: nil}, {PublicKey: key(2), Access: &wgcfg.AccessRules{}}}}
	st := h.state(lie, 1)
	if st.Peers[0].Access == nil || st.Peers[1].Access != nil {
		t.Errorf("state follows the engine's report: %+v", st.Peers)
	}
	h = h.apply(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: key(1), ClearAccess: true}}})
	if h.peers[key(1)].access != nil {
		t.Error("ClearAccess kept the rules")
	}
}
