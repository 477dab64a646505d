package telemetry

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport/transporttest"
	"github.com/ptun-vpn/ptun/tun/tuntest"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// scrape GETs url and parses the answer with Prometheus's own text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET %s: Content-Type %q, want the text format", url, ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("the text parser refuses /metrics: %v", err)
	}
	return fams
}

// labels returns m's labels as a map.
func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return math.NaN()
}

// family returns the family name, failing unless it has type typ.
func family(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType) *dto.MetricFamily {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no %s in /metrics", name)
	}
	if f.GetType() != typ {
		t.Fatalf("%s is a %v, want a %v", name, f.GetType(), typ)
	}
	if f.GetHelp() == "" {
		t.Errorf("%s has no HELP", name)
	}
	return f
}

// one returns the value of the only metric of family name (type typ)
// whose labels include want.
func one(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, want map[string]string) float64 {
	t.Helper()
	var found []*dto.Metric
	for _, m := range family(t, fams, name, typ).GetMetric() {
		ls := labels(m)
		match := true
		for k, v := range want {
			if ls[k] != v {
				match = false
			}
		}
		if match {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, want, len(found))
	}
	return value(found[0])
}

// node is one side of a pair of real WireGuard devices over in-memory
// TUNs and network.
type node struct {
	dev  *wg.Device
	tun  *tuntest.ChannelTUN
	priv noise.PrivateKey
	addr netip.Addr
}

