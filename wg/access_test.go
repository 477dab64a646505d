package wg

import (
	"net/netip"
	"runtime"
	"testing"

	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// TestAccessListsShared: peers given the same rules share one compiled
// list; other rules (or the same in another order) get their own; a list
// no peer holds any more is dropped from the table in time.
func TestAccessListsShared(t *testing.T) {
	a, _ := newTestPair(t, Timers{})
	d := a.dev
	r1 := []acl.Rule{{Dst: netip.MustParsePrefix("198.18.2.0/24")}, {Dst: netip.MustParsePrefix("100.80.0.1/32"), Proto: acl.ProtoTCP, PortLo: 80, PortHi: 80}}
	r2 := []acl.Rule{r1[1], r1[0]}
	peer := func(i byte, rules []acl.Rule) wgcfg.PeerConfig {
		return wgcfg.PeerConfig{PublicKey: noise.PublicKey{i, 1}, Access: &wgcfg.AccessRules{Rules: rules}}
	}
	if err := d.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{peer(1, r1), peer(2, r1), peer(3, r2)}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{peer(4, r1)}}); err != nil {
		t.Fatal(err)
	}
	list := func(i byte) *acl.List { return d.lookupPeer(noise.PublicKey{i, 1}).access.Load() }
	if list(1) == nil || list(1) != list(2) || list(1) != list(4) {
		t.Errorf("peers with the same rules hold different lists: %p %p %p", list(1), list(2), list(4))
	}
	if list(3) == list(1) {
		t.Error("the same rules in another order share a list")
	}
	if got := list(3).Rules(); len(got) != 2 || got[0] != r2[0] {
		t.Errorf("peer 3's rules: %v", got)
	}

	// Every peer goes: the lists are collected, and a later insert
	// sweeps their entries.
	remove := &wgcfg.DeviceConfig{ReplacePeers: true}
	if err := d.Set(remove); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.GC()
	for i := range 70 {
		r := []acl.Rule{{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 3, byte(i)}), 32)}}
		if err := d.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{peer(byte(10+i), r)}}); err != nil {
			t.Fatal(err)
		}
	}
	d.configMu.Lock()
	defer d.configMu.Unlock()
	for _, r := range [][]acl.Rule{r1, r2} {
		if _, ok := d.accessLists.m[accessKey(r)]; ok {
			t.Errorf("the entry of a list no peer holds is still there")
		}
	}
}
