package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// dashboardFile is the sample Grafana dashboard (docs/metrics.md).
const dashboardFile = "../../docs/grafana-dashboard.json"

// everyCounter is counting with every counter that has a metric of its
// own, as a front and its engine report them (front.supervisor.Stats).
type everyCounter struct{ *counting }

func (everyCounter) Stats() []metrics.Counter {
	var cs []metrics.Counter
	for _, n := range []string{"engine_restarts", "engine_start_failures", "engine_heartbeat_missed", "engine_last_restart_us",
		"handshakes_initiated", "handshakes_completed", "cookie_replies_sent", "drop_acl", "drop_handshake_bad_mac1", "tun_read_packets"} {
		cs = append(cs, metrics.Counter{Name: n, Value: 1})
	}
	return cs
}

// gatewayMetricNames are the metric families a gateway's metrics listener
// serves, gathered from its registered collectors (the interface's, the
// gateway's, the process's) with a synced device and one enrollment API
// request, so that every family has a series.
func gatewayMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.OpenSQLite(ctx, filepath.Join(t.TempDir(), "registry.db"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	reg.AddPool(ctx, netip.MustParsePrefix("100.80.0.0/16"))
	reg.AddUser(ctx, "alice")
	if _, err := reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key(peerKey(1))}); err != nil {
		t.Fatal(err)
	}
	s := &syncer{reg: reg, cfg: &Config{Interface: "pgw0", Site: Site{MTU: 1420}}, h: everyCounter{newCounting()}, logf: t.Logf,
		peers: map[noise.PublicKey]wgcfg.PeerConfig{}}
	tel := telemetry.New()
	api := &apiCounter{}
	if err := s.serveMetrics(tel, api); err != nil {
		t.Fatal(err)
	}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	api.wrap(http.NotFoundHandler()).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x", nil))
	names := map[string]bool{}
	for name := range scrapeHandler(t, tel.Handler()) {
		names[name] = true
	}
	for _, must := range []string{"ptun_peers", "ptun_peer_received_bytes_total", "ptun_drops_total", "ptun_engine_restarts_total",
		"ptun_gateway_devices", "ptun_gateway_api_requests_total", "process_cpu_seconds_total"} {
		if !names[must] {
			t.Fatalf("the gathered metrics lack %s: %v", must, names)
		}
	}
	return names
}

// promIdent is a PromQL identifier (a metric, function, label or keyword).
var promIdent = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)

// Parts of an expression that name no metric: strings, label matchers,
// ranges and offsets' durations, Grafana's variables, label lists of
// by/without/on/ignoring/group_*; and label_values' label argument.
var (
	promStrings    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers   = regexp.MustCompile(`\{[^{}]*\}`)
	promRanges     = regexp.MustCompile(`\[[^\[\]]*\]`)
	grafanaVars    = regexp.MustCompile(`\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*`)
	promLabelLists = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	labelValuesArg = regexp.MustCompile(`\blabel_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)`)
	promKeywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true, "Inf": true, "NaN": true}
)

// metricNames returns the metric names expr refers to: its identifiers
// that are not functions (followed by '('), keywords, label names or
// numbers.
func metricNames(expr string) []string {
	e := labelValuesArg.ReplaceAllString(expr, "label_values($1)")
	e = promStrings.ReplaceAllString(e, `""`)
	e = grafanaVars.ReplaceAllString(e, "")
	e = promMatchers.ReplaceAllString(e, "")
	e = promRanges.ReplaceAllString(e, "")
	e = promLabelLists.ReplaceAllString(e, "")
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(e, -1) {
		id := e[loc[0]:loc[1]]
		if loc[0] > 0 && (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9' || e[loc[0]-1] == '.') {
			continue // the exponent or unit of a number: 1e9, 5m
		}
		if promKeywords[id] || strings.HasPrefix(strings.TrimLeft(e[loc[1]:], " \t\n"), "(") {
			continue
		}
		out = append(out, id)
	}
	return out
}

// TestMetricNames: the extractor finds the metrics and only them.
func TestMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (user, device) (rate(ptun_peer_sent_bytes_total{interface=~"$interface", user!="by"}[$__rate_interval])) > 1e9`: "ptun_peer_sent_bytes_total",
		`count(time() - ptun_peer_last_handshake_timestamp_seconds < 180) or vector(0)`:                                         "ptun_peer_last_handshake_timestamp_seconds",
		`ptn_peers + on (instance) group_left ptun_gateway_devices offset 5m`:                                                   "ptn_peers,ptun_gateway_devices",
		`label_values(ptun_peers{instance=~"$instance"}, interface)`:                                                            "ptun_peers",
		`histogram_quantile(0.9, sum by (le) (rate(go_gc_duration_seconds_bucket[5m])))`:                                        "go_gc_duration_seconds_bucket",
	} {
		if got := strings.Join(metricNames(expr), ","); got != want {
			t.Errorf("metricNames(%s) = %s, want %s", expr, got, want)
		}
	}
}

// dashboardExprs returns every PromQL expression of the dashboard, by
// where it is: the panels' targets (also in rows) and the query
// variables.
func dashboardExprs(t *testing.T, b []byte) map[string]string {
	t.Helper()
	var d struct {
		Title  string            `json:"title"`
		Panels []json.RawMessage `json:"panels"`
		Templ  struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Query      json.RawMessage `json:"query"`
				Definition string          `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	out := map[string]string{}
	type panel struct {
		Title   string            `json:"title"`
		Panels  []json.RawMessage `json:"panels"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	}
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("a panel: %v", err)
			}
			for _, tg := range p.Targets {
				out["panel "+p.Title+" "+tg.RefID] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templ.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			json.Unmarshal(v.Query, &q.Query) // the older form: a string
		}
		out["variable "+v.Name] = q.Query
		out["variable "+v.Name+" definition"] = v.Definition
	}
	return out
}

// TestGrafanaDashboard: docs/grafana-dashboard.json is JSON with the
// panels the docs promise, and every metric name in its expressions is
// one the gateway's collectors register, so that the dashboard cannot rot
// when a metric is renamed.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	known := gatewayMetricNames(t)
	exprs := dashboardExprs(t, b)
	used := map[string]bool{}
	for where, expr := range exprs {
		names := metricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s: %q names no metric", where, expr)
		}
		for _, n := range names {
			used[n] = true
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
			if !known[n] && !known[base] {
				t.Errorf("%s: %q uses %s, which no collector registers", where, expr, n)
			}
		}
	}
	for _, title := range []string{"Throughput", "Per-device throughput (top 10)", "Per-device bytes", "Drops by reason", "Handshakes",
		"Engine restarts", "Enrollments and revocations", "Registry errors", "Enrollment API requests by code"} {
		found := false
		for where := range exprs {
			found = found || strings.HasPrefix(where, "panel "+title+" ")
		}
		if !found {
			t.Errorf("no panel %q with a query", title)
		}
	}
	for _, n := range []string{"ptun_peer_received_bytes_total", "ptun_peer_sent_bytes_total", "ptun_drops_total", "ptun_handshakes_completed_total",
		"ptun_engine_restarts_total", "ptun_gateway_enrollments_total", "ptun_gateway_revocations_total", "ptun_gateway_registry_errors_total",
		"ptun_gateway_api_requests_total"} {
		if !used[n] {
			t.Errorf("the dashboard does not use %s", n)
		}
	}
	var all []string
	for n := range used {
		all = append(all, n)
	}
	slices.Sort(all)
	t.Logf("%d expressions use %d metrics: %s", len(exprs), len(all), strings.Join(all, " "))
}
