package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// Metric names one measured quantity. Its value is the key used in the
// JSON report, so it never changes once released.
type Metric string

// The metrics, in the order reports show them. "Up" is client to server,
// "down" is server to client (the client downloads).
const (
	TCPUp        Metric = "tcp_up_gbps"           // one TCP stream, received rate
	TCPDown      Metric = "tcp_down_gbps"         //
	TCPUpMulti   Metric = "tcp_up_streams_gbps"   // Settings.Streams TCP streams, summed
	TCPDownMulti Metric = "tcp_down_streams_gbps" //
	UDPUp        Metric = "udp_up_gbps"           // UDP offered at Settings.UDPRate, received rate
	UDPUpLoss    Metric = "udp_up_loss_pct"       // share of those datagrams lost, in percent
	UDPDown      Metric = "udp_down_gbps"         //
	UDPDownLoss  Metric = "udp_down_loss_pct"     //
	RTTIdle      Metric = "rtt_idle_ms"           // ping through the idle tunnel, median of a round's echoes
	RTTLoaded    Metric = "rtt_loaded_ms"         // ping while one TCP stream downloads, median of a round's echoes
	CPUUp        Metric = "cpu_s_per_gb_up"       // CPU seconds of all tunnel processes per GB carried by TCPUp
	CPUDown      Metric = "cpu_s_per_gb_down"     //
	RSS          Metric = "rss_mib"               // peak resident memory of the larger endpoint's processes
	// The server end's alone, for OpenConnect candidates: their servers
	// differ and share a client, whose figures would blur the servers'.
	CPUUpServer   Metric = "cpu_server_s_per_gb_up"   // CPU seconds of the server's processes per GB carried by TCPUp
	CPUDownServer Metric = "cpu_server_s_per_gb_down" //
	RSSServer     Metric = "rss_server_mib"           // peak resident memory of the server's processes
)

// MetricInfo describes a Metric for reports.
type MetricInfo struct {
	Metric         Metric
	Label          string // short, for a table row or a chart axis
	Unit           string
	HigherIsBetter bool
}

// Metrics lists every metric in report order.
var Metrics = []MetricInfo{
	{TCPUp, "TCP up", "Gbit/s", true},
	{TCPDown, "TCP down", "Gbit/s", true},
	{TCPUpMulti, "TCP up, N streams", "Gbit/s", true},
	{TCPDownMulti, "TCP down, N streams", "Gbit/s", true},
	{UDPUp, "UDP up", "Gbit/s", true},
	{UDPUpLoss, "UDP up loss", "%", false},
	{UDPDown, "UDP down", "Gbit/s", true},
	{UDPDownLoss, "UDP down loss", "%", false},
	{RTTIdle, "RTT idle", "ms", false},
	{RTTLoaded, "RTT under load", "ms", false},
	{CPUUp, "CPU, TCP up", "s/GB", false},
	{CPUDown, "CPU, TCP down", "s/GB", false},
	{RSS, "peak RSS", "MiB", false},
	{CPUUpServer, "server CPU, TCP up", "s/GB", false},
	{CPUDownServer, "server CPU, TCP down", "s/GB", false},
	{RSSServer, "server peak RSS", "MiB", false},
}

// Info returns m's description.
func (m Metric) Info() MetricInfo {
	for _, i := range Metrics {
		if i.Metric == m {
			return i
		}
	}
	return MetricInfo{Metric: m, Label: string(m)}
}

// Kinds of candidate.
const (
	KindRaw  = "raw"  // the underlay itself, no tunnel
	KindPtun = "ptun" // ptun in one of its modes
	KindPeer = "peer" // another implementation, given with --peer
	// KindOpenConnect is an OpenConnect server in the server host and a
	// client in the client host (see OpenConnectCandidates).
	KindOpenConnect = "openconnect"
)

// Result is everything one bench run measured. It is what --json writes.
type Result struct {
	Date       time.Time         `json:"date"`
	Command    string            `json:"command"` // the command line that produced it
	Machine    Machine           `json:"machine"`
	Settings   Settings          `json:"settings"`
	Candidates []CandidateResult `json:"candidates"` // raw first, then ptun modes, peers and OpenConnect candidates, as given
	Elapsed    float64           `json:"elapsed_s"`  // wall time of the whole run
}

// Machine describes where the run happened.
type Machine struct {
	Kernel    string  `json:"kernel"`
	CPUModel  string  `json:"cpu_model"`
	CPUs      int     `json:"cpus"`
	MemGiB    float64 `json:"mem_gib"`
	GoVersion string  `json:"go_version"`
	Iperf3    string  `json:"iperf3"`
}

