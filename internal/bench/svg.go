package bench

import (
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Chart geometry, in pixels.
const (
	svgWidth      = 960
	svgMargin     = 16  // around the whole image
	svgAxisGutter = 44  // left of each plot, for the tick labels
	svgMaxBar     = 36  // widest bar
	svgBarGap     = 3   // between the bars of one group
	svgRefGroups  = 6   // bars are as wide as lets this many groups share a plot
	svgMaxLabel   = 48  // runes of a candidate name shown in the legend
	svgCharWidth  = 0.6 // of the font size: a generous average for sans-serif
)

// svgRawColour is the raw underlay's colour. The other candidates take
// svgPalette's colours in their order in Result.Candidates, starting over
// after the last. The palette is Okabe and Ito's, whose colours stay apart
// under the common colour-vision deficiencies; its black is left out so
// that the whiskers show on every bar.
const svgRawColour = "#8c8c8c"

var svgPalette = []string{"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442"}

// svgGroup is one cluster of bars: every candidate's median of metric.
type svgGroup struct {
	label  string
	metric Metric
	loss   Metric // printed under the bars when not ""
}

// svgPanel is one plot with its own y axis.
type svgPanel struct {
	id     string // the <g> element's id, fixed so tests and styles can find it
	title  string
	unit   string
	height float64 // of the plot area
	groups []svgGroup
}

// WriteSVG draws r as a self-contained SVG image, svgWidth pixels wide: a
// headline with the date, machine and settings, a legend, then bar charts
// of throughput and RTT with one bar per candidate and metric (height: the
// median; whisker: min to max over the rounds; the median printed on top).
//
// It reads the Summary maps, so call Summarize first; a candidate without
// a summary of a metric gets no bar for it, and a group of bars nobody has
// is left out. Every string from r is escaped, so names and commands may
// hold anything. The output depends on r alone: the same Result gives the
// same bytes.
func (r *Result) WriteSVG(w io.Writer) error {
	var body strings.Builder
	height := r.drawSVG(&body)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif">`+"\n",
		svgWidth, height, svgWidth, height)
	b.WriteString(`<rect width="100%" height="100%" fill="#ffffff"/>` + "\n")
	b.WriteString(body.String())
	b.WriteString("</svg>\n")
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("bench: writing SVG: %w", err)
	}
	return nil
}

// drawSVG writes the image's elements to b and returns its height.
func (r *Result) drawSVG(b *strings.Builder) int {
	y := r.svgHeadline(b)
	colours := r.svgColours()
	y = r.svgLegend(b, colours, y+10)
	barW := svgBarWidth(len(r.Candidates))
	for _, p := range r.svgPanels() {
		y = r.svgPanel(b, p, colours, barW, y+14)
	}
	return int(math.Ceil(y + svgMargin))
}

// svgHeadline writes the title and command lines and returns the
// baseline of the last.
func (r *Result) svgHeadline(b *strings.Builder) float64 {
	const avail = svgWidth - 2*svgMargin
	var when, run string
	if !r.Date.IsZero() {
		when = r.Date.UTC().Format("2006-01-02 15:04 UTC")
	}
	if s := r.Settings; s.Rounds > 0 {
		run = fmt.Sprintf("%d rounds", s.Rounds)
		if s.Rounds == 1 {
			run = "1 round"
		}
		if s.DurationS > 0 {
			run += " × " + strconv.FormatFloat(s.DurationS, 'f', -1, 64) + "s"
		}
	}
	machine := r.Machine.svgLine()

	title := svgJoin(" · ", "ptun bench", when, machine, run)
	var second string
	if svgTextWidth(title, 16) > avail {
		title, second = svgJoin(" · ", "ptun bench", when, run), machine
	}
	y := float64(svgMargin + 14)
	rest := strings.TrimPrefix(title, "ptun bench")
	fmt.Fprintf(b, `<text class="title" x="%d" y="%s" font-size="16" fill="#111111"><tspan font-weight="bold">ptun bench</tspan>%s</text>`+"\n",
		svgMargin, svgPx(y), svgEsc(rest))
	if second != "" {
		y += 18
		fmt.Fprintf(b, `<text class="machine" x="%d" y="%s" font-size="13" fill="#333333">%s</text>`+"\n",
			svgMargin, svgPx(y), svgEsc(svgTruncate(second, svgFit(avail, 13))))
	}
	if r.Command != "" {
		y += 17
		cmd := svgTruncate(r.Command, svgFit(avail, 11))
		var full string
		if cmd != r.Command {
			full = "<title>" + svgEsc(r.Command) + "</title>"
		}
		fmt.Fprintf(b, `<text class="command" x="%d" y="%s" font-size="11" fill="#555555">%s%s</text>`+"\n",
			svgMargin, svgPx(y), full, svgEsc(cmd))
	}
	return y
}

