package bench

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteTable writes r as a readable terminal report: the machine and
// settings, one row per metric with each candidate's median and min-max,
// then the ratios of medians to the raw underlay, to the first peer and to
// each candidate's Versus, then the candidates' notes and any errors.
func (r *Result) WriteTable(w io.Writer) error {
	pw := &errWriter{w: w}
	fmt.Fprintf(pw, "ptun bench, %s\n", r.Date.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(pw, "machine: %s\n", r.Machine.String())
	s := r.Settings
	fmt.Fprintf(pw, "settings: %d rounds, %gs per test, %d streams for the multi-stream tests, UDP offered at %g Mbit/s in %d-byte datagrams, tunnel MTU %d over a %d veth\n\n",
		s.Rounds, s.DurationS, s.Streams, s.UDPRateMbit, s.UDPSize, s.TunnelMTU, s.UnderlayMTU)

	tw := tabwriter.NewWriter(pw, 2, 8, 3, ' ', 0)
	fmt.Fprintf(tw, "median (min-max)")
	for _, c := range r.Candidates {
		fmt.Fprintf(tw, "\t%s", c.Name)
	}
	fmt.Fprintf(tw, "\n")
	for _, mi := range Metrics {
		if !r.hasMetric(mi.Metric) {
			continue
		}
		fmt.Fprintf(tw, "%s (%s)", r.label(mi), mi.Unit)
		for _, c := range r.Candidates {
			fmt.Fprintf(tw, "\t%s", fmtSummary(c.Summary, mi.Metric))
		}
		fmt.Fprintf(tw, "\n")
	}
	tw.Flush()

	var cols []ratioColumn
	for _, c := range r.Candidates {
		if c.Kind == KindRaw {
			continue
		}
		if r.hasKind(KindRaw) {
			cols = append(cols, ratioColumn{c.Name, "raw", func(s Summary) *float64 { return s.VsRaw }, c.Summary})
		}
	}
	first := r.firstPeer()
	for _, c := range r.Candidates {
		if c.Kind == KindRaw || first == nil || c.Name == first.Name {
			continue
		}
		cols = append(cols, ratioColumn{c.Name, first.Name, func(s Summary) *float64 { return s.VsFirstPeer }, c.Summary})
	}
	for _, c := range r.Candidates {
		for _, name := range c.Versus {
			if r.Candidate(name) == nil || name == c.Name {
				continue
			}
			cols = append(cols, ratioColumn{c.Name, name, func(s Summary) *float64 {
				if v, ok := s.Vs[name]; ok {
					return &v
				}
				return nil
			}, c.Summary})
		}
	}
	if len(cols) > 0 {
		fmt.Fprintf(pw, "\n")
		tw = tabwriter.NewWriter(pw, 2, 8, 3, ' ', 0)
		fmt.Fprintf(tw, "ratio of medians")
		for _, col := range cols {
			fmt.Fprintf(tw, "\t%s / %s", col.name, col.ref)
		}
		fmt.Fprintf(tw, "\n")
		for _, mi := range Metrics {
			var cells []string
			any := false
			for _, col := range cols {
				cell := "-"
				if s, ok := col.summary[mi.Metric]; ok {
					if v := col.get(s); v != nil {
						cell = fmt.Sprintf("%.2fx", *v)
						any = true
					}
				}
				cells = append(cells, cell)
			}
			if any {
				fmt.Fprintf(tw, "%s\t%s\n", r.label(mi), strings.Join(cells, "\t"))
			}
		}
		tw.Flush()
	}

	for _, c := range r.Candidates {
		for _, n := range c.Notes {
			fmt.Fprintf(pw, "\nnote, %s: %s", c.Name, n)
		}
	}
	if r.hasNotes() {
		fmt.Fprintf(pw, "\n")
	}
	for _, c := range r.Candidates {
		for _, e := range c.Errors {
			fmt.Fprintf(pw, "\n%s: %s", c.Name, e)
		}
	}
	if r.hasErrors() {
		fmt.Fprintf(pw, "\n")
	}
	if r.Command != "" {
		fmt.Fprintf(pw, "\ncommand: %s\n", r.Command)
	}
	return pw.err
}

type ratioColumn struct {
	name, ref string
	get       func(Summary) *float64
	summary   map[Metric]Summary
}

// String describes the machine on one line.
func (m Machine) String() string {
	var parts []string
	if m.CPUs > 0 {
		cpu := strconv.Itoa(m.CPUs) + " CPUs"
		if m.CPUModel != "" {
			cpu += " (" + m.CPUModel + ")"
		}
		parts = append(parts, cpu)
	}
	if m.MemGiB > 0 {
		parts = append(parts, fmt.Sprintf("%.0f GiB", m.MemGiB))
	}
	for _, s := range []string{m.Kernel, m.GoVersion, m.Iperf3} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ", ")
}

// label is mi's label with the run's stream count and UDP rate filled in.
func (r *Result) label(mi MetricInfo) string {
	switch mi.Metric {
	case TCPUpMulti, TCPDownMulti:
		return strings.Replace(mi.Label, "N streams", fmt.Sprintf("%d streams", r.Settings.Streams), 1)
	case UDPUp, UDPDown:
		return fmt.Sprintf("%s @%gM", mi.Label, r.Settings.UDPRateMbit)
	}
	return mi.Label
}

func (r *Result) hasMetric(m Metric) bool {
	for _, c := range r.Candidates {
		if _, ok := c.Summary[m]; ok {
			return true
		}
	}
	return false
}

func (r *Result) hasKind(kind string) bool {
	for _, c := range r.Candidates {
		if c.Kind == kind {
			return true
		}
	}
	return false
}

func (r *Result) hasNotes() bool {
	for _, c := range r.Candidates {
		if len(c.Notes) > 0 {
			return true
		}
	}
	return false
}

func (r *Result) hasErrors() bool {
	for _, c := range r.Candidates {
		if len(c.Errors) > 0 {
			return true
		}
	}
	return false
}

func (r *Result) firstPeer() *CandidateResult {
	for i := range r.Candidates {
		if r.Candidates[i].Kind == KindPeer {
			return &r.Candidates[i]
		}
	}
	return nil
}

// fmtSummary is "median (min-max)", or the median alone for one sample,
// or "-" when there is none.
func fmtSummary(sums map[Metric]Summary, m Metric) string {
	s, ok := sums[m]
	if !ok {
		return "-"
	}
	if s.N == 1 || s.Min == s.Max {
		return fmtValue(s.Median)
	}
	return fmt.Sprintf("%s (%s-%s)", fmtValue(s.Median), fmtValue(s.Min), fmtValue(s.Max))
}

// fmtValue prints v with three significant digits, without exponent.
func fmtValue(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

// errWriter remembers the first write error, so report code need not check
// every line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(b []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(b)
	e.err = err
	return n, err
}
