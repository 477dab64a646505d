package gateway

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// tlsCollector is the OpenConnect side's metrics: its sessions and their
// bytes, its logins, its engine's drops by reason and its restarts. The
// figures are those `ptun gateway devices` shows (the sessions as of the
// last second) and the engine's counters at the scrape.
type tlsCollector struct {
	tg *tlsGateway

	sessions, rx, tx, dropACL, logins, drops, restarts *prometheus.Desc
}

func newTLSCollector(tg *tlsGateway) *tlsCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &tlsCollector{tg: tg,
		sessions: d("ptun_tls_sessions", "OpenConnect sessions whose client is connected, by the path packets to it take (dtls or cstp).", "path"),
		rx:       d("ptun_tls_device_receive_bytes_total", "Bytes of inner packets received from an OpenConnect device's session (since the session began).", "user", "device"),
		tx:       d("ptun_tls_device_transmit_bytes_total", "Bytes of inner packets sent to an OpenConnect device's session (since the session began).", "user", "device"),
		dropACL:  d("ptun_tls_device_drop_acl_total", "Packets from an OpenConnect device's session that its access rules refused.", "user", "device"),
		logins:   d("ptun_tls_logins_total", "OpenConnect password logins, by result (ok, failed, rate_limited, error).", "result"),
		drops:    d("ptun_tls_drops_total", "Packets and connections the OpenConnect engine refused or dropped, by reason.", "reason"),
		restarts: d("ptun_tls_engine_restarts_total", "OpenConnect engines started after the first (clients resume with their cookies)."),
	}
}

// Describe implements prometheus.Collector.
func (c *tlsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessions, c.rx, c.tx, c.dropACL, c.logins, c.drops, c.restarts} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *tlsCollector) Collect(ch chan<- prometheus.Metric) {
	c.tg.mu.Lock()
	ss := c.tg.sessions
	c.tg.mu.Unlock()
	paths := map[string]int{"dtls": 0, "cstp": 0}
	for _, s := range ss {
		if s.Path != "" {
			paths[s.Path]++
		}
		user, dev, _ := strings.Cut(s.Device, "/")
		ch <- prometheus.MustNewConstMetric(c.rx, prometheus.CounterValue, float64(s.RxBytes), user, dev)
		ch <- prometheus.MustNewConstMetric(c.tx, prometheus.CounterValue, float64(s.TxBytes), user, dev)
		ch <- prometheus.MustNewConstMetric(c.dropACL, prometheus.CounterValue, float64(s.DropACL), user, dev)
	}
	for p, n := range paths {
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(n), p)
	}
	st := c.tg.auth.Stats()
	for r, v := range map[string]uint64{"ok": st.Logins, "failed": st.Failures, "rate_limited": st.RateLimited, "error": st.Errors} {
		ch <- prometheus.MustNewConstMetric(c.logins, prometheus.CounterValue, float64(v), r)
	}
	for _, ct := range c.tg.front.Stats() {
		switch {
		case ct.Name == "engine_restarts":
			ch <- prometheus.MustNewConstMetric(c.restarts, prometheus.CounterValue, float64(ct.Value))
		case strings.HasPrefix(ct.Name, "drop_"), strings.HasPrefix(ct.Name, "oc_") && ct.Name != "oc_logins" && ct.Name != "oc_logins_failed":
			ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(ct.Value), strings.TrimPrefix(ct.Name, "oc_"))
		}
	}
}
