package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

// svgDrawn lists the metrics WriteSVG must draw as bars, by panel.
var svgDrawn = map[string][]Metric{
	"throughput": {TCPUp, TCPDown, TCPUpMulti, TCPDownMulti, UDPUp, UDPDown},
	"rtt":        {RTTIdle, RTTLoaded},
}

// svgTestResult is a run of three candidates over five rounds, with
// made-up but plausible numbers, summarized.
func svgTestResult() *Result {
	r := &Result{
		Date:    time.Date(2025, 6, 1, 16, 7, 59, 0, time.FixedZone("CEST", 2*3600)),
		Command: "ptun bench --rounds 5 --duration 10s --peer wireguard-go=/usr/bin/wireguard-go",
		Machine: Machine{Kernel: "Linux 6.1.0-18-amd64", CPUModel: "AMD EPYC 7B13 64-Core Processor", CPUs: 4},
		Settings: Settings{Rounds: 5, DurationS: 10, Streams: 4, UDPRateMbit: 500, UDPSize: 1400,
			TunnelMTU: 1420, UnderlayMTU: 1500},
		Candidates: []CandidateResult{
			{Name: "raw", Kind: KindRaw, Samples: map[Metric][]float64{
				TCPUp: {4, 4.2, 3.9, 4.1, 4}, TCPDown: {4.4, 4.3, 4.5, 4.4, 4.2},
				TCPUpMulti: {5.1, 5.3, 5.0, 5.2, 5.2}, TCPDownMulti: {5.5, 5.4, 5.6, 5.5, 5.5},
				UDPUp: {0.5, 0.5, 0.5, 0.5, 0.5}, UDPUpLoss: {0, 0, 0, 0, 0},
				UDPDown: {0.5, 0.5, 0.5, 0.5, 0.5}, UDPDownLoss: {0, 0, 0.01, 0, 0},
				RTTIdle: {0.04, 0.05, 0.04, 0.04, 0.05}, RTTLoaded: {0.9, 1.1, 1.0, 0.95, 1.2},
			}},
			{Name: "ptun", Kind: KindPtun, Samples: map[Metric][]float64{
				TCPUp: {2, 2.1, 1.9, 2, 2.05}, TCPDown: {2.65, 2.5, 2.8, 2.6, 2.7},
				TCPUpMulti: {3.1, 3.0, 3.3, 3.2, 3.1}, TCPDownMulti: {3.4, 3.5, 3.3, 3.6, 3.4},
				UDPUp: {0.49, 0.5, 0.5, 0.48, 0.5}, UDPUpLoss: {0.3, 0.2, 0.4, 0.3, 0.3},
				UDPDown: {0.5, 0.49, 0.5, 0.5, 0.5}, UDPDownLoss: {0.1, 0.2, 0.1, 0.1, 0.1},
				RTTIdle: {0.12, 0.11, 0.13, 0.12, 0.12}, RTTLoaded: {3.5, 4.2, 3.8, 3.9, 7.0},
			}},
			{Name: "wireguard-go", Kind: KindPeer, Samples: map[Metric][]float64{
				TCPUp: {1.6, 1.7, 1.5, 1.6, 1.6}, TCPDown: {1.9, 2.0, 1.8, 1.9, 1.9},
				TCPUpMulti: {2.4, 2.5, 2.3, 2.4, 2.4}, TCPDownMulti: {2.6, 2.7, 2.5, 2.6, 2.6},
				UDPUp: {0.45, 0.47, 0.46, 0.45, 0.46}, UDPUpLoss: {8, 6, 7.5, 9, 8},
				UDPDown: {0.47, 0.48, 0.47, 0.46, 0.47}, UDPDownLoss: {5, 4, 6, 5, 5},
				RTTIdle: {0.15, 0.16, 0.15, 0.14, 0.15}, RTTLoaded: {5.5, 6.1, 5.8, 5.9, 6.0},
			}},
		},
	}
	r.Summarize()
	return r
}

// svgElement is one element of a parsed SVG.
type svgElement struct {
	name  string
	attr  map[string]string
	panel string // id of the enclosing <g class="panel">, or ""
	text  string // character data directly inside
}