// devicePair returns two devices that are each other's peer, a's packets
// to b's address arriving on b's TUN (which is drained).
func devicePair(t *testing.T) (a, b *node) {
	t.Helper()
	ta, tb := transporttest.NewPair()
	a = &node{tun: tuntest.NewChannelTUN(1420), addr: netip.MustParseAddr("100.64.0.1")}
	b = &node{tun: tuntest.NewChannelTUN(1420), addr: netip.MustParseAddr("100.64.0.2")}
	for _, n := range []*node{a, b} {
		var err error
		if n.priv, err = noise.GeneratePrivateKey(); err != nil {
			t.Fatal(err)
		}
		tr := ta
		if n == b {
			tr = tb
		}
		if n.dev, err = wg.New(n.tun, tr, wg.Options{Logf: t.Logf}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.dev.Close() })
	}
	go func() {
		for range b.tun.Outbound {
		}
	}()
	go func() {
		for range a.tun.Outbound {
		}
	}()
	for _, c := range []struct {
		n, peer *node
		ep      netip.AddrPort
	}{{a, b, tb.LocalAddr(0)}, {b, a, ta.LocalAddr(0)}} {
		priv, ep := c.n.priv, c.ep
		if err := c.n.dev.Set(&wgcfg.DeviceConfig{PrivateKey: &priv, Peers: []wgcfg.PeerConfig{{
			PublicKey: c.peer.priv.PublicKey(), Endpoint: &ep,
			AddAllowedIPs: []netip.Prefix{netip.PrefixFrom(c.peer.addr, 32)},
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// udp4 is a UDP/IPv4 packet from src to dst with n bytes of payload.
func udp4(src, dst netip.Addr, n int) []byte {
	p := make([]byte, 28+n)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, 17
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], 4000)
	binary.BigEndian.PutUint16(p[22:], 5000)
	binary.BigEndian.PutUint16(p[24:], uint16(8+n))
	return p
}

// showReads is what `ptun show IFNAME` reads: get=1 and stats=1 on the
// interface's UAPI socket.
func showReads(t *testing.T, sock string) (*wgcfg.DeviceState, []metrics.Counter) {
	t.Helper()
	st, err := uapi.Get(sock)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := uapi.Stats(sock)
	if err != nil {
		t.Fatal(err)
	}
	return st, cs
}

// TestScrapeReadsWhatShowReads: a real WireGuard device that handshook,
// carried traffic and dropped a packet without a route is served on a UAPI
// socket and as metrics. Scraped between two reads of what `ptun show`
// reads (get=1 and stats=1 on the socket) that agree, every per-peer
// metric and every counter equals what the socket reports, under the
// names, types and labels docs/metrics.md gives.
func TestScrapeReadsWhatShowReads(t *testing.T) {
	a, b := devicePair(t)
	old := uapi.SocketDir
	uapi.SocketDir = t.TempDir()
	t.Cleanup(func() { uapi.SocketDir = old })
	ln, err := net.Listen("unix", uapi.SocketPath("tm0"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- uapi.Serve(ln, a.dev, t.Logf) }()
	t.Cleanup(func() { ln.Close(); <-served })

	const packets = 20
	for range packets {
		a.tun.Inbound <- udp4(a.addr, b.addr, 100)
	}
	a.tun.Inbound <- udp4(a.addr, netip.MustParseAddr("100.64.9.9"), 100) // no peer's: drop_no_route
	sock := uapi.SocketPath("tm0")
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := showReads(t, sock)
		if len(st.Peers) == 1 && st.Peers[0].TxBytes >= packets*100 && st.Peers[0].RxBytes > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the traffic did not pass: %+v", st.Peers)
		}
		time.Sleep(5 * time.Millisecond)
	}

	srv := New()
	if err := srv.AddInterface(Interface{Name: "tm0", Device: a.dev, Engine: func() error { return nil }}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	var (
		fams  map[string]*dto.MetricFamily
		st    *wgcfg.DeviceState
		stats []metrics.Counter
	)
	for attempt := 0; ; attempt++ {
		st1, stats1 := showReads(t, sock)
		fams = scrape(t, hs.URL+MetricsPath)
		st2, stats2 := showReads(t, sock)
		if reflect.DeepEqual(st1, st2) && reflect.DeepEqual(stats1, stats2) {
			st, stats = st1, stats1
			break
		}
		if attempt == 10 {
			t.Fatal("the counters never stood still across a scrape")
		}
	}

	peer := st.Peers[0]
	key := map[string]string{"interface": "tm0", "public_key": b.priv.PublicKey().Base64()}
	if v := one(t, fams, "ptun_peer_received_bytes_total", dto.MetricType_COUNTER, key); v != float64(peer.RxBytes) || v == 0 {
		t.Errorf("ptun_peer_received_bytes_total %v, the socket says rx_bytes %d", v, peer.RxBytes)
	}
	if v := one(t, fams, "ptun_peer_sent_bytes_total", dto.MetricType_COUNTER, key); v != float64(peer.TxBytes) || v < packets*100 {
		t.Errorf("ptun_peer_sent_bytes_total %v, the socket says tx_bytes %d", v, peer.TxBytes)
	}
	hsWant := float64(peer.LastHandshake.UnixNano()) / 1e9
	if v := one(t, fams, "ptun_peer_last_handshake_timestamp_seconds", dto.MetricType_GAUGE, key); peer.LastHandshake.IsZero() || math.Abs(v-hsWant) > 1e-6 {
		t.Errorf("ptun_peer_last_handshake_timestamp_seconds %v, the socket says %v", v, peer.LastHandshake)
	}
	if m := family(t, fams, "ptun_peer_received_bytes_total", dto.MetricType_COUNTER).GetMetric()[0]; len(labels(m)) != 2 {
		t.Errorf("without PeerNames a peer is labelled by interface and public_key only: %v", labels(m))
	}
	if v := one(t, fams, "ptun_peers", dto.MetricType_GAUGE, nil); v != 1 {
		t.Errorf("ptun_peers %v, want 1", v)
	}
	if v := one(t, fams, "ptun_engine_up", dto.MetricType_GAUGE, nil); v != 1 {
		t.Errorf("ptun_engine_up %v, want 1", v)
	}

	// Every counter the socket reports, under its metric.
	dedicated := map[string]string{
		"handshakes_initiated": "ptun_handshakes_initiated_total",
		"handshakes_completed": "ptun_handshakes_completed_total",
		"cookie_replies_sent":  "ptun_cookie_replies_sent_total",
	}
	type dropKey struct{ stage, reason string }
	wantDrops := map[dropKey]float64{}
	wantOther := map[string]float64{}
	wantQueues := map[string]float64{}
	for _, c := range stats {
		if q, ok := strings.CutPrefix(c.Name, metrics.QueuePrefix); ok {
			wantQueues[q] += float64(c.Value)
		} else if name, ok := dedicated[c.Name]; ok {
			if v := one(t, fams, name, dto.MetricType_COUNTER, map[string]string{"interface": "tm0"}); v != float64(c.Value) {
				t.Errorf("%s %v, the socket says %s %d", name, v, c.Name, c.Value)
			}
		} else if stage, reason, ok := DropLabels(c.Name); ok {
			wantDrops[dropKey{stage, reason}] += float64(c.Value)
		} else {
			wantOther[c.Name] += float64(c.Value)
		}
	}
	gotDrops := map[dropKey]float64{}
	for _, m := range family(t, fams, "ptun_drops_total", dto.MetricType_COUNTER).GetMetric() {
		ls := labels(m)
		if len(ls) != 3 || ls["interface"] != "tm0" {
			t.Errorf("ptun_drops_total labels %v, want interface, stage and reason", ls)
		}
		gotDrops[dropKey{ls["stage"], ls["reason"]}] = value(m)
	}
	if !reflect.DeepEqual(gotDrops, wantDrops) {
		t.Errorf("ptun_drops_total:\n got %v\nwant %v (from the socket's stats)", gotDrops, wantDrops)
	}
	if gotDrops[dropKey{"wg", "no_route"}] != 1 {
		t.Errorf("the packet without a route: ptun_drops_total{stage=wg,reason=no_route} %v, want 1", gotDrops[dropKey{"wg", "no_route"}])
	}
	gotOther := map[string]float64{}
	for _, m := range family(t, fams, "ptun_counter", dto.MetricType_UNTYPED).GetMetric() {
		gotOther[labels(m)["name"]] = value(m)
	}
	if !reflect.DeepEqual(gotOther, wantOther) {
		t.Errorf("ptun_counter:\n got %v\nwant %v (from the socket's stats)", gotOther, wantOther)
	}
	gotQueues := map[string]float64{}
	for _, m := range family(t, fams, "ptun_queue_depth", dto.MetricType_GAUGE).GetMetric() {
		gotQueues[labels(m)["queue"]] = value(m)
	}
	if !reflect.DeepEqual(gotQueues, wantQueues) || len(gotQueues) < 3 {
		t.Errorf("ptun_queue_depth:\n got %v\nwant %v (from the socket's stats: staged_packets, handshakes, control)", gotQueues, wantQueues)
	}
	if gotOther["tun_read_packets"] < packets {
		t.Errorf("ptun_counter{name=tun_read_packets} %v, want at least %d", gotOther["tun_read_packets"], packets)
	}
	if v := one(t, fams, "ptun_handshakes_completed_total", dto.MetricType_COUNTER, nil); v < 1 {
		t.Errorf("ptun_handshakes_completed_total %v after a handshake", v)
	}

	// Every ptun_ metric names its interface; the process's are there too.
	for name, f := range fams {
		if !strings.HasPrefix(name, "ptun_") {
			continue
		}
		for _, m := range f.GetMetric() {
			if labels(m)["interface"] != "tm0" {
				t.Errorf("%s %v has no interface label", name, labels(m))
			}
		}
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s in /metrics", name)
		}
	}
}

// fakeDevice is a Device whose answers the test sets.
type fakeDevice struct {
	state  *wgcfg.DeviceState
	getErr error
	stats  []metrics.Counter
}

func (d *fakeDevice) Get() (*wgcfg.DeviceState, error) { return d.state, d.getErr }
func (d *fakeDevice) Stats() []metrics.Counter         { return d.stats }

func mustKey(t *testing.T) noise.PublicKey {
	t.Helper()
	k, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

// TestCountersAreMappedAndSummed: the front's engine counters get metrics
// of their own in base units, a name reported twice (shm mode's front and
// engine TUN write drops) is one series with the sum, PeerNames adds user
// and device labels (empty for a peer the registry does not know), a
// stopped engine reads 0 in ptun_engine_up, and a device that cannot
// answer get costs the peers' metrics only, counted in
// ptun_scrape_errors_total.
func TestCountersAreMappedAndSummed(t *testing.T) {
	known, stranger := mustKey(t), mustKey(t)
	hs := time.Unix(1_700_000_000, 500_000_000)
	dev := &fakeDevice{
		state: &wgcfg.DeviceState{Peers: []wgcfg.PeerState{
			{PublicKey: known, RxBytes: 1000, TxBytes: 2000, LastHandshake: hs},
			{PublicKey: stranger},
		}},
		stats: []metrics.Counter{
			{Name: "engine_restarts", Value: 2},
			{Name: "engine_start_failures", Value: 1},
			{Name: "engine_heartbeat_missed", Value: 1},
			{Name: "engine_last_restart_us", Value: 1500},
			{Name: "drop_tun_write_full", Value: 3},
			{Name: "drop_tun_write_full", Value: 4},
			{Name: "front_drop_tun_write_full", Value: 5},
			{Name: "drop_tun_write", Value: 6},
			{Name: "drop_udp_send_enobufs", Value: 8},
			{Name: "tun_gro_disabled", Value: 1},
		},
	}
	var engineErr error
	srv := New()
	if err := srv.AddInterface(Interface{Name: "gw0", Device: dev,
		PeerNames: func(k noise.PublicKey) (string, string, bool) {
			if k == known {
				return "alice", "laptop", true
			}
			return "", "", false
		},
		Engine: func() error { return engineErr },
	}); err != nil {
		t.Fatal(err)
	}
	hsrv := httptest.NewServer(srv.Handler())
	defer hsrv.Close()
	fams := scrape(t, hsrv.URL+MetricsPath)

	alice := map[string]string{"interface": "gw0", "public_key": known.Base64(), "user": "alice", "device": "laptop"}
	if v := one(t, fams, "ptun_peer_received_bytes_total", dto.MetricType_COUNTER, alice); v != 1000 {
		t.Errorf("alice/laptop received %v, want 1000", v)
	}
	if v := one(t, fams, "ptun_peer_sent_bytes_total", dto.MetricType_COUNTER, alice); v != 2000 {
		t.Errorf("alice/laptop sent %v, want 2000", v)
	}
	if v := one(t, fams, "ptun_peer_last_handshake_timestamp_seconds", dto.MetricType_GAUGE, alice); v != 1_700_000_000.5 {
		t.Errorf("alice/laptop's handshake at %v, want 1700000000.5", v)
	}
	nobody := map[string]string{"public_key": stranger.Base64(), "user": "", "device": ""}
	if v := one(t, fams, "ptun_peer_last_handshake_timestamp_seconds", dto.MetricType_GAUGE, nobody); v != 0 {
		t.Errorf("a peer without a handshake: %v, want 0", v)
	}
	for name, want := range map[string]float64{
		"ptun_engine_restarts_total":          2,
		"ptun_engine_start_failures_total":    1,
		"ptun_engine_heartbeats_missed_total": 1,
	} {
		if v := one(t, fams, name, dto.MetricType_COUNTER, nil); v != want {
			t.Errorf("%s %v, want %v", name, v, want)
		}
	}
	if v := one(t, fams, "ptun_engine_last_restart_duration_seconds", dto.MetricType_GAUGE, nil); math.Abs(v-0.0015) > 1e-12 {
		t.Errorf("ptun_engine_last_restart_duration_seconds %v, want 0.0015 (1500 us)", v)
	}
	for _, c := range []struct {
		stage, reason string
		want          float64
	}{{"tun", "write_full", 7}, {"front_tun", "write_full", 5}, {"wg", "tun_write", 6}, {"udp", "send_enobufs", 8}} {
		if v := one(t, fams, "ptun_drops_total", dto.MetricType_COUNTER, map[string]string{"stage": c.stage, "reason": c.reason}); v != c.want {
			t.Errorf("ptun_drops_total{stage=%s,reason=%s} %v, want %v", c.stage, c.reason, v, c.want)
		}
	}
	if n := len(fams["ptun_drops_total"].GetMetric()); n != 4 {
		t.Errorf("%d drop series, want 4", n)
	}
	if v := one(t, fams, "ptun_counter", dto.MetricType_UNTYPED, map[string]string{"name": "tun_gro_disabled"}); v != 1 {
		t.Errorf("ptun_counter{name=tun_gro_disabled} %v", v)
	}
	if _, ok := fams["ptun_counter"]; ok && len(fams["ptun_counter"].GetMetric()) != 1 {
		t.Errorf("ptun_counter has the dedicated counters too: %v", fams["ptun_counter"].GetMetric())
	}
	if v := one(t, fams, "ptun_scrape_errors_total", dto.MetricType_COUNTER, nil); v != 0 {
		t.Errorf("ptun_scrape_errors_total %v before any failure", v)
	}

	engineErr = errors.New("restarting")
	dev.state, dev.getErr = nil, errors.New("no engine is running")
	fams = scrape(t, hsrv.URL+MetricsPath)
	if v := one(t, fams, "ptun_engine_up", dto.MetricType_GAUGE, nil); v != 0 {
		t.Errorf("ptun_engine_up %v with the engine down", v)
	}
	if v := one(t, fams, "ptun_scrape_errors_total", dto.MetricType_COUNTER, nil); v != 1 {
		t.Errorf("ptun_scrape_errors_total %v after a failed get", v)
	}
	if _, ok := fams["ptun_peer_received_bytes_total"]; ok {
		t.Error("peers' metrics served from a failed get")
	}
	if v := one(t, fams, "ptun_engine_restarts_total", dto.MetricType_COUNTER, nil); v != 2 {
		t.Errorf("the counters are gone with the peers: ptun_engine_restarts_total %v", v)
	}
}

// TestDropLabels: each kind of drop counter name maps to its stage and
// reason; what is not a drop does not.
func TestDropLabels(t *testing.T) {
	for _, c := range []struct{ name, stage, reason string }{
		{"drop_bad_mac", "wg", "bad_mac"},
		{"drop_acl", "wg", "acl"},
		{"drop_tun_write", "wg", "tun_write"},
		{"drop_tun_write_full", "tun", "write_full"},
		{"drop_tun_read_short", "tun", "read_short"},
		{"drop_udp_aqm", "udp", "aqm"},
		{"drop_udp_send_enobufs", "udp", "send_enobufs"},
		{"drop_front_source", "front", "source"},
		{"front_drop_tun_write_einval", "front_tun", "write_einval"},
		{"tun_packets_in", "", ""},
		{"front_tun_writes", "", ""},
		{"engine_restarts", "", ""},
		{"drop_", "", ""},
		{"xdrop_bad_mac", "", ""},
	} {
		stage, reason, ok := DropLabels(c.name)
		if ok != (c.stage != "") || stage != c.stage || reason != c.reason {
			t.Errorf("DropLabels(%q) = %q, %q, %v; want %q, %q", c.name, stage, reason, ok, c.stage, c.reason)
		}
	}
}

// getHealth GETs /healthz from h.
func getHealth(t *testing.T, h http.Handler, method string) (int, HealthReport, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, HealthPath, nil))
	var rep HealthReport
	if method == http.MethodGet && w.Code != http.StatusMethodNotAllowed {
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
			t.Fatalf("%s: %v", w.Body, err)
		}
	}
	return w.Code, rep, w.Body.String()
}

