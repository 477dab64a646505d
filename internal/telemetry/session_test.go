package telemetry

import (
	"errors"
	"net/http/httptest"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// TestSessionMetrics: an OpenConnect session's figures become
// ptun_session_* series and its drops ptun_drops_total{stage="openconnect"},
// on the same registry as an interface of the same name (ptun up on its
// TLS path); a failed read says the session is down and is counted, and
// sends no counter.
func TestSessionMetrics(t *testing.T) {
	var mu sync.Mutex
	info, readErr := SessionInfo{Up: true, Path: "dtls", Reconnects: 2, Counters: map[string]uint64{
		"dtls_tx_bytes": 3000, "dtls_rx_bytes": 4000, "dtls_tx_packets": 3, "dtls_rx_packets": 4,
		"cstp_tx_bytes": 10, "cstp_rx_packets": 1,
		"drop_rx_too_big": 5, "drop_dtls_replay": 6, "drop_no_session": 7,
		"dpd_sent": 8, "dtls_handshakes": 1,
	}}, error(nil)
	srv := New()
	if err := srv.AddInterface(Interface{Name: "pt-work", Device: &fakeDevice{
		state: &wgcfg.DeviceState{}, stats: []metrics.Counter{{Name: "drop_tun_write_full", Value: 9}}}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddSession(Session{Name: "pt-work", Read: func() (SessionInfo, error) {
		mu.Lock()
		defer mu.Unlock()
		return info, readErr
	}}); err != nil {
		t.Fatal(err)
	}
	hsrv := httptest.NewServer(srv.Handler())
	defer hsrv.Close()

	fams := scrape(t, hsrv.URL+MetricsPath)
	iface := map[string]string{"interface": "pt-work"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"interface": "pt-work"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		name   string
		typ    dto.MetricType
		labels map[string]string
		want   float64
	}{
		{"ptun_session_up", dto.MetricType_GAUGE, iface, 1},
		{"ptun_session_path", dto.MetricType_GAUGE, with("path", "dtls"), 1},
		{"ptun_session_path", dto.MetricType_GAUGE, with("path", "cstp"), 0},
		{"ptun_session_reconnects_total", dto.MetricType_COUNTER, iface, 2},
		{"ptun_session_sent_bytes_total", dto.MetricType_COUNTER, with("path", "dtls"), 3000},
		{"ptun_session_received_bytes_total", dto.MetricType_COUNTER, with("path", "dtls"), 4000},
		{"ptun_session_sent_packets_total", dto.MetricType_COUNTER, with("path", "dtls"), 3},
		{"ptun_session_received_packets_total", dto.MetricType_COUNTER, with("path", "dtls"), 4},
		{"ptun_session_sent_bytes_total", dto.MetricType_COUNTER, with("path", "cstp"), 10},
		{"ptun_session_received_packets_total", dto.MetricType_COUNTER, with("path", "cstp"), 1},
		{"ptun_drops_total", dto.MetricType_COUNTER, with("stage", "openconnect", "reason", "rx_too_big"), 5},
		{"ptun_drops_total", dto.MetricType_COUNTER, with("stage", "openconnect", "reason", "dtls_replay"), 6},
		{"ptun_drops_total", dto.MetricType_COUNTER, with("stage", "openconnect", "reason", "no_session"), 7},
		{"ptun_drops_total", dto.MetricType_COUNTER, with("stage", "tun", "reason", "write_full"), 9},
		{"ptun_session_counter", dto.MetricType_UNTYPED, with("name", "dpd_sent"), 8},
		{"ptun_session_counter", dto.MetricType_UNTYPED, with("name", "dtls_handshakes"), 1},
		{"ptun_session_scrape_errors_total", dto.MetricType_COUNTER, iface, 0},
	} {
		if got := one(t, fams, c.name, c.typ, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// Reconnecting: up 0, no path.
	mu.Lock()
	info = SessionInfo{Reconnects: 3, Counters: map[string]uint64{"drop_no_session": 8}}
	mu.Unlock()
	fams = scrape(t, hsrv.URL+MetricsPath)
	if one(t, fams, "ptun_session_up", dto.MetricType_GAUGE, iface) != 0 ||
		one(t, fams, "ptun_session_path", dto.MetricType_GAUGE, with("path", "dtls")) != 0 ||
		one(t, fams, "ptun_session_reconnects_total", dto.MetricType_COUNTER, iface) != 3 {
		t.Error("a session that reconnects is shown up, on a path, or with the old reconnection count")
	}

	// No engine to ask: down, counted, and no counter sent.
	mu.Lock()
	readErr = errors.New("no OpenConnect engine running")
	mu.Unlock()
	fams = scrape(t, hsrv.URL+MetricsPath)
	if one(t, fams, "ptun_session_up", dto.MetricType_GAUGE, iface) != 0 ||
		one(t, fams, "ptun_session_scrape_errors_total", dto.MetricType_COUNTER, iface) != 1 {
		t.Error("a failed read is not shown as a session down and a scrape error")
	}
	if _, ok := fams["ptun_session_reconnects_total"]; ok {
		t.Error("a failed read still sends the session's counters")
	}
	for _, m := range fams["ptun_drops_total"].GetMetric() {
		if labels(m)["stage"] == "openconnect" {
			t.Errorf("a failed read still sends the drop %v", labels(m))
		}
	}

	if err := New().AddSession(Session{Name: "pt-x"}); err == nil {
		t.Error("a session with nothing to read was added")
	}
}
