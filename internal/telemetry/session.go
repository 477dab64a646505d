package telemetry

import (
	"errors"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// SessionInfo is what an OpenConnect client's session reports when its
// metrics are scraped: its engine's answer (occlient.Info), which `ptun
// status` reads too.
type SessionInfo struct {
	Up         bool   // a session is up (false: reconnecting)
	Path       string // "dtls" or "cstp" while Up
	Reconnects uint64 // sessions the engine made again after the first
	// Counters of the engine and its session, by their names: the
	// per-path packet and byte counts (cstp_tx_bytes, dtls_rx_packets,
	// …), drop_* with their reasons, and event counts (dpd_sent, …).
	Counters map[string]uint64
}

// Session describes an OpenConnect client's tunnel to a Server: ptun
// connect's, ptun up --via tls's, or the TLS path of ptun up's fallback.
type Session struct {
	Name string // the interface (the label interface)
	// Read asks the engine for its SessionInfo; it may wait for the
	// engine (a scrape does), and fails while there is none.
	Read func() (SessionInfo, error)
}

// sessionPaths are the data paths an OpenConnect session can take; each
// gets its series, so that a query need not wait for one to appear.
var sessionPaths = []string{"dtls", "cstp"}

// sessionCollector is a prometheus.Collector that asks a session's engine
// for its figures when it is scraped, and at no other time.
type sessionCollector struct {
	in Session

	up, path, reconnects, scrapeErrors *prometheus.Desc
	rxBytes, txBytes, rxPackets        *prometheus.Desc
	txPackets, drops, other            *prometheus.Desc

	scrapeFailures atomic.Uint64
}

func newSessionCollector(in Session) *sessionCollector {
	constLabels := prometheus.Labels{"interface": in.Name}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, constLabels)
	}
	return &sessionCollector{
		in:           in,
		up:           d("ptun_session_up", "1 while the OpenConnect session is up, 0 while its engine reconnects or restarts."),
		path:         d("ptun_session_path", "1 for the data path the OpenConnect session's outgoing packets take now (dtls or cstp), 0 for the other.", "path"),
		reconnects:   d("ptun_session_reconnects_total", "OpenConnect sessions made again (with the session's cookie) after the first, by the running engine."),
		scrapeErrors: d("ptun_session_scrape_errors_total", "Scrapes that could not read the OpenConnect session's figures (no engine running, or it did not answer)."),
		rxBytes:      d("ptun_session_received_bytes_total", "Bytes of packets received from the OpenConnect server, by data path, in the current session.", "path"),
		txBytes:      d("ptun_session_sent_bytes_total", "Bytes of packets sent to the OpenConnect server, by data path, in the current session.", "path"),
		rxPackets:    d("ptun_session_received_packets_total", "Packets received from the OpenConnect server, by data path, in the current session.", "path"),
		txPackets:    d("ptun_session_sent_packets_total", "Packets sent to the OpenConnect server, by data path, in the current session.", "path"),
		drops:        dropsDesc(constLabels),
		other:        d("ptun_session_counter", "Every other counter of the OpenConnect engine and session, by its name: DPD probes and keepalives sent, DTLS handshakes, TUN errors.", "name"),
	}
}

// dropsDesc is ptun_drops_total's description, the same for an
// interface's drops and a session's (one registry serves both when ptun
// up falls back to TLS).
func dropsDesc(constLabels prometheus.Labels) *prometheus.Desc {
	return prometheus.NewDesc("ptun_drops_total",
		"Packets dropped, by the stage that dropped them and why: each drop_* counter of ptun show (stage openconnect: an OpenConnect session's).",
		[]string{"stage", "reason"}, constLabels)
}

// Describe implements prometheus.Collector. It describes nothing: the
// collector is an unchecked one, because its ptun_drops_total is the
// interface collector's too (ptun up's fallback serves both for one
// interface, and a registry takes a description once). Its series differ
// from the interface's by their stage, which the registry checks when it
// gathers them.
func (c *sessionCollector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector: one Read, then every series of
// its answer. A failed Read sends ptun_session_up 0 and the error count.
func (c *sessionCollector) Collect(ch chan<- prometheus.Metric) {
	in, err := c.in.Read()
	if err != nil {
		c.scrapeFailures.Add(1)
		in = SessionInfo{}
	}
	gauge := func(d *prometheus.Desc, v bool, labels ...string) {
		f := 0.0
		if v {
			f = 1
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, f, labels...)
	}
	gauge(c.up, in.Up)
	for _, p := range sessionPaths {
		gauge(c.path, in.Up && in.Path == p, p)
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeErrors, prometheus.CounterValue, float64(c.scrapeFailures.Load()))
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(in.Reconnects))
	perPath := map[string]*prometheus.Desc{"rx_bytes": c.rxBytes, "tx_bytes": c.txBytes, "rx_packets": c.rxPackets, "tx_packets": c.txPackets}
	for name, v := range in.Counters {
		if path, what, ok := strings.Cut(name, "_"); ok && (path == "dtls" || path == "cstp") && perPath[what] != nil {
			ch <- prometheus.MustNewConstMetric(perPath[what], prometheus.CounterValue, float64(v), path)
		} else if reason, ok := strings.CutPrefix(name, "drop_"); ok && reason != "" {
			ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(v), "openconnect", reason)
		} else {
			ch <- prometheus.MustNewConstMetric(c.other, prometheus.UntypedValue, float64(v), name)
		}
	}
}

// AddSession registers the metrics of an OpenConnect client's session.
func (s *Server) AddSession(in Session) error {
	if s == nil {
		return nil
	}
	if in.Read == nil {
		return errors.New("telemetry: session " + in.Name + " has nothing to read")
	}
	return s.reg.Register(newSessionCollector(in))
}