// TestHealthz: 503 "starting" before any check, 200 with every check ok,
// 503 naming the registry when it is unreachable and the engine when it is
// down, 200 again once both are back; HEAD answers the status alone, and
// other methods are refused.
func TestHealthz(t *testing.T) {
	srv := New()
	h := srv.Handler()
	if code, rep, body := getHealth(t, h, http.MethodGet); code != http.StatusServiceUnavailable || !strings.Contains(rep.Reason, "starting") {
		t.Errorf("before any check: %d %s", code, body)
	}
	var registryErr, engineErr error
	srv.AddCheck(Check{Name: "registry", Run: func() error { return registryErr }})
	if err := srv.AddInterface(Interface{Name: "gw0", Device: &fakeDevice{state: &wgcfg.DeviceState{}},
		Engine: func() error { return engineErr }}); err != nil {
		t.Fatal(err)
	}
	code, rep, body := getHealth(t, h, http.MethodGet)
	if code != http.StatusOK || rep.Status != "ok" || rep.Checks["engine"] != "ok" || rep.Checks["registry"] != "ok" || rep.Reason != "" {
		t.Errorf("all well: %d %s", code, body)
	}

	registryErr = errors.New("unreachable at the last sync: connection refused")
	code, rep, body = getHealth(t, h, http.MethodGet)
	if code != http.StatusServiceUnavailable || rep.Status != "unavailable" || !strings.HasPrefix(rep.Reason, "registry: unreachable") ||
		rep.Checks["registry"] != registryErr.Error() || rep.Checks["engine"] != "ok" {
		t.Errorf("registry unreachable: %d %s", code, body)
	}
	if code, _, body := getHealth(t, h, http.MethodHead); code != http.StatusServiceUnavailable || body != "" {
		t.Errorf("HEAD with the registry unreachable: %d %q", code, body)
	}

	registryErr, engineErr = nil, errors.New("no engine is running: restarting one")
	code, rep, body = getHealth(t, h, http.MethodGet)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(rep.Reason, "engine: no engine is running") || rep.Checks["registry"] != "ok" {
		t.Errorf("engine down: %d %s", code, body)
	}

	engineErr = nil
	if code, _, body := getHealth(t, h, http.MethodGet); code != http.StatusOK {
		t.Errorf("both back: %d %s", code, body)
	}
	if code, _, body := getHealth(t, h, http.MethodHead); code != http.StatusOK || body != "" {
		t.Errorf("HEAD: %d %q", code, body)
	}
	if code, _, _ := getHealth(t, h, http.MethodPost); code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", code)
	}
	// The same handler serves another listener (the admin page's).
	if code, _, _ := getHealth(t, srv.Health(), http.MethodGet); code != http.StatusOK {
		t.Errorf("Health() alone: %d", code)
	}
}

