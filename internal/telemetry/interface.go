package telemetry

import (
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// Device is what an interface's metrics are read from: the handler its
// UAPI socket serves (the front's supervisor, or the wg.Device itself with
// --ipc inproc). `ptun show` asks that socket for Get and Stats; the
// collector calls the same two methods, so both report the same counters.
// Both must be safe to call concurrently with the UAPI server.
type Device interface {
	Get() (*wgcfg.DeviceState, error)
	Stats() []metrics.Counter
}

// Interface describes one interface to a Server.
type Interface struct {
	Name   string
	Device Device
	// PeerNames, if set, names each peer for its labels: on a gateway the
	// registry's user and device (ok false for a peer the registry does
	// not know: its labels are then empty). With it the per-peer metrics
	// have the labels user and device besides public_key.
	PeerNames func(k noise.PublicKey) (user, device string, ok bool)
	// Engine reports whether the interface's engine runs (nil, or why
	// not): front.EngineRunning. It is /healthz's check "engine" and the
	// gauge ptun_engine_up. nil: the engine is taken to run.
	Engine func() error
}

// A counter of the device that has a metric of its own, with the factor
// that converts its value to the metric's base unit.
type mapped struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	scale float64
}

// interfaceCollector is a prometheus.Collector that reads an interface's
// counters when it is scraped, and at no other time.
type interfaceCollector struct {
	in Interface

	peerRx, peerTx, peerHandshake      *prometheus.Desc
	peers, engineUp                    *prometheus.Desc
	drops, other, queues, scrapeErrors *prometheus.Desc
	byName                             map[string]mapped

	scrapeFailures atomic.Uint64 // Get failed (engine restarting, not answering)
}

func newInterfaceCollector(in Interface) *interfaceCollector {
	constLabels := prometheus.Labels{"interface": in.Name}
	peerLabels := []string{"public_key"}
	if in.PeerNames != nil {
		peerLabels = append(peerLabels, "user", "device")
	}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, constLabels)
	}
	c := &interfaceCollector{
		in:            in,
		peerRx:        d("ptun_peer_received_bytes_total", "Bytes received from the peer (rx_bytes of ptun show and wg show).", peerLabels...),
		peerTx:        d("ptun_peer_sent_bytes_total", "Bytes sent to the peer (tx_bytes of ptun show and wg show).", peerLabels...),
		peerHandshake: d("ptun_peer_last_handshake_timestamp_seconds", "Unix time of the peer's latest completed handshake; 0 if none yet.", peerLabels...),
		peers:         d("ptun_peers", "Peers configured on the interface."),
		engineUp:      d("ptun_engine_up", "1 while the interface's engine runs, 0 while it is being restarted (the check engine of /healthz)."),
		drops:         dropsDesc(constLabels),
		other:         d("ptun_counter", "Every other counter of ptun show, by its name there: event counts, and 0/1 flags such as tun_gro_disabled.", "name"),
		queues:        d("ptun_queue_depth", "Items waiting in one of the engine's queues at the scrape: staged_packets (packets waiting for a handshake, all peers), handshakes (handshake messages waiting for the handshake worker), control (timer and control work).", "queue"),
		scrapeErrors:  d("ptun_scrape_errors_total", "Scrapes that could not read the interface's peers (its engine restarting or not answering)."),
	}
	c.byName = map[string]mapped{
		"handshakes_initiated":    {d("ptun_handshakes_initiated_total", "Handshake initiations sent (first attempts and retries)."), prometheus.CounterValue, 1},
		"handshakes_completed":    {d("ptun_handshakes_completed_total", "Handshakes completed, as initiator or responder."), prometheus.CounterValue, 1},
		"cookie_replies_sent":     {d("ptun_cookie_replies_sent_total", "Cookie replies sent to handshake initiators while under load."), prometheus.CounterValue, 1},
		"engine_restarts":         {d("ptun_engine_restarts_total", "Engine processes that died (or hung) and were replaced."), prometheus.CounterValue, 1},
		"engine_start_failures":   {d("ptun_engine_start_failures_total", "Attempts to start an engine process that failed."), prometheus.CounterValue, 1},
		"engine_heartbeat_missed": {d("ptun_engine_heartbeats_missed_total", "Engines killed for not answering their heartbeat."), prometheus.CounterValue, 1},
		"engine_last_restart_us":  {d("ptun_engine_last_restart_duration_seconds", "How long the latest engine restart took, from the old engine's end to the new one's taking over."), prometheus.GaugeValue, 1e-6},
	}
	return c
}

