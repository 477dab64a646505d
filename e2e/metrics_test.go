package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	vnetns "github.com/vishvananda/netns"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/telemetry"
)

// TestGatewayMetrics runs `ptun gateway run` with --metrics on loopback in
// the gateway's namespace, enrolls a client (itself up with --metrics),
// pings through, and scrapes both from within their namespaces: the
// device's bytes rose by the pings and equal what the interface's UAPI
// socket reports (wg show's dump, ptun show's source), the drop and
// handshake counters equal ptun show's, the gateway's own counters saw the
// enrollment, /healthz is 200; a killed engine is counted as a restart,
// by the metrics as by ptun show.
func TestGatewayMetrics(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "gw")
	iface := "pmt" + l.id // interfaces and UAPI sockets are the host's: unique
	const gwMetrics, clientMetrics = "127.0.0.1:9587", "127.0.0.1:9588"
	mustRun(t, l.server.ns, ptun.bin, "gateway", "init", "--state", state, "--interface", iface,
		"--endpoint", l.server.link4.String()+":51820", "--api", l.server.link4.String()+":8443",
		"--pool", "100.80.0.0/16", "--route", "198.18.2.0/24", "--metrics", gwMetrics)
	mustRun(t, l.server.ns, ptun.bin, "gateway", "user", "add", "alice", "--state", state)

	ctx, cancel := context.WithCancel(context.Background())
	gw := nsCommand(ctx, l.server.ns, ptun.bin, "gateway", "run", "--state", state, "--foreground")
	logPath := filepath.Join(dir, "gateway.log")
	logFile, _ := os.Create(logPath)
	gw.Stdout, gw.Stderr = logFile, logFile
	gw.Cancel = func() error { return gw.Process.Signal(syscall.SIGTERM) }
	gw.WaitDelay = 10 * time.Second
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		gw.Wait()
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("gateway log:\n%s", b)
		}
	})
	waitFor(t, 20*time.Second, "the gateway's API", func() (bool, string) {
		out, err := run(l.server.ns, "ss", "-Hltn", "sport = :8443")
		return err == nil && strings.Contains(out, "8443"), out
	})
	// The metrics listener is loopback's only.
	if out, _ := run(l.server.ns, "ss", "-Hltn", "sport = :9587"); !strings.Contains(out, gwMetrics) {
		t.Fatalf("the metrics listener is not on %s:\n%s", gwMetrics, out)
	}
	if code, rep := healthIn(t, l.server.ns, gwMetrics); code != http.StatusOK || rep.Checks["engine"] != "ok" || rep.Checks["registry"] != "ok" {
		t.Errorf("the gateway's /healthz: %d %+v", code, rep)
	}

	out := mustRun(t, l.server.ns, ptun.bin, "gateway", "invite", "alice", "--state", state)
	invite := lastLine(out)
	nsEtc := filepath.Join("/etc/netns", l.client.ns)
	os.MkdirAll(nsEtc, 0o755)
	t.Cleanup(func() { os.RemoveAll(nsEtc) })
	os.WriteFile(filepath.Join(nsEtc, "resolv.conf"), []byte("nameserver 198.18.0.53\n"), 0o644)
	profiles, cstate := filepath.Join(dir, "profiles"), filepath.Join(dir, "client")
	name := "m" + l.id
	mustRun(t, l.client.ns, ptun.bin, "join", invite, "--name", name, "--device", "laptop", "--profiles", profiles)
	t.Cleanup(func() { run(l.client.ns, ptun.bin, "down", name, "--profiles", profiles, "--state", cstate) })
	mustRun(t, l.client.ns, ptun.bin, "up", name, "--profiles", profiles, "--state", cstate, "--metrics", clientMetrics)
	const gwTunnel = "100.80.0.1" // the gateway's address: every device may ping it
	mustRun(t, l.client.ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", gwTunnel)

	laptop := map[string]string{"interface": iface, "user": "alice", "device": "laptop"}
	before := scrapeIn(t, l.server.ns, gwMetrics)
	rx0 := seriesValue(t, before, "ptun_peer_received_bytes_total", laptop)
	tx0 := seriesValue(t, before, "ptun_peer_sent_bytes_total", laptop)
	const pings = 20
	mustRun(t, l.client.ns, "ping", "-c", strconv.Itoa(pings), "-i", "0.05", "-W", "2", "-q", gwTunnel)

	// What the metrics say, between two reads of the interface's socket
	// that agree (the client's profile refresh moves bytes every 2 s).
	var (
		fams         map[string]*dto.MetricFamily
		dump, show   string
		stillAttempt int
	)
	for stillAttempt = 0; ; stillAttempt++ {
		dump1, show1 := mustRun(t, l.server.ns, "wg", "show", iface, "dump"), mustRun(t, l.server.ns, ptun.bin, "show", iface)
		fams = scrapeIn(t, l.server.ns, gwMetrics)
		dump2, show2 := mustRun(t, l.server.ns, "wg", "show", iface, "dump"), mustRun(t, l.server.ns, ptun.bin, "show", iface)
		if dump1 == dump2 && eventCounters(show1) == eventCounters(show2) {
			dump, show = dump1, show1
			break
		}
		if stillAttempt == 20 {
			t.Fatal("the interface's counters never stood still across a scrape")
		}
		time.Sleep(50 * time.Millisecond)
	}
	key := seriesLabels(t, fams, "ptun_peer_received_bytes_total", laptop)["public_key"]
	rx, tx, handshake := peerDump(t, dump, key)
	gotRx := seriesValue(t, fams, "ptun_peer_received_bytes_total", laptop)
	gotTx := seriesValue(t, fams, "ptun_peer_sent_bytes_total", laptop)
	if gotRx != float64(rx) || gotTx != float64(tx) {
		t.Errorf("alice/laptop: the metrics say %v received, %v sent; the UAPI socket (wg show dump) %d, %d", gotRx, gotTx, rx, tx)
	}
	// Each echo request is at least 84 bytes inside the tunnel.
	if gotRx-rx0 < pings*84 || gotTx-tx0 < pings*84 {
		t.Errorf("%d pings moved the device's bytes by %v received, %v sent; want at least %d each", pings, gotRx-rx0, gotTx-tx0, pings*84)
	}
	if hs := seriesValue(t, fams, "ptun_peer_last_handshake_timestamp_seconds", laptop); handshake == 0 || math.Floor(hs) != float64(handshake) {
		t.Errorf("ptun_peer_last_handshake_timestamp_seconds %v, the socket says %d", hs, handshake)
	}
	t.Logf("alice/laptop: %v B received, %v B sent (+%v, +%v for %d pings); counters still after %d tries", gotRx, gotTx, gotRx-rx0, gotTx-tx0, pings, stillAttempt+1)

	// Every drop counter of ptun show, and the handshakes.
	drops, others := showCounters(t, show)
	if len(drops) == 0 {
		t.Fatalf("ptun show lists no drop counter:\n%s", show)
	}
	want := map[[2]string]uint64{}
	for name, v := range drops {
		stage, reason, ok := telemetry.DropLabels(name)
		if !ok {
			t.Fatalf("ptun show's drop %s has no stage", name)
		}
		want[[2]string{stage, reason}] += v
	}
	got := map[[2]string]uint64{}
	for _, m := range fams["ptun_drops_total"].GetMetric() {
		ls := metricLabels(m)
		got[[2]string{ls["stage"], ls["reason"]}] = uint64(m.GetCounter().GetValue())
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ptun_drops_total:\n got %v\nwant %v (ptun show)", got, want)
	}
	if hs := seriesValue(t, fams, "ptun_handshakes_completed_total", map[string]string{"interface": iface}); hs == 0 || hs != float64(others["handshakes_completed"]) {
		t.Errorf("ptun_handshakes_completed_total %v, ptun show handshakes_completed %d", hs, others["handshakes_completed"])
	}
	for name, want := range map[string]float64{"ptun_gateway_enrollments_total": 1, "ptun_gateway_devices": 1, "ptun_gateway_registry_up": 1} {
		if v := seriesValue(t, fams, name, nil); v != want {
			t.Errorf("%s %v, want %v", name, v, want)
		}
	}
	if v := seriesValue(t, fams, "ptun_gateway_api_requests_total", map[string]string{"path": "/api/v1/enroll", "code": "200"}); v != 1 {
		t.Errorf("ptun_gateway_api_requests_total{path=/api/v1/enroll,code=200} %v, want 1", v)
	}

	// The client's own metrics: its one peer, the gateway, by key.
	cf := scrapeIn(t, l.client.ns, clientMetrics)
	cif := map[string]string{"interface": client.Interface(name)}
	if v := seriesValue(t, cf, "ptun_peer_sent_bytes_total", cif); v < pings*84 {
		t.Errorf("the client's ptun_peer_sent_bytes_total %v after %d pings", v, pings)
	}
	if code, rep := healthIn(t, l.client.ns, clientMetrics); code != http.StatusOK || rep.Checks["engine"] != "ok" {
		t.Errorf("the client's /healthz: %d %+v", code, rep)
	}

	// A killed engine is a restart, for the metrics as for ptun show.
	engines := strings.Fields(mustRun(t, "", "pgrep", "-f", "--", "--engine-of "+iface))
	for _, pid := range engines {
		mustRun(t, "", "kill", "-9", pid)
	}
	waitFor(t, 15*time.Second, "the restart in the metrics", func() (bool, string) {
		f := scrapeIn(t, l.server.ns, gwMetrics)
		v := seriesValue(t, f, "ptun_engine_restarts_total", nil)
		return v >= 1, fmt.Sprint(v)
	})
	_, others = showCounters(t, mustRun(t, l.server.ns, ptun.bin, "show", iface))
	if r := seriesValue(t, scrapeIn(t, l.server.ns, gwMetrics), "ptun_engine_restarts_total", nil); r != float64(others["engine_restarts"]) {
		t.Errorf("ptun_engine_restarts_total %v, ptun show engine_restarts %d", r, others["engine_restarts"])
	}
	waitFor(t, 15*time.Second, "/healthz 200 after the restart", func() (bool, string) {
		code, rep := healthIn(t, l.server.ns, gwMetrics)
		return code == http.StatusOK, fmt.Sprintf("%d %+v", code, rep)
	})
}

