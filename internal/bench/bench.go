// Package bench is `ptun bench`: it builds two namespaced hosts joined by
// a veth underlay, runs every candidate tunnel between them side by side
// (the raw underlay, ptun in each mode asked for, and any peer
// implementation with wireguard-go's command contract, and OpenConnect
// servers and clients: ocserv and ptun's gateway with Debian's
// openconnect), and measures each
// in every direction with iperf3 and ping: TCP up and down with one and N
// streams, UDP up and down at an offered rate, round-trip time idle and
// during a download, CPU seconds per gigabyte and peak memory. Rounds are
// interleaved (A B C A B C ...) so that a noisy machine hurts every
// candidate alike; the report gives medians, min-max and ratios, as a
// table, JSON and an SVG chart.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/ptun-vpn/ptun/internal/demo"
	"github.com/ptun-vpn/ptun/internal/probe"
)

// Peer is another tunnel implementation to measure. Argv, followed by an
// interface name, must create that interface and serve its UAPI socket in
// /var/run/wireguard, as `wireguard-go IFNAME` does.
type Peer struct {
	Name string
	Argv []string
}

// Mode is one way of running ptun: the environment it gets.
type Mode struct {
	Name string
	Env  []string
}

// Modes lists ptun's modes, the first being the default.
var Modes = []Mode{
	{"ptun", nil},
	{"ptun-no-offload", []string{"PTUN_DISABLE_TUN_OFFLOAD=1", "PTUN_DISABLE_UDP_GSO=1", "PTUN_DISABLE_UDP_GRO=1"}},
	// The front/engine IPC modes (package internal/ipc); "ptun" is ptun-fd.
	{"ptun-inproc", []string{"PTUN_IPC=inproc"}},
	{"ptun-fd", []string{"PTUN_IPC=fd"}},
	{"ptun-shm", []string{"PTUN_IPC=shm"}},
	{"ptun-seqpacket", []string{"PTUN_IPC=seqpacket"}},
}

// Options configures Run. The zero value gives the defaults.
type Options struct {
	Rounds   int           // interleaved rounds (default 3)
	Duration time.Duration // of each throughput test, whole seconds (default 5s)
	Streams  int           // for the N-stream TCP tests (default 4)
	UDPRate  float64       // offered UDP bits/s (default 500e6)
	UDPSize  int           // UDP payload bytes (default 1300)

	// PtunModes names the ptun modes to measure (see Modes); nil means
	// the default mode only, and an empty non-nil slice none.
	PtunModes []string
	// PtunBinary is the ptun executable; empty means this process's own.
	PtunBinary string
	Peers      []Peer
	// OpenConnect names the OpenConnect candidates to measure (see
	// OpenConnectCandidates); none by default.
	OpenConnect []string

	// Command is recorded in the result, to say how it was produced.
	Command string

	// Progress, if not nil, receives a line per step as the run goes.
	Progress io.Writer
}

func (o *Options) setDefaults() error {
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
	}
	if o.Streams == 0 {
		o.Streams = 4
	}
	if o.UDPRate == 0 {
		o.UDPRate = 500e6
	}
	if o.UDPSize == 0 {
		o.UDPSize = 1300
	}
	if o.PtunModes == nil {
		o.PtunModes = []string{Modes[0].Name}
	}
	switch {
	case o.Rounds < 1 || o.Rounds > 100:
		return fmt.Errorf("bench: rounds %d out of range (1-100)", o.Rounds)
	case o.Duration < time.Second || o.Duration > time.Hour || o.Duration%time.Second != 0:
		return fmt.Errorf("bench: duration %v must be whole seconds, from 1s to 1h", o.Duration)
	case o.Streams < 2 || o.Streams > 128:
		return fmt.Errorf("bench: streams %d out of range (2-128)", o.Streams)
	case o.UDPRate < 1e6 || o.UDPRate > 100e9:
		return fmt.Errorf("bench: UDP rate %.0f bit/s out of range (1M-100G)", o.UDPRate)
	case o.UDPSize < 64 || o.UDPSize > tunnelMTU-48:
		return fmt.Errorf("bench: UDP size %d out of range (64-%d, to fit the tunnel MTU)", o.UDPSize, tunnelMTU-48)
	}
	names := map[string]bool{"raw": true}
	for _, m := range o.PtunModes {
		if modeByName(m) == nil {
			return fmt.Errorf("bench: unknown ptun mode %q (known: %s)", m, strings.Join(ModeNames(), ", "))
		}
		if names[m] {
			return fmt.Errorf("bench: candidate %q given twice", m)
		}
		names[m] = true
	}
	for _, p := range o.Peers {
		if p.Name == "" || len(p.Argv) == 0 {
			return fmt.Errorf("bench: peer %q needs a name and a command", p.Name)
		}
		if names[p.Name] {
			return fmt.Errorf("bench: candidate %q given twice", p.Name)
		}
		names[p.Name] = true
	}
	for _, n := range o.OpenConnect {
		if openConnectByName(n) == nil {
			return fmt.Errorf("bench: unknown OpenConnect candidate %q (known: %s)", n, strings.Join(OpenConnectNames(), ", "))
		}
		if names[n] {
			return fmt.Errorf("bench: candidate %q given twice", n)
		}
		names[n] = true
	}
	if len(names) > 60 {
		return errors.New("bench: too many candidates (at most 60)")
	}
	return nil
}