// TestListen: the listener serves both paths over plain HTTP; a port that
// is taken fails with one line that names the flag; a nil Server (no
// --metrics) does nothing and opens nothing.
func TestListen(t *testing.T) {
	srv := New()
	srv.AddCheck(Check{Name: "x", Run: func() error { return nil }})
	if err := srv.Listen(netip.MustParseAddrPort("127.0.0.1:0")); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	base := "http://" + srv.Addr().String()
	resp, err := http.Get(base + HealthPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %s", resp.Status)
	}
	if fams := scrape(t, base+MetricsPath); fams["go_goroutines"] == nil {
		t.Error("no go_goroutines")
	}
	if resp, err := http.Get(base + "/other"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("/other: %v %v", resp.Status, err)
	}

	taken := netip.MustParseAddrPort(srv.Addr().String())
	err = New().Listen(taken)
	if err == nil || !strings.Contains(err.Error(), "--metrics "+taken.String()) || strings.Contains(err.Error(), "\n") {
		t.Errorf("a taken port: %v", err)
	}

	var off *Server
	if err := off.Listen(taken); err != nil || off.Addr() != nil || off.Close() != nil || off.Register(nil) != nil ||
		off.AddInterface(Interface{}) != nil || off.Health() != nil {
		t.Error("a nil Server is not a switched-off one")
	}
	off.AddCheck(Check{})
}

// TestParseAddr: --metrics takes ADDRESS:PORT; anything else is one line
// that says what to give.
func TestParseAddr(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:9587", "[::1]:9587", "198.18.0.1:1", "0.0.0.0:9587"} {
		if a, err := ParseAddr(ok); err != nil || a.String() != ok {
			t.Errorf("ParseAddr(%q) = %v, %v", ok, a, err)
		}
	}
	if a, err := ParseAddr(""); err != nil || a.IsValid() {
		t.Errorf(`ParseAddr("") = %v, %v; want off`, a, err)
	}
	for _, bad := range []string{"localhost:9587", "127.0.0.1", "127.0.0.1:0", ":9587", "127.0.0.1:65536", "http://127.0.0.1:9587"} {
		_, err := ParseAddr(bad)
		if err == nil || !strings.HasPrefix(err.Error(), "--metrics ") || !strings.Contains(err.Error(), "127.0.0.1:9587") || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseAddr(%q): %v", bad, err)
		}
	}
	if err := CheckAddr(netip.MustParseAddrPort("127.0.0.1:0")); err == nil {
		t.Error("CheckAddr takes port 0")
	}
}
