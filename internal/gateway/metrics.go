package gateway

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ptun-vpn/ptun/internal/enroll"
)

// The gateway's control-plane metrics (docs/metrics.md), read at scrape
// time from the syncer's counters and the enrollment API's; the
// interface's own (per device, drops, handshakes) are package telemetry's.

// apiCounter counts the enrollment API's answers by path and status code.
// It is off the packet path: a mutex is cheap at the API's rates.
type apiCounter struct {
	mu sync.Mutex
	n  map[apiKey]uint64
}

type apiKey struct {
	path string
	code int
}

// apiPaths are the paths counted by name; any other is counted as "other",
// so that a scanner cannot grow the label set.
var apiPaths = []string{EnrollPath, enroll.StatusPath}

// wrap counts every answer h gives.
func (a *apiCounter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		path := "other"
		for _, p := range apiPaths {
			if r.URL.Path == p {
				path = p
			}
		}
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		a.mu.Lock()
		if a.n == nil {
			a.n = map[apiKey]uint64{}
		}
		a.n[apiKey{path, code}]++
		a.mu.Unlock()
	})
}

func (a *apiCounter) snapshot() map[apiKey]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[apiKey]uint64, len(a.n))
	for k, v := range a.n {
		out[k] = v
	}
	return out
}

// statusRecorder keeps the status code of the answer it passes on.
type statusRecorder struct {
	http.ResponseWriter
	code int // 0 until the header is written
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// gatewayCollector is a prometheus.Collector over a syncer and an
// apiCounter.
type gatewayCollector struct {
	s   *syncer
	api *apiCounter

	enrollments, revocations, registryErrors, applyFailures *prometheus.Desc
	devices, registryUp, lastSync, requests                 *prometheus.Desc
}

func newGatewayCollector(s *syncer, api *apiCounter) *gatewayCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &gatewayCollector{s: s, api: api,
		enrollments:    d("ptun_gateway_enrollments_total", "Devices enrolled through this gateway's enrollment API."),
		revocations:    d("ptun_gateway_revocations_total", "Devices revoked (or removed with their user) whose peer this gateway removed."),
		registryErrors: d("ptun_gateway_registry_errors_total", "Syncs with the registry that failed: the registry did not answer (or answered an error)."),
		applyFailures:  d("ptun_gateway_peer_update_failures_total", "Syncs whose peer changes the interface refused (retried at the next sync)."),
		devices:        d("ptun_gateway_devices", "Active WireGuard devices in the registry, each a peer of the interface, as of the last sync (OpenConnect devices are not peers)."),
		registryUp:     d("ptun_gateway_registry_up", "1 while /healthz's check registry holds (the registry answered the last sync, within 15 s), else 0."),
		lastSync:       d("ptun_gateway_registry_last_answer_timestamp_seconds", "Unix time of the last sync the registry answered; 0 if none yet."),
		requests:       d("ptun_gateway_api_requests_total", "Answers of the enrollment API, by path (other: any path it does not serve) and HTTP status code.", "path", "code"),
	}
}

// Describe implements prometheus.Collector.
func (c *gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.enrollments, c.revocations, c.registryErrors, c.applyFailures,
		c.devices, c.registryUp, c.lastSync, c.requests} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	st := &c.s.stats
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	counter(c.enrollments, st.enrollments.Load())
	counter(c.revocations, st.revocations.Load())
	counter(c.registryErrors, st.registryErrors.Load())
	counter(c.applyFailures, st.applyFailures.Load())
	ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, float64(st.devices.Load()))
	up := 0.0
	if c.s.registryHealth() == nil {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.registryUp, prometheus.GaugeValue, up)
	last := 0.0
	if ns := st.lastAnswer.Load(); ns != 0 {
		last = float64(ns) / float64(time.Second)
	}
	ch <- prometheus.MustNewConstMetric(c.lastSync, prometheus.GaugeValue, last)
	for k, v := range c.api.snapshot() {
		ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(v), k.path, strconv.Itoa(k.code))
	}
}