func modeByName(name string) *Mode {
	for i := range Modes {
		if Modes[i].Name == name {
			return &Modes[i]
		}
	}
	return nil
}

// ModeNames lists the names of Modes, in order.
func ModeNames() []string {
	var n []string
	for _, m := range Modes {
		n = append(n, m.Name)
	}
	return n
}

// stepsPerRound is the number of measurements of each candidate in a round.
const stepsPerRound = 7

// Run measures every candidate and returns the summarized result. It needs
// root. Whatever it creates (namespaces, interfaces, processes, sockets) is
// removed before it returns, also when it fails or ctx is cancelled (the
// caller wires SIGINT and SIGTERM to ctx). A candidate that fails is
// recorded with its errors and the others go on.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench: must run as root (network namespaces and TUN devices need it)")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, ErrNoIperf3
	}
	if opts.PtunBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("bench: finding the ptun binary: %w", err)
		}
		opts.PtunBinary = exe
	}
	for _, p := range opts.Peers {
		if _, err := exec.LookPath(p.Argv[0]); err != nil {
			return nil, fmt.Errorf("bench: peer %s: %w", p.Name, err)
		}
	}
	for _, n := range opts.OpenConnect {
		if err := openConnectByName(n).checkTools(); err != nil {
			return nil, err
		}
	}

	start := time.Now()
	res := &Result{
		Date:    start.UTC(),
		Command: opts.Command,
		Machine: describeMachine(),
		Settings: Settings{
			Rounds: opts.Rounds, DurationS: opts.Duration.Seconds(), Streams: opts.Streams,
			UDPRateMbit: opts.UDPRate / 1e6, UDPSize: opts.UDPSize,
			TunnelMTU: tunnelMTU, UnderlayMTU: underlayMTU,
		},
	}
	res.Candidates = append(res.Candidates, CandidateResult{Name: "raw", Kind: KindRaw})
	for _, m := range opts.PtunModes {
		mode := modeByName(m)
		res.Candidates = append(res.Candidates, CandidateResult{Name: m, Kind: KindPtun,
			Command: commandString([]string{opts.PtunBinary}, mode.Env), Env: mode.Env})
	}
	for _, p := range opts.Peers {
		res.Candidates = append(res.Candidates, CandidateResult{Name: p.Name, Kind: KindPeer,
			Command: commandString(p.Argv, nil)})
	}
	for _, n := range opts.OpenConnect {
		oc := openConnectByName(n)
		res.Candidates = append(res.Candidates, CandidateResult{Name: n, Kind: KindOpenConnect,
			Versus: oc.Versus, Notes: []string{oc.describe()}})
	}
	var cands []*candidate
	for i := range res.Candidates {
		c := &candidate{res: &res.Candidates[i], index: i}
		switch c.res.Kind {
		case KindPtun:
			c.argv, c.env = []string{opts.PtunBinary}, modeByName(c.res.Name).Env
		case KindPeer:
			c.argv = opts.Peers[i-1-len(opts.PtunModes)].Argv
		case KindOpenConnect:
			c.oc, c.ptunBinary = openConnectByName(c.res.Name), opts.PtunBinary
		}
		cands = append(cands, c)
	}

	pr := &progress{w: opts.Progress, start: start, total: opts.Rounds * len(cands) * stepsPerRound}
	var id [2]byte
	rand.Read(id[:])
	tag := hex.EncodeToString(id[:])
	pr.printf("ptun bench: %d candidates (%s), %d rounds of %d tests each, %v per throughput test\n",
		len(cands), candidateNames(res), opts.Rounds, stepsPerRound, opts.Duration)
	tb, err := demo.NewTestbed(demo.Options{NamePrefix: "ptun-bench-" + tag, IfPrefix: "pb" + tag})
	if err != nil {
		return nil, err
	}
	pr.printf("hosts %s (client) and %s (server), veth underlay %s <-> %s, MTU %d\n",
		tb.A.Name, tb.B.Name, tb.UnderlayA.V4, tb.UnderlayB.V4, underlayMTU)
	defer func() {
		pr.printf("cleaning up: stopping the tunnels, deleting the hosts\n")
		for _, c := range cands {
			c.stop()
		}
		tb.Close()
	}()

	for _, c := range cands {
		if c.isRaw() {
			c.start(ctx, tb, "") // only picks the underlay's addresses
			continue
		}
		if c.oc != nil {
			pr.printf("starting %s: %s ... ", c.res.Name, c.oc.describe())
		} else {
			pr.printf("starting %s: %s IFNAME in each host ... ", c.res.Name, strings.Join(c.argv, " "))
		}
		err := c.start(ctx, tb, "pb"+tag)
		if c.tunnel != nil {
			c.res.Command = c.tunnel.command()
			if err == nil {
				c.res.Notes = c.tunnel.notes()
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			pr.printf("failed: %v\n", err)
			c.setDead(fmt.Errorf("start: %w", err))
			c.res.Errors = append(c.res.Errors, c.dead.Error())
			continue
		}
		pr.printf("ok, %s <-> %s, pids %v %v\n", c.client, c.server, c.pids[0], c.pids[1])
	}

	m := &measurer{tb: tb, opts: opts, pr: pr, ifPrefix: "pb" + tag}
	for round := 1; round <= opts.Rounds; round++ {
		for _, c := range cands {
			if err := m.round(ctx, c, round); err != nil {
				return nil, err
			}
		}
	}
	for _, c := range cands {
		if c.isRaw() || c.failed() != nil {
			continue
		}
		c.refreshPIDs()
		if rss, ends, err := c.peakRSSMiB(); err != nil {
			c.res.Errors = append(c.res.Errors, err.Error())
		} else {
			rss, ends = c.keepPeak(rss, ends)
			c.res.add(RSS, rss)
			if c.oc != nil {
				c.res.add(RSSServer, ends[1].mib)
				c.res.Notes = append(c.res.Notes, c.coresNotes()...)
				c.res.Notes = append(c.res.Notes, fmt.Sprintf("peak RSS: client %.1f MiB (largest process %s %.1f), server %.1f MiB (largest %s %.1f)",
					ends[0].mib, ends[0].largest, ends[0].largestMiB, ends[1].mib, ends[1].largest, ends[1].largestMiB))
			}
		}
	}
	res.Elapsed = time.Since(start).Seconds()
	res.Summarize()
	return res, nil
}

