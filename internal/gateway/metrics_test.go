package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// counting is a recorder that also has counters and a state to report, and
// a Done channel (as the wg.Device has) that says whether it runs.
type counting struct {
	recorder
	done     chan struct{}
	stopOnce sync.Once
	rx       atomic.Uint64
}

func newCounting() *counting {
	return &counting{recorder: recorder{peers: map[noise.PublicKey]wgcfg.PeerConfig{}}, done: make(chan struct{})}
}

func (c *counting) Get() (*wgcfg.DeviceState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &wgcfg.DeviceState{}
	for k := range c.peers {
		st.Peers = append(st.Peers, wgcfg.PeerState{PublicKey: k, RxBytes: c.rx.Load()})
	}
	return st, nil
}

func (c *counting) Stats() []metrics.Counter {
	return []metrics.Counter{{Name: "drop_acl", Value: 4}, {Name: "handshakes_completed", Value: 1}}
}

func (c *counting) Done() <-chan struct{} { return c.done }

func (c *counting) stop() { c.stopOnce.Do(func() { close(c.done) }) }

// flaky is a registry whose change feed fails while down is set, as an
// unreachable PostgreSQL does.
type flaky struct {
	registry.Registry
	down atomic.Bool
}

func (f *flaky) Changes(ctx context.Context, since uint64) ([]registry.Change, uint64, error) {
	if f.down.Load() {
		return nil, 0, errors.New("dial tcp 198.18.0.5:5432: connect: connection refused")
	}
	return f.Registry.Changes(ctx, since)
}

// metricsFixture is a synced syncer over a SQLite registry (behind flaky)
// with one gateway and the user alice, serving its metrics on a Server.
func metricsFixture(t *testing.T) (*syncer, *flaky, *counting, *apiCounter, http.Handler) {
	t.Helper()
	ctx := context.Background()
	base, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { base.Close() })
	reg := &flaky{Registry: base}
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	reg.AddUser(ctx, "alice")
	gwKey, _ := noise.GeneratePrivateKey()
	if _, err := reg.AddGateway(ctx, registry.Gateway{Name: "gw1", PublicKey: registry.Key(gwKey.PublicKey()), Endpoint: "198.18.0.1:51820", API: "https://198.18.0.1:8443"}); err != nil {
		t.Fatal(err)
	}
	h := newCounting()
	cfg := &Config{Interface: "pgw0", Site: Site{MTU: 1420, Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}}}
	s := &syncer{reg: reg, cfg: cfg, h: h, logf: t.Logf, peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	tel := telemetry.New()
	api := &apiCounter{}
	if err := s.serveMetrics(tel, api); err != nil {
		t.Fatal(err)
	}
	return s, reg, h, api, tel.Handler()
}

func scrapeHandler(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, telemetry.MetricsPath, nil))
	if w.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", w.Code, w.Body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(w.Body)
	if err != nil {
		t.Fatalf("the text parser refuses /metrics: %v", err)
	}
	return fams
}

// series returns the value of family name's series with labels want (all
// of them), failing unless exactly one matches and it has type typ.
func series(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, want map[string]string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no %s", name)
	}
	if f.GetType() != typ {
		t.Fatalf("%s is a %v, want %v", name, f.GetType(), typ)
	}
	var vals []float64
	for _, m := range f.GetMetric() {
		ls := map[string]string{}
		for _, l := range m.GetLabel() {
			ls[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if ls[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			vals = append(vals, m.GetCounter().GetValue())
		case m.Gauge != nil:
			vals = append(vals, m.GetGauge().GetValue())
		default:
			vals = append(vals, m.GetUntyped().GetValue())
		}
	}
	if len(vals) != 1 {
		t.Fatalf("%s%v: %d series", name, want, len(vals))
	}
	return vals[0]
}

func health(t *testing.T, h http.Handler) (int, telemetry.HealthReport) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, telemetry.HealthPath, nil))
	var rep telemetry.HealthReport
	if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
		t.Fatalf("%s: %v", w.Body, err)
	}
	return w.Code, rep
}

// TestHealthzFollowsRegistryAndEngine: /healthz is 503 before the first
// sync, 200 once the registry answered and the engine runs, 503 naming the
// registry (and ptun_gateway_registry_up 0, an error counted) while the
// registry does not answer, 200 when it is back, and 503 naming the engine
// once the engine stops.
func TestHealthzFollowsRegistryAndEngine(t *testing.T) {
	ctx := context.Background()
	s, reg, h, _, handler := metricsFixture(t)
	if code, rep := health(t, handler); code != http.StatusServiceUnavailable || !strings.HasPrefix(rep.Reason, "registry: not synced") {
		t.Errorf("before the first sync: %d %+v", code, rep)
	}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if code, rep := health(t, handler); code != http.StatusOK || rep.Checks["registry"] != "ok" || rep.Checks["engine"] != "ok" {
		t.Errorf("synced: %d %+v", code, rep)
	}
	fams := scrapeHandler(t, handler)
	if v := series(t, fams, "ptun_gateway_registry_up", dto.MetricType_GAUGE, nil); v != 1 {
		t.Errorf("ptun_gateway_registry_up %v, synced", v)
	}
	if v := series(t, fams, "ptun_gateway_registry_last_answer_timestamp_seconds", dto.MetricType_GAUGE, nil); v == 0 {
		t.Error("no time of the last answer after a sync")
	}

	reg.down.Store(true)
	if err := s.sync(ctx); err == nil {
		t.Fatal("a sync without the registry succeeded")
	}
	code, rep := health(t, handler)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(rep.Reason, "registry: unreachable at the last sync") ||
		!strings.Contains(rep.Checks["registry"], "connection refused") || rep.Checks["engine"] != "ok" {
		t.Errorf("registry down: %d %+v", code, rep)
	}
	fams = scrapeHandler(t, handler)
	if v := series(t, fams, "ptun_gateway_registry_up", dto.MetricType_GAUGE, nil); v != 0 {
		t.Errorf("ptun_gateway_registry_up %v with the registry down", v)
	}
	if v := series(t, fams, "ptun_gateway_registry_errors_total", dto.MetricType_COUNTER, nil); v != 1 {
		t.Errorf("ptun_gateway_registry_errors_total %v after one failed sync", v)
	}

	reg.down.Store(false)
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if code, rep := health(t, handler); code != http.StatusOK {
		t.Errorf("registry back: %d %+v", code, rep)
	}

	h.stop()
	if code, rep := health(t, handler); code != http.StatusServiceUnavailable || !strings.HasPrefix(rep.Reason, "engine: ") || rep.Checks["registry"] != "ok" {
		t.Errorf("engine stopped: %d %+v", code, rep)
	}
	if v := series(t, scrapeHandler(t, handler), "ptun_engine_up", dto.MetricType_GAUGE, map[string]string{"interface": "pgw0"}); v != 0 {
		t.Errorf("ptun_engine_up %v with the engine stopped", v)
	}
}

