package gateway

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// recorder is a uapi.Handler that keeps the peers it is given.
type recorder struct {
	mu    sync.Mutex
	peers map[noise.PublicKey]wgcfg.PeerConfig
	sets  int
}

func (r *recorder) Get() (*wgcfg.DeviceState, error) { return &wgcfg.DeviceState{}, nil }

func (r *recorder) Set(cfg *wgcfg.DeviceConfig) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets++
	for _, pc := range cfg.Peers {
		if pc.Remove {
			delete(r.peers, pc.PublicKey)
		} else {
			r.peers[pc.PublicKey] = pc
		}
	}
	return nil
}

// TestSyncFollowsTheRegistry: the syncer adds an enrolled device as a peer
// with its addresses and access, removes it when another process (the
// CLI) revokes it, and touches no other peer.
func TestSyncFollowsTheRegistry(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	reg, err := registry.OpenSQLite(ctx, path, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	reg.AddUser(ctx, "alice")
	reg.AddGroup(ctx, "eng")
	reg.AddMember(ctx, "eng", "alice")
	k1, _ := noise.GeneratePrivateKey()
	k2, _ := noise.GeneratePrivateKey()
	d1, err := reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key(k1.PublicKey())})
	if err != nil {
		t.Fatal(err)
	}
	reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "phone", PublicKey: registry.Key(k2.PublicKey())})
	h := &recorder{peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	cfg := &Config{Site: Site{Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}}}
	s := &syncer{reg: reg, cfg: cfg, h: h, logf: t.Logf, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if len(h.peers) != 2 {
		t.Fatalf("peers after the first sync: %d", len(h.peers))
	}
	pc := h.peers[k1.PublicKey()]
	if len(pc.AddAllowedIPs) != 1 || pc.AddAllowedIPs[0].Addr() != d1.Addresses[0] || len(pc.Access.Rules) != 1 {
		t.Fatalf("peer %+v", pc)
	}
	// Another process revokes.
	other, err := registry.OpenSQLite(ctx, path, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.RevokeDevice(ctx, d1.ID); err != nil {
		t.Fatal(err)
	}
	other.Close()
	sets := h.sets
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.peers[k1.PublicKey()]; ok || len(h.peers) != 1 {
		t.Fatalf("after the revoke: %d peers, the revoked one there: %v", len(h.peers), ok)
	}
	if h.sets != sets+1 {
		t.Fatalf("%d sets for one revoke", h.sets-sets)
	}
	if err := s.sync(ctx); err != nil || h.sets != sets+1 {
		t.Fatalf("a sync with no change set the device (%v)", err)
	}
}

// TestSyncAccessByGroups: each device's access comes from its user's
// groups, as GroupsOf gives them: a group's rules, every route for a user
// in a group without rules or in none, and the union for a user in
// several groups.
func TestSyncAccessByGroups(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	for _, g := range []string{"eng", "ops", "web"} {
		if _, err := reg.AddGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []struct{ group, dst string }{{"eng", "198.18.2.2/32"}, {"web", "198.18.2.80/32"}, {"eng", "198.18.3.0/24"}} {
		if _, err := reg.AddRule(ctx, r.group, registry.Rule{Dest: netip.MustParsePrefix(r.dst), Proto: registry.ProtoTCP, PortFrom: 22, PortTo: 22}); err != nil {
			t.Fatal(err)
		}
	}
	members := map[string][]string{"alice": {"eng"}, "bob": {"web", "eng"}, "carol": nil, "dave": {"ops", "web"}}
	keys := map[string]noise.PublicKey{}
	for user, groups := range members {
		reg.AddUser(ctx, user)
		for _, g := range groups {
			if err := reg.AddMember(ctx, g, user); err != nil {
				t.Fatal(err)
			}
		}
		k, _ := noise.GeneratePrivateKey()
		keys[user] = k.PublicKey()
		if _, err := reg.CreateDevice(ctx, user, registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key(keys[user])}); err != nil {
			t.Fatal(err)
		}
	}
	h := &recorder{peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	cfg := &Config{Site: Site{Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}}}
	s := &syncer{reg: reg, cfg: cfg, h: h, logf: t.Logf, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	rules, _ := reg.ListRules(ctx, "")
	byGroup := map[string][]registry.Rule{}
	for _, r := range rules {
		byGroup[r.Group] = append(byGroup[r.Group], r)
	}
	wantLen := map[string]int{"alice": 2, "bob": 3, "carol": 1, "dave": 2}
	for user, k := range keys {
		gs, err := reg.GroupsOf(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		want := s.access(gs, byGroup)
		got := h.peers[k].Access
		if got == nil || !slices.Equal(got.Rules, want) || len(want) != wantLen[user] {
			t.Errorf("%s (groups %v): access %v, want %v (%d rules)", user, members[user], got, want, wantLen[user])
		}
	}
}

// TestSyncSkipsOpenConnect: an openconnect device (made by a TLS login,
// its key random bytes) is never a peer, is not in the control service's
// devices by address, has no metrics name, and is not counted as a peer;
// a WireGuard device beside it is all of these.
func TestSyncSkipsOpenConnect(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	reg.AddUser(ctx, "alice")
	k, _ := noise.GeneratePrivateKey()
	wgDev, err := reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key(k.PublicKey())})
	if err != nil {
		t.Fatal(err)
	}
	ocDev, err := reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "openconnect", PublicKey: registry.Key{1, 2, 3},
		Protocol: registry.ProtocolOpenConnect})
	if err != nil {
		t.Fatal(err)
	}
	h := &recorder{peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	cfg := &Config{Site: Site{Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}}}
	s := &syncer{reg: reg, cfg: cfg, h: h, logf: t.Logf, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.peers[noise.PublicKey(ocDev.PublicKey)]; ok || len(h.peers) != 1 {
		t.Fatalf("peers %v: want only the WireGuard device", h.peers)
	}
	if _, ok := h.peers[k.PublicKey()]; !ok {
		t.Fatal("the WireGuard device is no peer")
	}
	if _, ok := s.byAddr[ocDev.Addresses[0]]; ok {
		t.Error("the control service knows the openconnect device by its address")
	}
	if _, err := s.offerByAddr(ocDev.Addresses[0]); err != errNoDevice {
		t.Errorf("an offer for the openconnect device's address: %v, want errNoDevice", err)
	}
	if _, err := s.offerByAddr(wgDev.Addresses[0]); err != nil {
		t.Errorf("an offer for the WireGuard device's address: %v", err)
	}
	if _, _, ok := s.peerName(noise.PublicKey(ocDev.PublicKey)); ok {
		t.Error("the openconnect device has a metrics name")
	}
	if u, d, ok := s.peerName(k.PublicKey()); !ok || u != "alice" || d != "laptop" {
		t.Errorf("the WireGuard device's metrics name: %q %q %v", u, d, ok)
	}
	if n := s.stats.devices.Load(); n != 1 {
		t.Errorf("devices counted as peers: %d, want 1", n)
	}
	// Revoking the openconnect device changes no peer.
	sets := h.sets
	if err := reg.RevokeDevice(ctx, ocDev.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if h.sets != sets || len(h.peers) != 1 {
		t.Errorf("revoking the openconnect device: %d sets, %d peers", h.sets-sets, len(h.peers))
	}
}