func candidateNames(r *Result) string {
	var n []string
	for _, c := range r.Candidates {
		n = append(n, c.Name)
	}
	return strings.Join(n, ", ")
}

// measurer runs the tests of one round on one candidate.
type measurer struct {
	tb       *demo.Testbed
	opts     Options
	pr       *progress
	ifPrefix string // what the candidates' interfaces are named from
}

// idleEchoes and echoInterval define the idle RTT probe: 15 echoes 100ms
// apart, long enough apart that the tunnel is idle between them.
const (
	idleEchoes   = 15
	echoInterval = 100 * time.Millisecond
)

// benchTest is one of a round's throughput tests and the metrics it gives.
type benchTest struct {
	name   string
	t      iperfTest
	metric Metric
	loss   Metric
	cpu    Metric
	cpuSrv Metric // the server end's alone, for OpenConnect candidates
	loaded bool   // RTT under load is measured during it
}

// round runs every test once on c, recording samples and errors in c.res.
// It returns an error only when ctx is cancelled.
func (m *measurer) round(ctx context.Context, c *candidate, round int) error {
	label := fmt.Sprintf("round %d/%d  %-16s", round, m.opts.Rounds, c.res.Name)
	note := func(test string, err error) {
		c.res.Errors = append(c.res.Errors, fmt.Sprintf("round %d, %s: %v", round, test, err))
		m.pr.printf("failed: %v\n", err)
	}
	d := m.opts.Duration
	tests := []benchTest{
		{name: "TCP up", t: iperfTest{duration: d}, metric: TCPUp, cpu: CPUUp, cpuSrv: CPUUpServer},
		{name: "TCP down", t: iperfTest{duration: d, reverse: true}, metric: TCPDown, cpu: CPUDown, cpuSrv: CPUDownServer, loaded: true},
		{name: fmt.Sprintf("TCP up x%d", m.opts.Streams), t: iperfTest{duration: d, streams: m.opts.Streams}, metric: TCPUpMulti},
		{name: fmt.Sprintf("TCP down x%d", m.opts.Streams), t: iperfTest{duration: d, streams: m.opts.Streams, reverse: true}, metric: TCPDownMulti},
		{name: "UDP up", t: iperfTest{duration: d, udp: true, rate: m.opts.UDPRate, size: m.opts.UDPSize}, metric: UDPUp, loss: UDPUpLoss},
		{name: "UDP down", t: iperfTest{duration: d, udp: true, rate: m.opts.UDPRate, size: m.opts.UDPSize, reverse: true}, metric: UDPDown, loss: UDPDownLoss},
	}

	m.pr.step(label, "RTT idle")
	if err := c.failed(); err != nil {
		m.pr.printf("skipped (%v)\n", firstLine(err))
		m.pr.skip(len(tests))
		return ctx.Err()
	}
	c.checkPath(fmt.Sprintf("before round %d", round))
	rtts, err := probe.Ping(ctx, m.tb.A, c.server, idleEchoes, echoInterval, time.Second)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(rtts) > 0 {
		c.res.add(RTTIdle, ms(medianDuration(rtts)))
		m.pr.printf("%.3f ms median of %d\n", ms(medianDuration(rtts)), len(rtts))
	} else {
		note("RTT idle", err)
	}

	for _, t := range tests {
		m.pr.step(label, t.name)
		if err := c.failed(); err != nil {
			m.pr.printf("skipped (%v)\n", firstLine(err))
			continue
		}
		err := m.test(ctx, c, round, t)
		if err != nil && ctx.Err() == nil && c.oc != nil && c.failed() == nil {
			// An OpenConnect tunnel whose processes live on but that
			// failed a test (openconnect over CSTP on a loaded machine
			// can queue gigabytes and stall the next test) is started
			// anew and the test run once more, saying so. One that died
			// stays dead.
			note(t.name, err)
			m.pr.total++
			m.pr.step(label, t.name+" (again)")
			if rerr := m.restart(ctx, c); rerr != nil {
				err = fmt.Errorf("restarting the tunnel: %w", rerr)
			} else if err = m.test(ctx, c, round, t); err == nil {
				c.res.Notes = append(c.res.Notes, fmt.Sprintf("round %d, %s: measured again after the tunnel was restarted", round, t.name))
				continue
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			note(t.name, err)
		}
	}
	c.checkPath(fmt.Sprintf("round %d", round))
	return nil
}

// test runs t once on c and records its samples in c.res; it returns why
// the test gave none.
func (m *measurer) test(ctx context.Context, c *candidate, round int, t benchTest) error {
	d := m.opts.Duration
	var loadedRTTs chan []time.Duration
	pingCtx, stopPing := context.WithCancel(ctx)
	defer stopPing()
	if t.loaded {
		// Echoes from a while into the download (past TCP's slow start)
		// until shortly before its end.
		wait, margin := min(time.Second, d/4), min(500*time.Millisecond, d/4)
		n := max(2, int((d-wait-margin)/echoInterval))
		loadedRTTs = make(chan []time.Duration, 1)
		go func() {
			select {
			case <-pingCtx.Done():
				loadedRTTs <- nil
				return
			case <-time.After(wait):
			}
			r, _ := probe.Ping(pingCtx, m.tb.A, c.server, n, echoInterval, time.Second)
			loadedRTTs <- r
		}()
	}
	c.refreshPIDs()
	pids := c.allPIDs()
	cpu0, srv0 := cpuSeconds(pids), cpuSeconds(c.pids[1])
	var ticks0 map[int]uint64
	if c.oc != nil && t.cpu != "" {
		ticks0 = processTicks(pids)
	}
	began := time.Now()
	r, err := runIperf(ctx, m.tb.A, m.tb.B, c.server, t.t)
	cpu, srvCPU := cpuSeconds(pids)-cpu0, cpuSeconds(c.pids[1])-srv0
	if ticks0 != nil && err == nil {
		c.noteCores(t.name, ticks0, processTicks(pids), time.Since(began))
	}
	if c.oc != nil {
		c.settle(ctx, t.name, round, settleLimit)
	}
	var loaded []time.Duration
	if loadedRTTs != nil {
		// An echo sent during the download may come back just after it:
		// give the last one its time.
		select {
		case loaded = <-loadedRTTs:
		case <-time.After(time.Second):
			stopPing()
			loaded = <-loadedRTTs
		}
	}
	stopPing()
	if err != nil {
		if ferr := c.failed(); ferr != nil {
			err = ferr
		}
		return err
	}
	c.res.add(t.metric, r.bitsPerSec/1e9)
	m.pr.printf("%.3f Gbit/s", r.bitsPerSec/1e9)
	if t.loss != "" {
		c.res.add(t.loss, r.lossPct)
		m.pr.printf(", %.2f%% lost", r.lossPct)
	}
	if t.cpu != "" && !c.isRaw() && r.bytes > 0 {
		c.res.add(t.cpu, cpu/(r.bytes/1e9))
		m.pr.printf(", %.2f CPU s/GB", cpu/(r.bytes/1e9))
		if c.oc != nil {
			c.res.add(t.cpuSrv, srvCPU/(r.bytes/1e9))
			m.pr.printf(" (server %.2f)", srvCPU/(r.bytes/1e9))
		}
	}
	if t.loaded {
		if len(loaded) > 0 {
			c.res.add(RTTLoaded, ms(medianDuration(loaded)))
			m.pr.printf(", RTT %.3f ms median of %d", ms(medianDuration(loaded)), len(loaded))
		} else {
			c.res.Errors = append(c.res.Errors, fmt.Sprintf("round %d, RTT under load: no echo answered", round))
			m.pr.printf(", RTT: no echo answered")
		}
	}
	m.pr.printf("\n")
	return nil
}

// restart stops an OpenConnect candidate's tunnel and starts it again,
// keeping the peak memory its processes had reached.
func (m *measurer) restart(ctx context.Context, c *candidate) error {
	c.refreshPIDs()
	if rss, ends, err := c.peakRSSMiB(); err == nil {
		c.keepPeak(rss, ends)
	}
	if err := c.stop(); err != nil {
		m.pr.printf("stopping: %v; ", err)
	}
	c.tunnel, c.roots, c.pids = nil, [2]int{}, [2][]int{}
	if err := c.start(ctx, m.tb, m.ifPrefix); err != nil {
		c.setDead(fmt.Errorf("restart: %w", err))
		return err
	}
	m.pr.printf("restarted, ")
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func medianDuration(ds []time.Duration) time.Duration {
	f := make([]float64, len(ds))
	for i, d := range ds {
		f[i] = float64(d)
	}
	return time.Duration(median(f))
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// progress prints numbered steps with the elapsed time and an estimate of
// what remains.
type progress struct {
	w     io.Writer
	start time.Time
	total int
	done  int
}

func (p *progress) printf(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, format, args...)
	}
}

// step starts a numbered progress line; the caller ends it.
func (p *progress) step(label, test string) {
	p.done++
	elapsed := time.Since(p.start)
	eta := ""
	if p.done > 1 {
		left := time.Duration(float64(elapsed) / float64(p.done-1) * float64(p.total-p.done+1))
		eta = fmt.Sprintf(", ~%s left", fmtClock(left))
	}
	p.printf("[%*d/%d %s%s] %s %-13s ", len(fmt.Sprint(p.total)), p.done, p.total, fmtClock(elapsed), eta, label, test)
}

// skip counts n steps as done without printing them.
func (p *progress) skip(n int) { p.done += n }

func fmtClock(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}