// svgLine describes m in a few words: CPUs, shortened model, kernel.
func (m Machine) svgLine() string {
	var cpus string
	switch {
	case m.CPUs == 1:
		cpus = "1 CPU"
	case m.CPUs > 1:
		cpus = strconv.Itoa(m.CPUs) + " CPUs"
	}
	return svgJoin(", ", cpus, svgShortCPUModel(m.CPUModel), m.Kernel)
}

// svgShortCPUModel drops what /proc/cpuinfo model names repeat without
// telling CPUs apart: trademarks, "CPU", "Processor", core counts and
// integrated graphics ("AMD EPYC 7B13 64-Core Processor" is "AMD EPYC
// 7B13", "Intel(R) Xeon(R) CPU @ 2.20GHz" is "Intel Xeon @ 2.20GHz").
func svgShortCPUModel(model string) string {
	for _, mark := range []string{"(R)", "(r)", "(TM)", "(tm)"} {
		model = strings.ReplaceAll(model, mark, "")
	}
	fields := strings.Fields(model)
	var keep []string
	for i, f := range fields {
		last := i == len(fields)-1
		switch {
		case f == "with": // "with Radeon Graphics"
			return svgTruncate(strings.Join(keep, " "), 40)
		case strings.HasSuffix(f, "-Core"), strings.HasSuffix(f, "-core"):
		case (f == "CPU" || f == "Processor" || f == "processor") && (last || fields[i+1] == "@"):
		default:
			keep = append(keep, f)
		}
	}
	return svgTruncate(strings.Join(keep, " "), 40)
}

// svgColours returns each candidate's colour, by index in r.Candidates.
func (r *Result) svgColours() []string {
	colours := make([]string, len(r.Candidates))
	next := 0
	for i, c := range r.Candidates {
		if c.Kind == KindRaw {
			colours[i] = svgRawColour
			continue
		}
		colours[i] = svgPalette[next%len(svgPalette)]
		next++
	}
	return colours
}

// svgLegend writes a swatch and the name of every candidate, in rows, from
// top, and returns the bottom of the last row.
func (r *Result) svgLegend(b *strings.Builder, colours []string, top float64) float64 {
	const row, swatch = 20, 14
	if len(r.Candidates) == 0 {
		fmt.Fprintf(b, `<text class="legend" x="%d" y="%s" font-size="12" fill="#888888">no candidates</text>`+"\n",
			svgMargin, svgPx(top+11))
		return top + row
	}
	x, y := float64(svgMargin), top
	for i, c := range r.Candidates {
		name := svgTruncate(c.Name, svgMaxLabel)
		label := name
		if len(c.Errors) > 0 {
			label += " (errors)"
		}
		w := swatch + 6 + svgTextWidth(label, 12) + 18
		if x > svgMargin && x+w > svgWidth-svgMargin {
			x, y = svgMargin, y+row
		}
		fmt.Fprintf(b, `<g class="legend" data-candidate="%s">`, svgEsc(c.Name))
		if name != c.Name || len(c.Errors) > 0 {
			b.WriteString("<title>" + svgEsc(svgLegendTooltip(c)) + "</title>")
		}
		fmt.Fprintf(b, `<rect class="swatch" x="%s" y="%s" width="%d" height="%d" fill="%s"/>`,
			svgPx(x), svgPx(y), swatch, swatch, colours[i])
		fmt.Fprintf(b, `<text x="%s" y="%s" font-size="12" fill="#111111">%s`, svgPx(x+swatch+6), svgPx(y+11), svgEsc(name))
		if len(c.Errors) > 0 {
			b.WriteString(`<tspan class="errors" dx="4" fill="#c00000" font-weight="bold">(errors)</tspan>`)
		}
		b.WriteString("</text></g>\n")
		x += w
	}
	return y + row
}