// parseSVG decodes b to EOF, failing the test on any XML error, and
// returns its elements in document order, the root first.
func parseSVG(t *testing.T, b []byte) []svgElement {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	var elems []svgElement
	var open []int // indexes into elems of the open elements
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, b)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			e := svgElement{name: tok.Name.Local, attr: map[string]string{}}
			for _, a := range tok.Attr {
				e.attr[a.Name.Local] = a.Value
			}
			if len(open) > 0 {
				e.panel = elems[open[len(open)-1]].panel
			}
			if e.name == "g" && e.attr["class"] == "panel" {
				e.panel = e.attr["id"]
			}
			elems = append(elems, e)
			open = append(open, len(elems)-1)
		case xml.EndElement:
			open = open[:len(open)-1]
		case xml.CharData:
			if len(open) > 0 {
				elems[open[len(open)-1]].text += string(tok)
			}
		}
	}
	if len(open) != 0 {
		t.Fatalf("%d elements left open", len(open))
	}
	if len(elems) == 0 {
		t.Fatal("SVG has no elements")
	}
	return elems
}

func writeSVG(t *testing.T, r *Result) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteSVG(&b); err != nil {
		t.Fatalf("WriteSVG: %v", err)
	}
	return b.Bytes()
}

// checkRoot checks the root is an <svg> with a positive width and height.
func checkRoot(t *testing.T, elems []svgElement) {
	t.Helper()
	root := elems[0]
	if root.name != "svg" {
		t.Fatalf("root element is <%s>, want <svg>", root.name)
	}
	for _, a := range []string{"width", "height"} {
		v, err := strconv.Atoi(root.attr[a])
		if err != nil || v <= 0 {
			t.Errorf("root %s = %q, want a positive integer", a, root.attr[a])
		}
	}
}

func svgFloatAttr(t *testing.T, e svgElement, name string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(e.attr[name], 64)
	if err != nil {
		t.Fatalf("<%s> %s=%q: %v", e.name, name, e.attr[name], err)
	}
	return v
}

func svgBars(elems []svgElement) []svgElement {
	var bars []svgElement
	for _, e := range elems {
		if e.name == "rect" && e.attr["class"] == "bar" {
			bars = append(bars, e)
		}
	}
	return bars
}

// svgAllText is the character data of every element, one per line.
func svgAllText(elems []svgElement) string {
	var s strings.Builder
	for _, e := range elems {
		s.WriteString(e.text + "\n")
	}
	return s.String()
}

func TestWriteSVGHeadline(t *testing.T) {
	r := svgTestResult()
	elems := parseSVG(t, writeSVG(t, r))
	checkRoot(t, elems)
	if w := elems[0].attr["width"]; w != "960" {
		t.Errorf("width = %s, want 960", w)
	}
	text := svgAllText(elems)
	for _, want := range []string{
		"ptun bench",
		"2025-06-01 14:07 UTC", // 16:07:59 CEST, to the minute, in UTC
		"4 CPUs", "AMD EPYC 7B13", "Linux 6.1.0-18-amd64",
		"5 rounds × 10s",
		r.Command,
		"TCP up ×4 streams", "TCP down ×4 streams",
		"UDP up @500M", "UDP down @500M", "idle", "under load",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("SVG text lacks %q", want)
		}
	}
	if strings.Contains(text, "64-Core") || strings.Contains(text, "Processor") {
		t.Errorf("CPU model not shortened:\n%s", text)
	}
}

