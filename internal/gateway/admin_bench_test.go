package gateway

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// refreshFixture is the admin API of a gateway of 1,000 devices (one per
// user, SQLite) whose History is full (an hour of samples, each device's
// five minutes), with a bearer token, as the page finds it.
type refreshFixture struct {
	h     http.Handler
	token string
	hist  *History
	src   *fakeSource
	now   *time.Time
}

func newRefreshFixture(b *testing.B, devices int) *refreshFixture {
	b.Helper()
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(b.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { reg.Close() })
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	if _, err := reg.AddAdmin(ctx, "root", testPassword); err != nil {
		b.Fatal(err)
	}
	_, token, err := reg.CreateAdminToken(ctx, "root")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := reg.AddGateway(ctx, registry.Gateway{Name: "gw1", PublicKey: registry.Key{1}, Endpoint: "198.18.0.1:51820", API: "https://198.18.0.1:8443"}); err != nil {
		b.Fatal(err)
	}
	src := newFakeSource()
	ids := map[noise.PublicKey]int64{}
	for i := range devices {
		user := fmt.Sprintf("user%04d", i)
		if _, err := reg.AddUser(ctx, user); err != nil {
			b.Fatal(err)
		}
		var k registry.Key
		rand.Read(k[:])
		d, err := reg.CreateDevice(ctx, user, registry.DeviceSpec{Name: "laptop", PublicKey: k})
		if err != nil {
			b.Fatal(err)
		}
		ids[noise.PublicKey(k)] = d.ID
		src.peers[noise.PublicKey(k)] = wgcfg.PeerState{PublicKey: noise.PublicKey(k), Endpoint: netip.MustParseAddrPort("198.18.1.1:40000")}
	}
	for _, name := range []string{"drop_acl", "drop_bad_mac", "drop_replay", "drop_no_route", "drop_tun_write_full", "drop_udp_aqm", "drop_udp_send_enobufs"} {
		src.stats[name] = 0
	}
	src.stats["engine_restarts"] = 0
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	hist := NewHistory(HistoryOptions{Source: src, Now: func() time.Time { return now },
		DeviceID: func(k noise.PublicKey) (int64, bool) { id, ok := ids[k]; return id, ok }})
	x := &refreshFixture{hist: hist, src: src, now: &now, token: token}
	for range HistoryPoints + 1 {
		x.advance()
		hist.Sample()
	}
	x.h = AdminHandler(AdminOptions{Registry: reg, Gateway: "gw1", History: hist, Now: func() time.Time { return now },
		Peers: func() ([]wgcfg.PeerState, error) {
			st, err := src.Get()
			if err != nil {
				return nil, err
			}
			return st.Peers, nil
		}})
	return x
}

// advance moves the clock on by an interval, and every peer's counters
// and handshake with it.
func (x *refreshFixture) advance() {
	*x.now = x.now.Add(DefaultHistoryInterval)
	for k, p := range x.src.peers {
		p.RxBytes += 1 << 20
		p.TxBytes += 64 << 10
		p.LastHandshake = x.now.Add(-time.Minute)
		x.src.peers[k] = p
	}
	x.src.stats["drop_acl"]++
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAdminRefresh measures one refresh of the admin page at a
// gateway of 1,000 devices, as the page makes it every 5 s: GET /devices
// (every device with its live figures), /overview and /history, through
// the real handler with a bearer token (each request checks it in the
// registry). cpu-ns/op is the process's CPU time (the collector's work on
// other cores included); page-cpu-s/min is what one open page costs the
// gateway a minute (12 refreshes); resp-B/op is what the three answers
// weigh. The figures come from a fake interface (its Get, which the real
// gateway asks of its engine, is not in it beyond building 1,000 peers).
func BenchmarkAdminRefresh(b *testing.B) {
	x := newRefreshFixture(b, 1000)
	paths := []string{AdminPrefix + "/devices", AdminPrefix + "/overview", AdminPrefix + "/history"}
	var resp int
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		for _, p := range paths {
			r := httptest.NewRequest("GET", p, nil)
			r.Header.Set("Authorization", "Bearer "+x.token)
			w := httptest.NewRecorder()
			x.h.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				b.Fatalf("GET %s: %d %s", p, w.Code, w.Body)
			}
			resp += w.Body.Len()
		}
	}
	cpu := float64(cpuTime()-cpu0) / float64(b.N)
	b.ReportMetric(cpu, "cpu-ns/op")
	b.ReportMetric(cpu*12/1e9, "page-cpu-s/min")
	b.ReportMetric(float64(resp)/float64(b.N), "resp-B/op")
}

// BenchmarkHistorySample measures the sampler's own read of a gateway of
// 1,000 devices (every 5 s, whether a page is open or not), from the fake
// interface: its rates, the rings, the figures.
func BenchmarkHistorySample(b *testing.B) {
	x := newRefreshFixture(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		x.advance()
		b.StartTimer()
		x.hist.Sample()
	}
}