// svgLegendTooltip is the candidate's full name and its first errors.
func svgLegendTooltip(c CandidateResult) string {
	const maxErrors = 10
	lines := []string{c.Name}
	for i, e := range c.Errors {
		if i == maxErrors {
			lines = append(lines, fmt.Sprintf("… %d more errors", len(c.Errors)-maxErrors))
			break
		}
		lines = append(lines, e)
	}
	return strings.Join(lines, "\n")
}

// svgPanels lists what the chart draws, in order.
func (r *Result) svgPanels() []svgPanel {
	streams := ", N streams"
	switch n := r.Settings.Streams; {
	case n == 1:
		streams = " ×1 stream"
	case n > 1:
		streams = fmt.Sprintf(" ×%d streams", n)
	}
	var rate string
	if m := r.Settings.UDPRateMbit; m > 0 {
		if m >= 1000 {
			rate = " @" + strconv.FormatFloat(m/1000, 'g', 4, 64) + "G"
		} else {
			rate = " @" + strconv.FormatFloat(m, 'g', 4, 64) + "M"
		}
	}
	return []svgPanel{
		{id: "throughput", title: "Throughput", unit: "Gbit/s", height: 260, groups: []svgGroup{
			{label: "TCP up", metric: TCPUp},
			{label: "TCP down", metric: TCPDown},
			{label: "TCP up" + streams, metric: TCPUpMulti},
			{label: "TCP down" + streams, metric: TCPDownMulti},
			{label: "UDP up" + rate, metric: UDPUp, loss: UDPUpLoss},
			{label: "UDP down" + rate, metric: UDPDown, loss: UDPDownLoss},
		}},
		{id: "rtt", title: "RTT", unit: "ms", height: 160, groups: []svgGroup{
			{label: "idle", metric: RTTIdle},
			{label: "under load", metric: RTTLoaded},
		}},
	}
}

// svgSummary returns c's summary of m, with a non-finite min or max
// replaced by the median, or false when there is none to draw.
func svgSummary(c *CandidateResult, m Metric) (Summary, bool) {
	s, ok := c.Summary[m]
	if !ok || m == "" || !svgFinite(s.Median) {
		return Summary{}, false
	}
	if !svgFinite(s.Min) {
		s.Min = s.Median
	}
	if !svgFinite(s.Max) {
		s.Max = s.Median
	}
	return s, true
}

