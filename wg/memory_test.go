package wg

import (
	"crypto/rand"
	"net/netip"
	"runtime"
	"testing"

	"github.com/ptun-vpn/ptun/transport/transporttest"
	"github.com/ptun-vpn/ptun/tun/tuntest"
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// memoryPeers is how many peers BenchmarkPeerMemory configures, as the
// e2e TestMemoryPerPeer does.
const memoryPeers = 1000

// idlePeers is a set request for n peers as `wg setconf` gives them in
// TestMemoryPerPeer: a random key, one /32 of 100.80.0.0/16, no endpoint.
// With access, each peer also has the rules a gateway gives a device in a
// group without rules (its one route, and the control service's TCP port
// and ICMP), each peer its own copy, as the gateway's sync sends them.
func idlePeers(n int, access bool) *wgcfg.DeviceConfig {
	cfg := &wgcfg.DeviceConfig{Peers: make([]wgcfg.PeerConfig, n)}
	for i := range cfg.Peers {
		var k noise.PublicKey
		rand.Read(k[:])
		a := netip.AddrFrom4([4]byte{100, 80, byte((i + 1) >> 8), byte(i + 1)})
		cfg.Peers[i] = wgcfg.PeerConfig{PublicKey: k, ReplaceAllowedIPs: true,
			AddAllowedIPs: []netip.Prefix{netip.PrefixFrom(a, 32)}}
		if access {
			ctl := netip.MustParsePrefix("100.80.0.1/32")
			cfg.Peers[i].Access = &wgcfg.AccessRules{Rules: []acl.Rule{
				{Dst: netip.MustParsePrefix("198.18.2.0/24")},
				{Dst: ctl, Proto: acl.ProtoTCP, PortLo: 80, PortHi: 80},
				{Dst: ctl, Proto: acl.ProtoICMP},
			}}
		}
	}
	return cfg
}

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// keptDevice is the last device BenchmarkPeerMemory built, left open with
// its peers so that a -memprofile written after the benchmark shows them
// as in use.
var keptDevice *Device

// BenchmarkPeerMemory measures what an idle peer costs the engine's
// device: live-B/peer is the live heap (after a collection) of a device
// with 1,000 peers over the same device empty, set-B/peer what Set
// allocates per peer to add them (most of it garbage at once). The idle
// peers are those of wg setconf; the gateway's also have access rules. The data
// path's buffers are the empty device's and not counted. For the
// breakdown by allocation site:
//
//	go test -run x -bench PeerMemory -benchtime 1x -memprofile /tmp/wg.mem -memprofilerate 1 ./wg
//	go tool pprof -sample_index=inuse_space -top /tmp/wg.mem
func BenchmarkPeerMemory(b *testing.B) {
	b.Run("idle", func(b *testing.B) { benchPeerMemory(b, false) })
	b.Run("gateway", func(b *testing.B) { benchPeerMemory(b, true) })
}

func benchPeerMemory(b *testing.B, access bool) {
	var live, set uint64
	for b.Loop() {
		if keptDevice != nil {
			keptDevice.Close()
			keptDevice = nil
		}
		ta, _ := transporttest.NewPair()
		d, err := New(tuntest.NewChannelTUN(1420), ta, Options{})
		if err != nil {
			b.Fatal(err)
		}
		priv, err := noise.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Set(&wgcfg.DeviceConfig{PrivateKey: &priv}); err != nil {
			b.Fatal(err)
		}
		before := heapInUse() // the request is garbage at the second reading: not in the first either
		cfg := idlePeers(memoryPeers, access)
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		if err := d.Set(cfg); err != nil {
			b.Fatal(err)
		}
		runtime.ReadMemStats(&m1)
		cfg = nil
		live, set = heapInUse()-before, m1.TotalAlloc-m0.TotalAlloc
		if got := len(d.peerList()); got != memoryPeers {
			b.Fatalf("%d peers, want %d", got, memoryPeers)
		}
		keptDevice = d
	}
	b.ReportMetric(float64(live)/memoryPeers, "live-B/peer")
	b.ReportMetric(float64(set)/memoryPeers, "set-B/peer")
}