// TestGatewayMetrics: through the real enrollment API, one enrollment, one
// refused invite, a GET and an unknown path are counted by path and code;
// the enrolled device is a peer labelled by its user and device with the
// bytes its handler reports; a revoke is counted and takes the device
// away.
func TestGatewayMetrics(t *testing.T) {
	ctx := context.Background()
	s, reg, h, api, handler := metricsFixture(t)
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	_, secret, err := reg.CreateInvite(ctx, "alice", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	enroller := &RegistryEnroller{Registry: reg, SiteNow: s.site, AfterEnroll: s.afterEnroll}
	mux := http.NewServeMux()
	mux.Handle(EnrollPath, EnrollHandler(enroller, nil))
	apiHandler := api.wrap(mux)
	devKey, _ := noise.GeneratePrivateKey()
	post := func(token string) int {
		body, _ := json.Marshal(EnrollRequest{Token: token, PublicKey: devKey.PublicKey(), Device: "laptop"})
		r := httptest.NewRequest(http.MethodPost, EnrollPath, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.RemoteAddr = "198.18.0.9:40000"
		w := httptest.NewRecorder()
		apiHandler.ServeHTTP(w, r)
		return w.Code
	}
	if code := post("v1." + secret); code != http.StatusOK {
		t.Fatalf("enrollment: %d", code)
	}
	if code := post("v1." + secret); code != http.StatusForbidden {
		t.Fatalf("a used invite: %d, want 403", code)
	}
	for _, r := range []*http.Request{httptest.NewRequest(http.MethodGet, EnrollPath, nil), httptest.NewRequest(http.MethodGet, "/wp-login.php", nil)} {
		apiHandler.ServeHTTP(httptest.NewRecorder(), r)
	}
	h.rx.Store(12345)

	fams := scrapeHandler(t, handler)
	if v := series(t, fams, "ptun_gateway_enrollments_total", dto.MetricType_COUNTER, nil); v != 1 {
		t.Errorf("ptun_gateway_enrollments_total %v, want 1", v)
	}
	for _, c := range []struct {
		path, code string
		want       float64
	}{{EnrollPath, "200", 1}, {EnrollPath, "403", 1}, {EnrollPath, "405", 1}, {"other", "404", 1}} {
		if v := series(t, fams, "ptun_gateway_api_requests_total", dto.MetricType_COUNTER, map[string]string{"path": c.path, "code": c.code}); v != c.want {
			t.Errorf("ptun_gateway_api_requests_total{path=%s,code=%s} %v, want %v", c.path, c.code, v, c.want)
		}
	}
	if n := len(fams["ptun_gateway_api_requests_total"].GetMetric()); n != 4 {
		t.Errorf("%d request series, want 4", n)
	}
	if v := series(t, fams, "ptun_gateway_devices", dto.MetricType_GAUGE, nil); v != 1 {
		t.Errorf("ptun_gateway_devices %v, want 1", v)
	}
	laptop := map[string]string{"interface": "pgw0", "user": "alice", "device": "laptop", "public_key": devKey.PublicKey().Base64()}
	if v := series(t, fams, "ptun_peer_received_bytes_total", dto.MetricType_COUNTER, laptop); v != 12345 {
		t.Errorf("alice/laptop received %v, want 12345", v)
	}
	if v := series(t, fams, "ptun_drops_total", dto.MetricType_COUNTER, map[string]string{"stage": "wg", "reason": "acl"}); v != 4 {
		t.Errorf("ptun_drops_total{reason=acl} %v, want 4", v)
	}
	if v := series(t, fams, "ptun_gateway_revocations_total", dto.MetricType_COUNTER, nil); v != 0 {
		t.Errorf("ptun_gateway_revocations_total %v before any revoke", v)
	}

	d, err := reg.DeviceByKey(ctx, registry.Key(devKey.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.RevokeDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	fams = scrapeHandler(t, handler)
	if v := series(t, fams, "ptun_gateway_revocations_total", dto.MetricType_COUNTER, nil); v != 1 {
		t.Errorf("ptun_gateway_revocations_total %v after a revoke", v)
	}
	if v := series(t, fams, "ptun_gateway_devices", dto.MetricType_GAUGE, nil); v != 0 {
		t.Errorf("ptun_gateway_devices %v after the revoke", v)
	}
	if _, ok := fams["ptun_peer_received_bytes_total"]; ok {
		t.Error("the revoked device is still a peer in the metrics")
	}
}