// svgPanel draws p from top and returns its bottom.
func (r *Result) svgPanel(b *strings.Builder, p svgPanel, colours []string, barW, top float64) float64 {
	const plotLeft, plotRight = svgMargin + svgAxisGutter, svgWidth - svgMargin
	var groups []svgGroup
	var largest float64
	var anyLoss bool
	for _, g := range p.groups {
		drawn := false
		for i := range r.Candidates {
			s, ok := svgSummary(&r.Candidates[i], g.metric)
			if !ok {
				continue
			}
			drawn = true
			largest = max(largest, s.Median, s.Max)
			if _, ok := svgSummary(&r.Candidates[i], g.loss); ok {
				anyLoss = true
			}
		}
		if drawn {
			groups = append(groups, g)
		}
	}
	axisTop, step := svgNiceAxis(largest)

	fmt.Fprintf(b, `<g class="panel" id="%s" data-unit="%s">`+"\n", p.id, svgEsc(p.unit))
	caption := "bar: median over the rounds, whisker: min–max"
	if n := r.Settings.Rounds; n > 0 {
		caption = fmt.Sprintf("bar: median of %d rounds, whisker: min–max", n)
	}
	fmt.Fprintf(b, `<text x="%d" y="%s" font-size="13" fill="#111111"><tspan font-weight="bold">%s, %s</tspan><tspan dx="6" fill="#666666">%s</tspan></text>`+"\n",
		svgMargin, svgPx(top+13), svgEsc(p.title), svgEsc(p.unit), caption)

	plotTop := top + 38 // room for the value printed over the tallest bar
	plotBottom := plotTop + p.height
	yOf := func(v float64) float64 {
		return plotBottom - min(max(v, 0), axisTop)/axisTop*p.height
	}

	decimals := svgDecimals(step)
	ticks := int(math.Round(axisTop / step))
	for i := 0; i <= ticks; i++ {
		v := svgRound(float64(i)*step, decimals)
		if i == ticks {
			v = axisTop
		}
		y := svgPx(yOf(v))
		stroke := "#e2e2e2"
		if i == 0 {
			stroke = "#333333"
		}
		fmt.Fprintf(b, `<line class="grid" data-value="%s" x1="%d" y1="%s" x2="%d" y2="%s" stroke="%s" stroke-width="1"/>`,
			strconv.FormatFloat(v, 'f', -1, 64), plotLeft, y, plotRight, y, stroke)
		fmt.Fprintf(b, `<text x="%d" y="%s" font-size="11" fill="#333333" text-anchor="end">%s</text>`+"\n",
			plotLeft-6, svgPx(yOf(v)+4), strconv.FormatFloat(v, 'f', decimals, 64))
	}

	labelY := plotBottom + 17
	if anyLoss {
		labelY += 12 // the loss row goes between the bars and the labels
	}
	if len(groups) == 0 {
		fmt.Fprintf(b, `<text x="%s" y="%s" font-size="13" fill="#888888" text-anchor="middle">no data</text>`+"\n",
			svgPx((plotLeft+plotRight)/2.0), svgPx(plotTop+p.height/2))
	}

	labelRoom := barW + svgBarGap - 2 // a label may be this wide
	groupW := float64(plotRight-plotLeft) / float64(max(len(groups), 1))
	n := float64(len(r.Candidates))
	for gi, g := range groups {
		centre := plotLeft + groupW*(float64(gi)+0.5)
		left := centre - (n*barW+(n-1)*svgBarGap)/2
		hasLoss := false
		for ci := range r.Candidates {
			c := &r.Candidates[ci]
			s, ok := svgSummary(c, g.metric)
			if !ok {
				continue
			}
			x := left + float64(ci)*(barW+svgBarGap)
			mid := x + barW/2
			yMedian := yOf(s.Median)
			loss, hasLossBar := svgSummary(c, g.loss)
			fmt.Fprintf(b, `<rect class="bar" data-candidate="%s" data-metric="%s" data-median="%s" x="%s" y="%s" width="%s" height="%s" fill="%s"><title>%s</title></rect>`,
				svgEsc(c.Name), g.metric, strconv.FormatFloat(s.Median, 'g', -1, 64),
				svgPx(x), svgPx(yMedian), svgPx(barW), svgPx(plotBottom-yMedian), colours[ci],
				svgEsc(svgBarTooltip(c.Name, g.label, p.unit, s, loss, hasLossBar)))
			labelTop := yMedian
			if s.Max > s.Min {
				yMin, yMax := svgPx(yOf(s.Min)), svgPx(yOf(s.Max))
				capL, capR := svgPx(mid-barW/5), svgPx(mid+barW/5)
				fmt.Fprintf(b, `<path class="whisker" d="M%s %sV%sM%s %sH%sM%s %sH%s" stroke="#222222" stroke-width="1.2" fill="none"/>`,
					svgPx(mid), yMin, yMax, capL, yMin, capR, capL, yMax, capR)
				labelTop = min(labelTop, yOf(s.Max))
			}
			value := fmtValue(s.Median)
			fmt.Fprintf(b, `<text class="value" x="%s" y="%s" font-size="%s" fill="#222222" text-anchor="middle">%s</text>`,
				svgPx(mid), svgPx(labelTop-4), svgPx(svgFontToFit(value, labelRoom, 10)), value)
			if hasLossBar {
				hasLoss = true
				lost := svgTrimZeros(fmtValue(loss.Median)) + "%"
				fmt.Fprintf(b, `<text class="loss" data-candidate="%s" x="%s" y="%s" font-size="%s" fill="#555555" text-anchor="middle">%s</text>`,
					svgEsc(c.Name), svgPx(mid), svgPx(plotBottom+13), svgPx(svgFontToFit(lost, labelRoom, 9)), lost)
			}
			b.WriteString("\n")
		}
		fmt.Fprintf(b, `<text class="group" x="%s" y="%s" font-size="12" fill="#111111" text-anchor="middle">%s</text>`+"\n",
			svgPx(centre), svgPx(labelY), svgEsc(g.label))
		if hasLoss {
			fmt.Fprintf(b, `<text x="%s" y="%s" font-size="10" fill="#777777" text-anchor="middle">loss %% above</text>`+"\n",
				svgPx(centre), svgPx(labelY+13))
		}
	}
	b.WriteString("</g>\n")
	if anyLoss {
		return labelY + 13
	}
	return labelY
}