// Describe implements prometheus.Collector: every metric the collector can
// send (ptun_drops_total and ptun_counter vary only in their labels).
func (c *interfaceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.peerRx, c.peerTx, c.peerHandshake, c.peers, c.engineUp, c.drops, c.other, c.queues, c.scrapeErrors} {
		ch <- d
	}
	for _, m := range c.byName {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector. It reads the device's state and
// counters once each, as `ptun show` does.
func (c *interfaceCollector) Collect(ch chan<- prometheus.Metric) {
	up := 1.0
	if c.in.Engine != nil && c.in.Engine() != nil {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(c.engineUp, prometheus.GaugeValue, up)
	if st, err := c.in.Device.Get(); err != nil {
		c.scrapeFailures.Add(1)
	} else {
		c.collectPeers(ch, st)
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeErrors, prometheus.CounterValue, float64(c.scrapeFailures.Load()))
	c.collectCounters(ch, c.in.Device.Stats())
}

func (c *interfaceCollector) collectPeers(ch chan<- prometheus.Metric, st *wgcfg.DeviceState) {
	ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(len(st.Peers)))
	for _, p := range st.Peers {
		labels := []string{p.PublicKey.Base64()}
		if c.in.PeerNames != nil {
			user, device, _ := c.in.PeerNames(p.PublicKey)
			labels = append(labels, user, device)
		}
		ch <- prometheus.MustNewConstMetric(c.peerRx, prometheus.CounterValue, float64(p.RxBytes), labels...)
		ch <- prometheus.MustNewConstMetric(c.peerTx, prometheus.CounterValue, float64(p.TxBytes), labels...)
		hs := 0.0
		if !p.LastHandshake.IsZero() {
			hs = float64(p.LastHandshake.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(c.peerHandshake, prometheus.GaugeValue, hs, labels...)
	}
}

// collectCounters sends each counter once. A name reported twice (the
// front's and the engine's TUN write drops in shm mode share their names)
// is sent as the sum of its values, as one series must be.
func (c *interfaceCollector) collectCounters(ch chan<- prometheus.Metric, cs []metrics.Counter) {
	type dropKey struct{ stage, reason string }
	mappedSum := map[string]uint64{}
	drops := map[dropKey]uint64{}
	others := map[string]uint64{}
	queues := map[string]uint64{}
	for _, ct := range cs {
		if _, ok := c.byName[ct.Name]; ok {
			mappedSum[ct.Name] += ct.Value
		} else if q, ok := strings.CutPrefix(ct.Name, metrics.QueuePrefix); ok {
			queues[q] += ct.Value
		} else if stage, reason, ok := DropLabels(ct.Name); ok {
			drops[dropKey{stage, reason}] += ct.Value
		} else {
			others[ct.Name] += ct.Value
		}
	}
	// The order does not matter: the registry sorts what it serves.
	for name, v := range mappedSum {
		m := c.byName[name]
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, float64(v)*m.scale)
	}
	for k, v := range drops {
		ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(v), k.stage, k.reason)
	}
	for name, v := range others {
		ch <- prometheus.MustNewConstMetric(c.other, prometheus.UntypedValue, float64(v), name)
	}
	for name, v := range queues {
		ch <- prometheus.MustNewConstMetric(c.queues, prometheus.GaugeValue, float64(v), name)
	}
}

// DropLabels maps a drop counter's name, as `ptun show` prints it, to the
// labels of ptun_drops_total: the stage that dropped the packet and the
// reason within it. ok is false for a counter that is not a drop.
//
//	drop_tun_write_full        stage tun,       reason write_full
//	drop_udp_send_enobufs      stage udp,       reason send_enobufs
//	drop_front_source          stage front,     reason source
//	front_drop_tun_write_full  stage front_tun, reason write_full (seqpacket: the front's own TUN)
//	drop_bad_mac               stage wg,        reason bad_mac
//	drop_tun_write             stage wg,        reason tun_write (WireGuard's count of the
//	                           packets stage tun drops on write, by its reasons)
func DropLabels(name string) (stage, reason string, ok bool) {
	prefix := ""
	if rest, found := strings.CutPrefix(name, "front_"); found && strings.HasPrefix(rest, "drop_") {
		prefix, name = "front_", rest
	}
	rest, found := strings.CutPrefix(name, "drop_")
	if !found || rest == "" {
		return "", "", false
	}
	if rest == "tun_write" {
		return prefix + "wg", rest, true
	}
	for _, s := range []string{"tun", "udp", "front"} {
		if r, found := strings.CutPrefix(rest, s+"_"); found && r != "" {
			return prefix + s, r, true
		}
	}
	return prefix + "wg", rest, true
}
