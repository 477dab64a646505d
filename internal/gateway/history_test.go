package gateway

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// fakeSource is a telemetry.Device whose peers and counters the test
// sets; reads, if set, gets a value at every Get.
type fakeSource struct {
	mu    sync.Mutex
	peers map[noise.PublicKey]wgcfg.PeerState
	stats map[string]uint64
	err   error
	reads chan struct{}
}

func newFakeSource() *fakeSource {
	return &fakeSource{peers: map[noise.PublicKey]wgcfg.PeerState{}, stats: map[string]uint64{}}
}

func (f *fakeSource) Get() (*wgcfg.DeviceState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reads != nil {
		select {
		case f.reads <- struct{}{}:
		default:
		}
	}
	if f.err != nil {
		return nil, f.err
	}
	st := &wgcfg.DeviceState{}
	for _, p := range f.peers {
		st.Peers = append(st.Peers, p)
	}
	return st, nil
}

func (f *fakeSource) Stats() []metrics.Counter {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []metrics.Counter
	for n, v := range f.stats {
		out = append(out, metrics.Counter{Name: n, Value: v})
	}
	return out
}

// set gives peer n (key n) its byte counters and last handshake.
func (f *fakeSource) set(n int, rx, tx uint64, handshake time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := peerKey(n)
	f.peers[k] = wgcfg.PeerState{PublicKey: k, RxBytes: rx, TxBytes: tx, LastHandshake: handshake}
}

func (f *fakeSource) remove(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.peers, peerKey(n))
}

func (f *fakeSource) counter(name string, v uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats[name] = v
}

func peerKey(n int) noise.PublicKey {
	var k noise.PublicKey
	k[0], k[1], k[31] = byte(n>>8), byte(n), 0x77
	return k
}

// historyFixture is a History over src whose clock is *now, and whose
// devices are the peers 1 to 9999 as device IDs 1 to 9999 unless known
// says otherwise.
type historyFixture struct {
	src   *fakeSource
	h     *History
	now   time.Time
	known map[int]bool // nil: every peer n < 10000 is device n
}