// Settings are the run's parameters.
type Settings struct {
	Rounds      int     `json:"rounds"`
	DurationS   float64 `json:"duration_s"` // of each throughput test
	Streams     int     `json:"streams"`
	UDPRateMbit float64 `json:"udp_rate_mbit"`
	UDPSize     int     `json:"udp_size"`
	TunnelMTU   int     `json:"tunnel_mtu"`
	UnderlayMTU int     `json:"underlay_mtu"`
}

// CandidateResult is one candidate's samples and their summary.
type CandidateResult struct {
	Name    string   `json:"name"`
	Kind    string   `json:"kind"` // KindRaw, KindPtun, KindPeer or KindOpenConnect
	Command string   `json:"command,omitempty"`
	Env     []string `json:"env,omitempty"`
	// Versus names the candidates this one is meant to be compared with
	// (an OpenConnect candidate's counterpart); Summary.Vs holds the
	// ratios to those that were measured.
	Versus []string `json:"versus,omitempty"`
	// Notes say what a reader needs to know to read the figures (which
	// client, which path, the tunnel MTU).
	Notes   []string             `json:"notes,omitempty"`
	Samples map[Metric][]float64 `json:"samples"` // one per round (RSS: one per run)
	Summary map[Metric]Summary   `json:"summary"`
	Errors  []string             `json:"errors,omitempty"` // what failed, with the round
}

// Summary condenses one metric's samples.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// VsRaw and VsFirstPeer are this median divided by the raw
	// underlay's and by the first --peer's median of the same metric,
	// when both exist and the divisor is not zero.
	VsRaw       *float64 `json:"vs_raw,omitempty"`
	VsFirstPeer *float64 `json:"vs_first_peer,omitempty"`
	// Vs is this median divided by the same metric's median of each
	// candidate in CandidateResult.Versus, by name, where both exist.
	Vs map[string]float64 `json:"vs,omitempty"`
}

// add records one sample of m.
func (c *CandidateResult) add(m Metric, v float64) {
	if c.Samples == nil {
		c.Samples = make(map[Metric][]float64)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	c.Samples[m] = append(c.Samples[m], v)
}

// Summarize fills every candidate's Summary from its Samples.
func (r *Result) Summarize() {
	var raw, first *CandidateResult
	for i := range r.Candidates {
		c := &r.Candidates[i]
		c.Summary = make(map[Metric]Summary, len(c.Samples))
		for m, s := range c.Samples {
			if len(s) > 0 {
				c.Summary[m] = summarize(s)
			}
		}
		if c.Kind == KindRaw && raw == nil {
			raw = c
		}
		if c.Kind == KindPeer && first == nil {
			first = c
		}
	}
	for i := range r.Candidates {
		c := &r.Candidates[i]
		for m, s := range c.Summary {
			if raw != nil && raw != c {
				s.VsRaw = ratio(s, raw.Summary, m)
			}
			if first != nil && first != c {
				s.VsFirstPeer = ratio(s, first.Summary, m)
			}
			for _, name := range c.Versus {
				if ref := r.Candidate(name); ref != nil && ref != c {
					if v := ratio(s, ref.Summary, m); v != nil {
						if s.Vs == nil {
							s.Vs = map[string]float64{}
						}
						s.Vs[name] = *v
					}
				}
			}
			c.Summary[m] = s
		}
	}
}

// ratio is s's median over ref's for the same metric. Loss percentages get
// none: a ratio of two near-zero shares says nothing.
func ratio(s Summary, ref map[Metric]Summary, m Metric) *float64 {
	if m.Info().Unit == "%" {
		return nil
	}
	r, ok := ref[m]
	if !ok || r.Median == 0 {
		return nil
	}
	v := s.Median / r.Median
	return &v
}

func summarize(s []float64) Summary {
	return Summary{N: len(s), Median: median(s), Min: slices.Min(s), Max: slices.Max(s)}
}

// median returns the middle value of s (the mean of the two middle ones
// when len(s) is even); s must not be empty.
func median(s []float64) float64 {
	c := slices.Clone(s)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// WriteJSON writes r, indented.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("bench: writing JSON: %w", err)
	}
	return nil
}

// Candidate returns the named candidate's result, or nil.
func (r *Result) Candidate(name string) *CandidateResult {
	for i := range r.Candidates {
		if r.Candidates[i].Name == name {
			return &r.Candidates[i]
		}
	}
	return nil
}