func TestWriteSVGEscapes(t *testing.T) {
	r := svgTestResult()
	const evil = `wg<&>"go`
	r.Candidates[2].Name = evil
	r.Candidates[2].Errors = []string{"round 2: </svg><script>alert(1)</script>"}
	r.Command = `ptun bench --peer 'wg<&>"go=x' </text>`
	out := writeSVG(t, r)
	elems := parseSVG(t, out)
	checkRoot(t, elems)
	if bytes.Contains(out, []byte(evil)) || bytes.Contains(out, []byte("<script>")) || bytes.Contains(out, []byte("'wg<&>")) {
		t.Errorf("a string from the Result went out unescaped:\n%s", out)
	}
	if !bytes.Contains(out, []byte("wg&lt;&amp;&gt;&#34;go")) {
		t.Errorf("escaped name missing:\n%s", out)
	}
	// Decoded, the strings are back as they were.
	var legend, bars int
	for _, e := range elems {
		if e.attr["data-candidate"] != evil {
			continue
		}
		switch {
		case e.name == "g" && e.attr["class"] == "legend":
			legend++
		case e.attr["class"] == "bar":
			bars++
		}
	}
	if legend != 1 || bars != 8 {
		t.Errorf("decoded name %q found on %d legend entries and %d bars, want 1 and 8", evil, legend, bars)
	}
	text := svgAllText(elems)
	if !strings.Contains(text, evil) || !strings.Contains(text, r.Command) {
		t.Errorf("decoded text lacks the name or the command:\n%s", text)
	}
}

func TestWriteSVGBars(t *testing.T) {
	r := svgTestResult()
	// Make one bar exactly twice another: raw's TCP up median is 4.
	r.Candidates[1].Samples[TCPUp] = []float64{2, 2, 2, 2, 2}
	r.Summarize()
	delete(r.Candidates[2].Summary, RTTLoaded)
	delete(r.Candidates[0].Summary, UDPUp)

	elems := parseSVG(t, writeSVG(t, r))
	bars := svgBars(elems)

	want := map[string]bool{} // "candidate metric"
	for _, c := range r.Candidates {
		for _, ms := range svgDrawn {
			for _, m := range ms {
				if _, ok := c.Summary[m]; ok {
					want[c.Name+" "+string(m)] = true
				}
			}
		}
	}
	if len(bars) != len(want) {
		t.Errorf("%d bars, want %d, one per (candidate, drawn metric) with a summary", len(bars), len(want))
	}
	got := map[string]svgElement{}
	fill := map[string]string{}
	for _, b := range bars {
		key := b.attr["data-candidate"] + " " + b.attr["data-metric"]
		if !want[key] {
			t.Errorf("unexpected bar %s", key)
		}
		if _, dup := got[key]; dup {
			t.Errorf("two bars for %s", key)
		}
		got[key] = b
		name := b.attr["data-candidate"]
		if f, ok := fill[name]; ok && f != b.attr["fill"] {
			t.Errorf("%s has bars in %s and %s", name, f, b.attr["fill"])
		}
		fill[name] = b.attr["fill"]
	}
	if fill["raw"] != svgRawColour {
		t.Errorf("raw is %s, want gray %s", fill["raw"], svgRawColour)
	}
	if fill["ptun"] == fill["wireguard-go"] || fill["ptun"] == fill["raw"] || fill["wireguard-go"] == fill["raw"] {
		t.Errorf("candidates share a colour: %v", fill)
	}

	height := func(key string) float64 { return svgFloatAttr(t, got[key], "height") }
	if raw, ptun := height("raw "+string(TCPUp)), height("ptun "+string(TCPUp)); math.Abs(raw-2*ptun) > 1 {
		t.Errorf("TCP up bars: raw (median 4) is %.1fpx, ptun (median 2) %.1fpx; want twice as tall", raw, ptun)
	}

	// Linear from 0: in a panel, every bar stands on one baseline and its
	// height is its median times one scale.
	for panel := range svgDrawn {
		var scale, base float64
		for _, b := range bars {
			if b.panel != panel {
				continue
			}
			h, median := svgFloatAttr(t, b, "height"), svgFloatAttr(t, b, "data-median")
			bottom := svgFloatAttr(t, b, "y") + h
			if scale == 0 {
				scale, base = h/median, bottom
			}
			if math.Abs(h-median*scale) > 1 || math.Abs(bottom-base) > 0.2 {
				t.Errorf("%s bar %s %s: height %.1f bottom %.1f, want %.1f and %.1f",
					panel, b.attr["data-candidate"], b.attr["data-metric"], h, bottom, median*scale, base)
			}
		}
		if scale == 0 {
			t.Errorf("no bars in panel %s", panel)
		}
	}

	// UDP loss medians are printed under the bars; raw's UDP up loss goes
	// with its bar.
	var losses []string
	for _, e := range elems {
		if e.attr["class"] == "loss" {
			losses = append(losses, e.attr["data-candidate"]+" "+e.text)
		}
	}
	const wantLoss = "ptun 0.3% | wireguard-go 8% | raw 0% | ptun 0.1% | wireguard-go 5%"
	if g := strings.Join(losses, " | "); g != wantLoss {
		t.Errorf("loss labels %q, want %q", g, wantLoss)
	}
}