func newHistoryFixture() *historyFixture {
	x := &historyFixture{src: newFakeSource(), now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	x.h = NewHistory(HistoryOptions{Source: x.src, Interval: time.Second,
		Now: func() time.Time { return x.now },
		DeviceID: func(k noise.PublicKey) (int64, bool) {
			n := int(k[0])<<8 | int(k[1])
			if k[31] != 0x77 || n >= 10000 || x.known != nil && !x.known[n] {
				return 0, false
			}
			return int64(n), true
		}})
	return x
}

// step moves the clock on by d and samples.
func (x *historyFixture) step(d time.Duration) {
	x.now = x.now.Add(d)
	x.h.Sample()
}

// TestHistoryRates: the first read gives figures and no point; the next
// gives the rates over the time between them, per device and in total
// (a peer the registry does not know counted in the totals only), the
// online devices, and only the drop reasons that rose.
func TestHistoryRates(t *testing.T) {
	x := newHistoryFixture()
	x.known = map[int]bool{1: true, 2: true}
	x.src.set(1, 1000, 100, x.now.Add(-time.Minute))
	x.src.set(2, 0, 0, time.Time{})
	x.src.set(10001, 50, 50, x.now.Add(-10*time.Minute)) // added by hand with wg set: no device
	x.src.counter("drop_acl", 7)
	x.src.counter("drop_bad_mac", 3)
	x.src.counter("engine_restarts", 1)
	x.src.counter("handshakes_completed", 40) // not a drop
	x.step(0)
	f := x.h.Figures()
	if !f.Live || !f.At.Equal(x.now) || f.Devices != 2 || f.Online != 1 || f.RxBytes != 1050 || f.TxBytes != 150 || f.EngineRestarts != 1 ||
		len(f.Drops) != 2 || f.Drops["drop_acl"] != 7 || f.Drops["drop_bad_mac"] != 3 {
		t.Errorf("first figures %+v", f)
	}
	if ps := x.h.Totals(); len(ps) != 0 {
		t.Errorf("the first read made points: %+v", ps)
	}
	if ps := x.h.Device(1); len(ps) != 0 {
		t.Errorf("the first read made device points: %+v", ps)
	}

	x.src.set(1, 11000, 600, x.now)  // +10000, +500
	x.src.set(2, 2000, 4000, x.now)  // +2000, +4000
	x.src.set(10001, 550, 50, x.now) // +500
	x.src.counter("drop_acl", 7+20)  // 4 a second
	x.src.counter("handshakes_completed", 90)
	x.step(5 * time.Second)
	ps := x.h.Totals()
	if len(ps) != 1 {
		t.Fatalf("points %+v, want 1", ps)
	}
	p := ps[0]
	if !p.T.Equal(x.now) || p.RxBps != (10000+2000+500)/5.0 || p.TxBps != (500+4000)/5.0 || p.Online != 3 {
		t.Errorf("point %+v", p)
	}
	if len(p.Drops) != 1 || p.Drops["drop_acl"] != 4 {
		t.Errorf("drops %v: want drop_acl at 4 a second and no other", p.Drops)
	}
	d1 := x.h.Device(1)
	if len(d1) != 1 || !d1[0].T.Equal(x.now) || d1[0].RxBps != 2000 || d1[0].TxBps != 100 {
		t.Errorf("device 1: %+v", d1)
	}
	if d2 := x.h.Device(2); len(d2) != 1 || d2[0].RxBps != 400 || d2[0].TxBps != 800 {
		t.Errorf("device 2: %+v", d2)
	}
	if d := x.h.Device(10001); len(d) != 0 {
		t.Errorf("a peer that is no device has points: %+v", d)
	}
	if x.h.devicesKept() != 2 {
		t.Errorf("%d device rings, want 2", x.h.devicesKept())
	}
}

// TestHistoryCounterReset: counters that go down (an engine restarted:
// its peers' and drop counters start from zero) count from zero, never
// as a negative rate.
func TestHistoryCounterReset(t *testing.T) {
	x := newHistoryFixture()
	x.src.set(1, 1000, 1000, x.now)
	x.src.counter("drop_udp_aqm", 500)
	x.step(0)
	x.src.set(1, 5000, 3000, x.now)
	x.src.counter("drop_udp_aqm", 600)
	x.step(5 * time.Second)
	x.src.set(1, 300, 100, x.now) // the engine was restarted in between
	x.src.counter("drop_udp_aqm", 10)
	x.src.counter("engine_restarts", 1)
	x.step(5 * time.Second)
	ps := x.h.Totals()
	if len(ps) != 2 {
		t.Fatalf("points %+v", ps)
	}
	if ps[0].RxBps != 800 || ps[0].TxBps != 400 || ps[0].Drops["drop_udp_aqm"] != 20 {
		t.Errorf("before the reset: %+v", ps[0])
	}
	if ps[1].RxBps != 60 || ps[1].TxBps != 20 || ps[1].Drops["drop_udp_aqm"] != 2 {
		t.Errorf("across the reset: %+v, want what was counted since (300, 100, 10 over 5 s)", ps[1])
	}
	d := x.h.Device(1)
	if len(d) != 2 || d[1].RxBps != 60 || d[1].TxBps != 20 {
		t.Errorf("device across the reset: %+v", d)
	}
	for _, p := range append(ps, TotalPoint{}) {
		if p.RxBps < 0 || p.TxBps < 0 {
			t.Errorf("negative rate %+v", p)
		}
	}
	if f := x.h.Figures(); f.EngineRestarts != 1 || f.RxBytes != 300 {
		t.Errorf("figures after the restart %+v", f)
	}
}

// TestHistoryBounded: the gateway keeps its last HistoryPoints points and
// a device its last DevicePoints, at the gateway's last times.
func TestHistoryBounded(t *testing.T) {
	x := newHistoryFixture()
	start := x.now
	const samples = HistoryPoints + 100
	for i := range samples {
		x.src.set(1, uint64(i)*1000, uint64(i), x.now)
		x.src.counter("drop_acl", uint64(i))
		x.step(time.Second)
	}
	ps := x.h.Totals()
	if len(ps) != HistoryPoints {
		t.Fatalf("%d points, want %d", len(ps), HistoryPoints)
	}
	// Sample i (from 0) was at start+(i+1)s; the first had no point.
	if first := start.Add(time.Duration(samples-HistoryPoints+1) * time.Second); !ps[0].T.Equal(first) || !ps[len(ps)-1].T.Equal(x.now) {
		t.Errorf("points from %v to %v, want %v to %v", ps[0].T, ps[len(ps)-1].T, first, x.now)
	}
	for i := 1; i < len(ps); i++ {
		if !ps[i].T.After(ps[i-1].T) || ps[i].RxBps != 1000 || ps[i].Drops["drop_acl"] != 1 {
			t.Fatalf("point %d: %+v after %+v", i, ps[i], ps[i-1])
		}
	}
	d := x.h.Device(1)
	if len(d) != DevicePoints {
		t.Fatalf("%d device points, want %d", len(d), DevicePoints)
	}
	for i, p := range d {
		if want := ps[len(ps)-DevicePoints+i].T; !p.T.Equal(want) || p.RxBps != 1000 || p.TxBps != 1 {
			t.Errorf("device point %d: %+v, want at %v", i, p, want)
		}
	}
}

// TestHistoryFreesDevices: a device's ring goes when its peer leaves the
// interface or the registry stops knowing it (revoked), and one seen again
// starts afresh.
func TestHistoryFreesDevices(t *testing.T) {
	x := newHistoryFixture()
	const n = 1000
	for i := 1; i <= n; i++ {
		x.src.set(i, 0, 0, time.Time{})
	}
	x.step(0)
	for i := 1; i <= n; i++ {
		x.src.set(i, 100, 100, x.now)
	}
	x.step(time.Second)
	if got := x.h.devicesKept(); got != n {
		t.Fatalf("%d device rings, want %d", got, n)
	}
	for i := 3; i <= n; i++ {
		x.src.remove(i)
	}
	x.known = map[int]bool{1: true} // 2 is revoked: its peer goes at the next sync
	x.step(time.Second)
	if got := x.h.devicesKept(); got != 1 {
		t.Errorf("%d device rings after 999 left, want 1", got)
	}
	for _, id := range []int64{2, 3, n} {
		if d := x.h.Device(id); len(d) != 0 {
			t.Errorf("device %d gone, points %+v", id, d)
		}
	}
	if d := x.h.Device(1); len(d) != 2 {
		t.Errorf("device 1: %+v", d)
	}
	x.known[3] = true
	x.src.set(3, 5000, 5000, x.now) // back (a peer put back by hand): a new peer, no rate yet
	x.step(time.Second)
	if d := x.h.Device(3); len(d) != 0 {
		t.Errorf("device 3 seen again: %+v", d)
	}
	x.src.set(3, 6000, 5000, x.now)
	x.step(time.Second)
	if d := x.h.Device(3); len(d) != 1 || d[0].RxBps != 1000 || !d[0].T.Equal(x.now) {
		t.Errorf("device 3 afresh: %+v", d)
	}
}

// TestHistoryFailedRead: a failed Get makes the figures not live (they
// stay those of the last read, with its time) and no point; the next read
// gives the rates over the whole gap.
func TestHistoryFailedRead(t *testing.T) {
	x := newHistoryFixture()
	x.src.set(1, 0, 0, x.now)
	x.step(0)
	at := x.now
	x.src.mu.Lock()
	x.src.err = errors.New("the engine is being restarted")
	x.src.mu.Unlock()
	x.step(5 * time.Second)
	if f := x.h.Figures(); f.Live || !f.At.Equal(at) || f.Devices != 1 {
		t.Errorf("figures after a failed read %+v: want not live, of %v", f, at)
	}
	if ps := x.h.Totals(); len(ps) != 0 {
		t.Errorf("a failed read made points: %+v", ps)
	}
	x.src.mu.Lock()
	x.src.err = nil
	x.src.mu.Unlock()
	x.src.set(1, 10000, 0, x.now)
	x.step(5 * time.Second)
	if ps := x.h.Totals(); len(ps) != 1 || ps[0].RxBps != 1000 {
		t.Errorf("after the gap: %+v, want 10000 bytes over 10 s", ps)
	}
	if f := x.h.Figures(); !f.Live || !f.At.Equal(x.now) {
		t.Errorf("figures %+v", f)
	}
}

// TestHistoryRunStops: Run samples at its interval until its context
// ends, then returns (no goroutine is left).
func TestHistoryRunStops(t *testing.T) {
	src := newFakeSource()
	src.reads = make(chan struct{})
	src.set(1, 0, 0, time.Time{})
	h := NewHistory(HistoryOptions{Source: src, Interval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Run(ctx)
	}()
	deadline := time.After(10 * time.Second)
	for i := 0; i < 3; i++ {
		select {
		case <-src.reads:
		case <-deadline:
			t.Fatalf("%d reads in 10 s", i)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if !h.Figures().Live {
		t.Error("Run's reads made no figures")
	}
}