// httpIn is an HTTP client whose connections are made in network
// namespace ns: each is dialled on a thread locked and switched into ns,
// and switched back after. The thread must come back: one left in ns (it
// may be the main thread, which the runtime never ends) would make the
// test process one of ns's, and a lab's teardown kills those.
func httpIn(ns string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		defer orig.Close()
		target, err := vnetns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		defer target.Close()
		if err := vnetns.Set(target); err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr) // one address: no racing goroutines
		if rerr := vnetns.Set(orig); rerr != nil {
			panic(fmt.Sprintf("cannot switch the thread back from netns %s: %v", ns, rerr))
		}
		runtime.UnlockOSThread()
		return c, err
	}
	return &http.Client{Timeout: cmdTimeout, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// getIn GETs http://addr+path from namespace ns.
func getIn(t *testing.T, ns, addr, path string) (int, []byte) {
	t.Helper()
	resp, err := httpIn(ns).Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s in %s: %v", addr, path, ns, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// scrapeIn scrapes addr's /metrics from namespace ns and parses it with
// Prometheus's text parser.
func scrapeIn(t *testing.T, ns, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	code, b := getIn(t, ns, addr, telemetry.MetricsPath)
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d\n%s", code, b)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the text parser refuses /metrics: %v", err)
	}
	return fams
}

