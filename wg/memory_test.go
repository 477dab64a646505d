package wg

import (
	"crypto/rand"
	"net/netip"
	"runtime"
	"testing"

	"github.com/ptun-vpn/ptun/transport/transporttest"
	"github.com/ptun-vpn/ptun/tun/tuntest"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// memoryPeers is how many peers BenchmarkPeerMemory configures, as the
// e2e TestMemoryPerPeer does.
const memoryPeers = 1000

// idlePeers is a set request for n peers as `wg setconf` gives them in
// TestMemoryPerPeer: a random key, one /32 of 100.80.0.0/16, no endpoint.
func idlePeers(n int) *wgcfg.DeviceConfig {
	cfg := &wgcfg.DeviceConfig{Peers: make([]wgcfg.PeerConfig, n)}
	for i := range cfg.Peers {
		var k noise.PublicKey
		rand.Read(k[:])
		a := netip.AddrFrom4([4]byte{100, 80, byte((i + 1) >> 8), byte(i + 1)})
		cfg.Peers[i] = wgcfg.PeerConfig{PublicKey: k, ReplaceAllowedIPs: true,
			AddAllowedIPs: []netip.Prefix{netip.PrefixFrom(a, 32)}}
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
// allocates per peer to add them (most of it garbage at once). The data
// path's buffers are the empty device's and not counted. For the
// breakdown by allocation site:
//
//	go test -run x -bench PeerMemory -benchtime 1x -memprofile /tmp/wg.mem -memprofilerate 1 ./wg
//	go tool pprof -sample_index=inuse_space -top /tmp/wg.mem
func BenchmarkPeerMemory(b *testing.B) {
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
		cfg := idlePeers(memoryPeers)
		before := heapInUse()
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
