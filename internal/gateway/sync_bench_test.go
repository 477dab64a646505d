package gateway

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// BenchmarkSyncOneDevice measures the sync that puts one more device on a
// gateway of 1,000 (one per user, SQLite) and the one that takes it off
// after its revocation: an op is both syncs, the registry writes left out.
// sync-B is what the two allocate.
func BenchmarkSyncOneDevice(b *testing.B) {
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(b.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	key := func() registry.Key {
		var k registry.Key
		rand.Read(k[:])
		return k
	}
	for i := range 1000 {
		user := fmt.Sprintf("user%04d", i)
		if _, err := reg.AddUser(ctx, user); err != nil {
			b.Fatal(err)
		}
		if _, err := reg.CreateDevice(ctx, user, registry.DeviceSpec{Name: "laptop", PublicKey: key()}); err != nil {
			b.Fatal(err)
		}
	}
	reg.AddUser(ctx, "extra")
	h := &recorder{peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	cfg := &Config{Site: Site{Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}}}
	s := &syncer{reg: reg, cfg: cfg, h: h, logf: func(string, ...any) {}, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	if err := s.sync(ctx); err != nil {
		b.Fatal(err)
	}
	var alloc uint64
	var m0, m1 runtime.MemStats
	i := 0
	for b.Loop() {
		b.StopTimer()
		d, err := reg.CreateDevice(ctx, "extra", registry.DeviceSpec{Name: fmt.Sprintf("phone%d", i), PublicKey: key()})
		if err != nil {
			b.Fatal(err)
		}
		i++
		runtime.ReadMemStats(&m0)
		b.StartTimer()
		if err := s.sync(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		runtime.ReadMemStats(&m1)
		alloc += m1.TotalAlloc - m0.TotalAlloc
		if err := reg.RevokeDevice(ctx, d.ID); err != nil {
			b.Fatal(err)
		}
		runtime.ReadMemStats(&m0)
		b.StartTimer()
		if err := s.sync(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		runtime.ReadMemStats(&m1)
		alloc += m1.TotalAlloc - m0.TotalAlloc
		b.StartTimer()
	}
	if len(h.peers) != 1000 {
		b.Fatalf("%d peers", len(h.peers))
	}
	b.ReportMetric(float64(alloc)/float64(b.N), "sync-B/op")
}