func healthIn(t *testing.T, ns, addr string) (int, telemetry.HealthReport) {
	t.Helper()
	code, b := getIn(t, ns, addr, telemetry.HealthPath)
	var rep telemetry.HealthReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("/healthz: %v\n%s", err, b)
	}
	return code, rep
}

func metricLabels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// seriesOf returns family name's only series whose labels include want.
func seriesOf(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no %s in /metrics", name)
	}
	var found []*dto.Metric
	for _, m := range f.GetMetric() {
		ls := metricLabels(m)
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
	return found[0]
}

func seriesValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	m := seriesOf(t, fams, name, want)
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	}
	return m.GetUntyped().GetValue()
}

func seriesLabels(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) map[string]string {
	t.Helper()
	return metricLabels(seriesOf(t, fams, name, want))
}

// peerDump finds peer key's line in `wg show IFACE dump` and returns its
// transfer and latest handshake (Unix seconds).
func peerDump(t *testing.T, dump, key string) (rx, tx, handshake uint64) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(dump), "\n")[1:] {
		f := strings.Split(line, "\t")
		if len(f) == 8 && f[0] == key {
			handshake, _ = strconv.ParseUint(f[4], 10, 64)
			rx, _ = strconv.ParseUint(f[5], 10, 64)
			tx, _ = strconv.ParseUint(f[6], 10, 64)
			return rx, tx, handshake
		}
	}
	t.Fatalf("no peer %s in wg show dump:\n%s", key, dump)
	return
}

var showCounterLine = regexp.MustCompile(`^  ([a-z0-9_]+): (\d+)$`)

// showCounters reads ptun show's counters: the drops by reason (all of
// them, zero or not) and the other non-zero counters.
func showCounters(t *testing.T, show string) (drops, others map[string]uint64) {
	t.Helper()
	drops, others = map[string]uint64{}, map[string]uint64{}
	var into map[string]uint64
	for _, line := range strings.Split(show, "\n") {
		switch {
		case line == "drops by reason:":
			into = drops
		case line == "counters:":
			into = others
		case into != nil:
			if m := showCounterLine.FindStringSubmatch(line); m != nil {
				v, _ := strconv.ParseUint(m[2], 10, 64)
				into[m[1]] += v
			}
		}
	}
	return drops, others
}

// eventCounters is the part of ptun show's output that moves only with
// events, not with every packet: the drops and the handshakes.
func eventCounters(show string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(show, "\n") {
		if line == "drops by reason:" {
			in = true
		}
		if in && (strings.Contains(line, "drop_") || strings.Contains(line, "handshakes_")) {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}