func TestWriteSVGMissing(t *testing.T) {
	r := svgTestResult()
	r.Candidates = append(r.Candidates,
		CandidateResult{Name: "half", Kind: KindPtun,
			Samples: map[Metric][]float64{TCPUp: {1}, TCPDown: {}},
			Errors:  []string{"round 1: tcp down: iperf3 exited 1"}},
		CandidateResult{Name: "never-summarized", Kind: KindPeer},
	)
	r.Summarize()
	r.Candidates[4].Summary = nil
	r.Candidates[1].Summary[TCPDown] = Summary{N: 1, Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	r.Candidates[1].Summary[TCPUp] = Summary{N: 2, Median: 2, Min: math.Inf(-1), Max: math.Inf(1)}

	elems := parseSVG(t, writeSVG(t, r))
	checkRoot(t, elems)
	count := map[string]int{}
	for _, b := range svgBars(elems) {
		count[b.attr["data-candidate"]]++
		if b.attr["data-candidate"] == "ptun" && b.attr["data-metric"] == string(TCPDown) {
			t.Error("NaN median drawn as a bar")
		}
	}
	if count["half"] != 1 || count["never-summarized"] != 0 || count["ptun"] != 7 {
		t.Errorf("bars per candidate %v, want half 1, never-summarized 0, ptun 7", count)
	}
	// Exactly one "(errors)" mark, for "half".
	out := string(writeSVG(t, r))
	if n := strings.Count(out, "(errors)"); n != 1 {
		t.Errorf("%d (errors) marks, want 1", n)
	}
	i := strings.Index(out, `data-candidate="half"`)
	j := strings.Index(out, "(errors)")
	k := strings.Index(out, `data-candidate="never-summarized"`)
	if !(i >= 0 && i < j && j < k) {
		t.Errorf("(errors) mark not in half's legend entry (at %d, entries at %d and %d)", j, i, k)
	}
}

func TestWriteSVGEmpty(t *testing.T) {
	for name, r := range map[string]*Result{
		"zero":          {},
		"no candidates": {Date: time.Unix(0, 0), Command: "ptun bench", Settings: Settings{Rounds: 3, DurationS: 2}},
		"no summaries":  {Candidates: []CandidateResult{{Name: "raw", Kind: KindRaw}}},
	} {
		t.Run(name, func(t *testing.T) {
			elems := parseSVG(t, writeSVG(t, r))
			checkRoot(t, elems)
			if n := len(svgBars(elems)); n != 0 {
				t.Errorf("%d bars, want 0", n)
			}
			if got := strings.Count(svgAllText(elems), "no data"); got != 2 {
				t.Errorf(`%d "no data" notes, want one per panel`, got)
			}
		})
	}
}

func TestWriteSVGAxisHoldsMax(t *testing.T) {
	r := svgTestResult()
	// A whisker taller than every median, and a max on a round number.
	r.Candidates[1].Samples[TCPDown] = []float64{2.6, 2.7, 9.3}
	r.Candidates[2].Samples[RTTLoaded] = []float64{5, 6, 10}
	r.Summarize()
	elems := parseSVG(t, writeSVG(t, r))
	for panel, metrics := range svgDrawn {
		var largest float64
		for _, c := range r.Candidates {
			for _, m := range metrics {
				if s, ok := c.Summary[m]; ok {
					largest = max(largest, s.Max)
				}
			}
		}
		var top float64
		ticks := 0
		for _, e := range elems {
			if e.panel == panel && e.attr["class"] == "grid" {
				top = max(top, svgFloatAttr(t, e, "data-value"))
				ticks++
			}
		}
		if top < largest || top > 1.5*largest {
			t.Errorf("%s: top tick %g, want between the largest max %g and 1.5 times it", panel, top, largest)
		}
		if ticks < 4 || ticks > 8 {
			t.Errorf("%s: %d grid lines, want 4 to 8", panel, ticks)
		}
		// The whisker of the largest max reaches no higher than the top line.
		for _, e := range elems {
			if e.panel == panel && e.attr["class"] == "grid" && svgFloatAttr(t, e, "data-value") == top {
				topY := svgFloatAttr(t, e, "y1")
				for _, b := range svgBars(elems) {
					if b.panel == panel && svgFloatAttr(t, b, "y") < topY-0.1 {
						t.Errorf("%s: bar %s rises above the top grid line", panel, b.attr["data-candidate"])
					}
				}
			}
		}
	}
}

func TestSVGNiceAxis(t *testing.T) {
	for _, c := range []struct{ largest, top, step float64 }{
		{0, 1, 0.2},
		{math.NaN(), 1, 0.2},
		{-3, 1, 0.2},
		{2.65, 3, 0.5},
		{5, 5, 1},
		{9.3, 10, 2},
		{0.3, 0.3, 0.05},
		{123, 125, 25},
		{0.0473, 0.05, 0.01},
	} {
		top, step := svgNiceAxis(c.largest)
		if top != c.top || step != c.step {
			t.Errorf("svgNiceAxis(%g) = %g, %g; want %g, %g", c.largest, top, step, c.top, c.step)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		v := math.Pow(10, rng.Float64()*12-6)
		top, step := svgNiceAxis(v)
		steps := top / step
		mantissa := step / math.Pow(10, math.Floor(math.Log10(step)+1e-9))
		round := false
		for _, m := range []float64{1, 2, 2.5, 5} {
			round = round || math.Abs(mantissa-m) < 1e-9
		}
		if top < v || top >= v+step*(1+1e-9) || steps < 3-1e-9 || steps > 7+1e-9 || !round ||
			math.Abs(steps-math.Round(steps)) > 1e-6 {
			t.Fatalf("svgNiceAxis(%g) = %g, %g: want a top >= %g by less than a round step, 3 to 7 steps", v, top, step, v)
		}
	}
}

func TestSVGShortCPUModel(t *testing.T) {
	for in, want := range map[string]string{
		"AMD EPYC 7B13 64-Core Processor":                     "AMD EPYC 7B13",
		"Intel(R) Xeon(R) CPU @ 2.20GHz":                      "Intel Xeon @ 2.20GHz",
		"Intel(R) Core(TM) i7-8700K CPU @ 3.70GHz":            "Intel Core i7-8700K @ 3.70GHz",
		"AMD Ryzen 7 PRO 4750U with Radeon Graphics":          "AMD Ryzen 7 PRO 4750U",
		"QEMU Virtual CPU version 2.5+":                       "QEMU Virtual CPU version 2.5+",
		"":                                                    "",
		"Some Extremely Long Vendor Name Model 1234567 Rev 2": "Some Extremely Long Vendor Name Model 1…",
	} {
		if got := svgShortCPUModel(in); got != want {
			t.Errorf("svgShortCPUModel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWriteSVGDeterministic(t *testing.T) {
	// Summary is a map: drawing must not depend on its iteration order.
	first := writeSVG(t, svgTestResult())
	for range 20 {
		if again := writeSVG(t, svgTestResult()); !bytes.Equal(first, again) {
			t.Fatal("two writes of the same Result differ")
		}
	}
}

type svgFailWriter struct{}

func (svgFailWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteSVGWriteError(t *testing.T) {
	err := svgTestResult().WriteSVG(svgFailWriter{})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("WriteSVG to a failing writer: %v, want the write error", err)
	}
}
