package front

import (
	"crypto/rand"
	"net/netip"
	"runtime"
	"testing"

	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// heldPeers is the number of peers of BenchmarkHeldConfigMemory, as in the
// e2e memory tests.
const heldPeers = 1000

// gatewayPeers is a set request for n peers as a gateway's first sync
// gives them: a random key, one /32 of 100.80.0.0/16, and the access rules
// of a group without rules of its own.
func gatewayPeers(n int) *wgcfg.DeviceConfig {
	cfg := &wgcfg.DeviceConfig{Peers: make([]wgcfg.PeerConfig, n)}
	ctl := netip.MustParsePrefix("100.80.0.1/32")
	for i := range cfg.Peers {
		var k noise.PublicKey
		rand.Read(k[:])
		a := netip.AddrFrom4([4]byte{100, 80, byte((i + 2) >> 8), byte(i + 2)})
		cfg.Peers[i] = wgcfg.PeerConfig{PublicKey: k, ReplaceAllowedIPs: true,
			AddAllowedIPs: []netip.Prefix{netip.PrefixFrom(a, 32)},
			Access: &wgcfg.AccessRules{Rules: []acl.Rule{
				{Dst: netip.MustParsePrefix("198.18.2.0/24")},
				{Dst: ctl, Proto: acl.ProtoTCP, PortLo: 80, PortHi: 80},
				{Dst: ctl, Proto: acl.ProtoICMP},
			}}}
	}
	return cfg
}

func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// BenchmarkHeldConfigMemory measures what a peer costs the front: the
// configuration it holds for a restart and for get (live-B/peer, the live
// heap of 1,000 peers a gateway's sync gives, over none), and what one
// peer's change to those 1,000 allocates (change-B), as a gateway makes
// one at each enrollment or revocation.
func BenchmarkHeldConfigMemory(b *testing.B) {
	var live, change uint64
	var keep *heldConfig
	for b.Loop() {
		keep = nil
		before := liveHeap()
		h := newHeldConfig()
		h.update(gatewayPeers(heldPeers))
		live = liveHeap() - before
		one := gatewayPeers(1)
		change = allocated(func() { h.update(one) })
		if len(h.peers) != heldPeers+1 {
			b.Fatalf("%d peers", len(h.peers))
		}
		keep = h
	}
	runtime.KeepAlive(keep)
	b.ReportMetric(float64(live)/heldPeers, "live-B/peer")
	b.ReportMetric(float64(change), "change-B")
}