// svgBarTooltip says everything about one bar, for viewers that show
// <title> on hover.
func svgBarTooltip(name, group, unit string, s Summary, loss Summary, hasLoss bool) string {
	t := fmt.Sprintf("%s, %s: %s %s", name, group, fmtValue(s.Median), unit)
	if s.N > 1 {
		t += fmt.Sprintf(", median of %d (min %s, max %s)", s.N, fmtValue(s.Min), fmtValue(s.Max))
	}
	if hasLoss {
		t += ", " + fmtValue(loss.Median) + "% lost"
	}
	if s.VsRaw != nil && svgFinite(*s.VsRaw) {
		t += ", " + fmtValue(*s.VsRaw) + "× raw"
	}
	return t
}

// svgBarWidth is the width of every bar when n candidates share a group.
func svgBarWidth(n int) float64 {
	const plotW = svgWidth - 2*svgMargin - svgAxisGutter
	if n < 1 {
		return svgMaxBar
	}
	room := plotW/svgRefGroups*0.8 - float64(n-1)*svgBarGap
	return min(max(room/float64(n), 2), svgMaxBar)
}

// svgNiceAxis returns the top of a linear axis from 0 that holds largest,
// and the step between its ticks: a round number (1, 2, 2.5 or 5 times a
// power of ten) giving 3 to 7 steps. The top is at least largest, and
// less than largest plus a step.
func svgNiceAxis(largest float64) (top, step float64) {
	if !(largest > 0) || math.IsInf(largest, 0) {
		return 1, 0.2
	}
	rough := largest / 6
	mag := math.Pow(10, math.Floor(math.Log10(rough)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		step = m * mag
		if step >= rough {
			break
		}
	}
	d := svgDecimals(step)
	step = svgRound(step, d)
	top = svgRound(math.Ceil(largest/step)*step, d)
	for top < largest {
		top = svgRound(top+step, d)
	}
	return top, step
}

// svgDecimals returns how many decimals print step, a tick step from
// svgNiceAxis, exactly.
func svgDecimals(step float64) int {
	for d := 0; d < 15; d++ {
		x := step * math.Pow(10, float64(d))
		if math.Abs(math.Round(x)-x) < 1e-6*x {
			return d
		}
	}
	return 15
}

func svgRound(v float64, decimals int) float64 {
	p := math.Pow(10, float64(decimals))
	return math.Round(v*p) / p
}

func svgFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// svgPx prints a coordinate to a tenth of a pixel.
func svgPx(v float64) string {
	v = math.Round(v*10)/10 + 0 // + 0 turns -0 into 0
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// svgEsc escapes s for XML text and attribute values alike, replacing
// what XML cannot hold (most control characters, invalid UTF-8) by U+FFFD.
func svgEsc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}

// svgJoin joins the non-empty parts with sep.
func svgJoin(sep string, parts ...string) string {
	var keep []string
	for _, p := range parts {
		if p != "" {
			keep = append(keep, p)
		}
	}
	return strings.Join(keep, sep)
}

// svgTruncate shortens s to at most n runes, ending it with "…" if cut.
func svgTruncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:max(n-1, 0)]) + "…"
}

// svgTextWidth estimates the width of s in pixels at the given font size.
func svgTextWidth(s string, size float64) float64 {
	return float64(utf8.RuneCountInString(s)) * size * svgCharWidth
}

// svgFontToFit is the font size, at most largest and at least 5, at which
// s, a number, fits in width pixels. Digits are wider than svgCharWidth:
// about 0.64 em in the common sans-serif fonts.
func svgFontToFit(s string, width, largest float64) float64 {
	return min(max(width/(0.64*float64(utf8.RuneCountInString(s))), 5), largest)
}

// svgTrimZeros drops the zeros that end a decimal fraction, and then a
// bare point: "0.300" is "0.3", "8.00" is "8".
func svgTrimZeros(s string) string {
	if !strings.Contains(s, ".") {
		return s
	}
	return strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
}

// svgFit is how many runes fit in width pixels at the given font size.
func svgFit(width, size float64) int {
	return int(width / (size * svgCharWidth))
}
