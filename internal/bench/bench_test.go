package bench

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseIperfTCP(t *testing.T) {
	out := `{"start":{},"intervals":[],"end":{"sum_sent":{"bytes":2000000000,"bits_per_second":3.2e9},
		"sum_received":{"bytes":1999000000,"bits_per_second":3.1e9}}}`
	r, err := parseIperf([]byte(out), false)
	if err != nil {
		t.Fatal(err)
	}
	if r.bitsPerSec != 3.1e9 || r.bytes != 1999000000 || r.lossPct != 0 {
		t.Fatalf("got %+v, want the receiver's figures", r)
	}
}

func TestParseIperfUDP(t *testing.T) {
	// As iperf3 3.12 writes it for -u -R (trimmed).
	out := `{"end":{"sum":{"bytes":62468900,"bits_per_second":499664757.9,"lost_packets":17,"packets":48053,"lost_percent":0.035},
		"sum_sent":{"bytes":62468900,"bits_per_second":499664757.9,"lost_packets":0,"packets":48053,"lost_percent":0},
		"sum_received":{"bytes":62446800,"bits_per_second":499504968.8,"lost_packets":17,"packets":48053,"lost_percent":0.035}}}`
	r, err := parseIperf([]byte(out), true)
	if err != nil {
		t.Fatal(err)
	}
	if r.bitsPerSec != 499504968.8 || r.lossPct != 0.035 {
		t.Fatalf("got %+v, want the receiver's rate and loss", r)
	}
	// Before 3.11, UDP results were in "sum" only.
	old := `{"end":{"sum":{"bytes":100,"bits_per_second":8e8,"lost_percent":12.5}}}`
	if r, err := parseIperf([]byte(old), true); err != nil || r.lossPct != 12.5 || r.bitsPerSec != 8e8 {
		t.Fatalf("old format: %+v, %v", r, err)
	}
}

func TestParseIperfErrors(t *testing.T) {
	for _, tc := range []struct{ name, out, want string }{
		{"iperf3 error", `{"start":{},"error":"unable to connect to server: Connection refused"}`, "Connection refused"},
		{"not JSON", `iperf3: error - unable to connect`, "not JSON"},
		{"no receiver", `{"end":{}}`, "no receiver summary"},
		{"tcp sum only", `{"end":{"sum":{"bytes":1,"bits_per_second":1}}}`, "no receiver summary"},
		{"bad loss", `{"end":{"sum_received":{"bytes":1,"bits_per_second":1,"lost_percent":140}}}`, "no receiver summary"},
	} {
		_, err := parseIperf([]byte(tc.out), false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

func TestIperfArgs(t *testing.T) {
	dst := netip.MustParseAddr("100.64.1.2")
	got := strings.Join(iperfTest{duration: 1500 * time.Millisecond, reverse: true, streams: 4}.args(dst), " ")
	want := "-c 100.64.1.2 -p 5201 -t 2 -J --connect-timeout 3000 -R -P 4"
	if got != want {
		t.Errorf("TCP args %q, want %q", got, want)
	}
	got = strings.Join(iperfTest{duration: 5 * time.Second, udp: true, rate: 500e6, size: 1300, streams: 1}.args(dst), " ")
	want = "-c 100.64.1.2 -p 5201 -t 5 -J --connect-timeout 3000 -u -b 500000000 -l 1300"
	if got != want {
		t.Errorf("UDP args %q, want %q", got, want)
	}
}

func TestParseProcStat(t *testing.T) {
	// A command name may hold spaces and parentheses.
	line := "4242 (we (i) rd) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 12345 1000000 500 18446744073709551615"
	st, err := parseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != 17 || st.cpuTicks != 325 {
		t.Fatalf("got %+v, want ppid 17 and 250+75 ticks", st)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2 3", "1 (x) S p 1 1 0 -1 0 0 0 0 0 a b"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
	self, err := readProcStat(os.Getpid())
	if err != nil || self.ppid != os.Getppid() {
		t.Fatalf("own stat: %+v, %v; want ppid %d", self, err, os.Getppid())
	}
}

func TestParseMemory(t *testing.T) {
	status := "Name:\tptun\nVmPeak:\t  900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\nRssAnon:\t 50 kB\nRssFile:\t 40 kB\nRssShmem:\t 10 kB\n"
	if m, err := parseMemory([]byte(status)); err != nil || m.peak != 12345<<10 || m.shared != 50<<10 {
		t.Fatalf("parseMemory = %+v, %v", m, err)
	}
	if _, err := parseMemory([]byte("VmHWM: lots\n")); err == nil {
		t.Fatal("accepted a malformed VmHWM")
	}
	if _, err := parseMemory([]byte("RssFile: 3 kB\n")); err == nil {
		t.Fatal("accepted a status without VmHWM")
	}
	if m, err := processMemory(os.Getpid()); err != nil || m.peak < 1<<20 || m.shared == 0 {
		t.Fatalf("processMemory(self) = %+v, %v", m, err)
	}
}

// TestEndpointPeak: a front and its engine (one executable) count their
// shared pages once; different programs, or one process, are summed.
func TestEndpointPeak(t *testing.T) {
	front := memory{peak: 8 << 20, shared: 6 << 20}
	engine := memory{peak: 30 << 20, shared: 7 << 20}
	if got, want := endpointPeak([]memory{front, engine}, true), uint64((8-6)+(30-7)+7)<<20; got != want {
		t.Errorf("same executable: %d MiB, want %d MiB", got>>20, want>>20)
	}
	if got := endpointPeak([]memory{front, engine}, false); got != 38<<20 {
		t.Errorf("different executables: %d MiB, want 38", got>>20)
	}
	if got := endpointPeak([]memory{engine}, true); got != 30<<20 {
		t.Errorf("one process: %d MiB, want its VmHWM 30", got>>20)
	}
}

// TestTunnelProcesses finds a process by the interface name in its
// arguments, with its child, and not an unrelated process.
func TestTunnelProcesses(t *testing.T) {
	dev, ino, err := nsID("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	start := func(args ...string) *exec.Cmd {
		cmd := exec.Command("sh", args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	// "sleep 30; true" makes sh fork sleep rather than exec it.
	parent := start("-c", "sleep 30; true", "pbtestif0c")
	other := start("-c", "sleep 30; true", "pbtestif0s")
	var pids []int
	for range 100 { // until sh has forked sleep
		if pids, err = tunnelProcesses(dev, ino, "pbtestif0c"); err != nil {
			t.Fatal(err)
		}
		if len(pids) == 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(pids) != 2 || !slices.Contains(pids, parent.Process.Pid) || slices.Contains(pids, other.Process.Pid) {
		t.Fatalf("found %v; want sh %d and its child, not %d", pids, parent.Process.Pid, other.Process.Pid)
	}
	if pids, _ := tunnelProcesses(dev, ino+1, "pbtestif0c"); len(pids) != 0 {
		t.Fatalf("found %v in another namespace", pids)
	}
	if cpu := cpuSeconds(pids); cpu < 0 || cpu > 5 {
		t.Fatalf("cpuSeconds = %v for two sleeping processes", cpu)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"fraction of a second", Options{Duration: 1500 * time.Millisecond}, "whole seconds"},
		{"zero rounds", Options{Rounds: -1}, "rounds"},
		{"one stream", Options{Streams: 1}, "streams"},
		{"big datagrams", Options{UDPSize: 1400}, "UDP size"},
		{"unknown mode", Options{PtunModes: []string{"ptun-turbo"}}, `unknown ptun mode "ptun-turbo"`},
		{"duplicate", Options{Peers: []Peer{{"a", []string{"x"}}, {"a", []string{"y"}}}}, `"a" given twice`},
		{"peer named raw", Options{Peers: []Peer{{"raw", []string{"x"}}}}, `"raw" given twice`},
		{"no command", Options{Peers: []Peer{{"a", nil}}}, "needs a name and a command"},
	} {
		o := tc.o
		if err := o.setDefaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	var o Options
	if err := o.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if o.Rounds != 3 || o.Duration != 5*time.Second || o.Streams != 4 || o.UDPRate != 500e6 || o.UDPSize != 1300 ||
		!slices.Equal(o.PtunModes, []string{"ptun"}) {
		t.Fatalf("defaults: %+v", o)
	}
}

// sampleResult is a hand-made result of three candidates over three rounds.
func sampleResult() *Result {
	r := &Result{
		Date:     time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC),
		Command:  "ptun bench --peer wireguard-go=wireguard",
		Machine:  Machine{Kernel: "Linux 6.1", CPUModel: "Test CPU", CPUs: 2, MemGiB: 24, GoVersion: "go1.26", Iperf3: "iperf 3.12"},
		Settings: Settings{Rounds: 3, DurationS: 5, Streams: 4, UDPRateMbit: 500, UDPSize: 1300, TunnelMTU: 1420, UnderlayMTU: 1500},
		Candidates: []CandidateResult{
			{Name: "raw", Kind: KindRaw},
			{Name: "ptun", Kind: KindPtun},
			{Name: "wireguard-go", Kind: KindPeer},
		},
	}
	vals := map[string]map[Metric][]float64{
		"raw":          {TCPUp: {12, 13, 14}, TCPDown: {13, 13, 13}, RTTIdle: {0.05, 0.04, 0.06}, UDPUp: {0.5, 0.5, 0.5}, UDPUpLoss: {0, 0, 0}},
		"ptun":         {TCPUp: {3, 2.5, 2.8}, TCPDown: {3, 3.1, 2.9}, RTTIdle: {0.2, 0.3, 0.25}, UDPUp: {0.49, 0.5, 0.5}, UDPUpLoss: {1, 0, 0.5}, CPUUp: {1, 1.2, 1.1}, RSS: {20}},
		"wireguard-go": {TCPUp: {1.4, 1.3, 1.5}, TCPDown: {1.5, 1.6, 1.55}, RTTIdle: {1, 2, 1.5}, UDPUp: {0.2, 0.15, 0.17}, UDPUpLoss: {60, 70, 66}, CPUUp: {3, 3.3, 2.2}, RSS: {40}},
	}
	for i := range r.Candidates {
		c := &r.Candidates[i]
		for m, s := range vals[c.Name] {
			for _, v := range s {
				c.add(m, v)
			}
		}
	}
	r.Summarize()
	return r
}

func TestSummarize(t *testing.T) {
	r := sampleResult()
	p := r.Candidate("ptun").Summary[TCPUp]
	if p.N != 3 || p.Median != 2.8 || p.Min != 2.5 || p.Max != 3 {
		t.Fatalf("ptun TCP up summary %+v", p)
	}
	if p.VsRaw == nil || fmt.Sprintf("%.4f", *p.VsRaw) != fmt.Sprintf("%.4f", 2.8/13) {
		t.Fatalf("github.com/ptun-vpn/ptun/raw = %v, want %v", p.VsRaw, 2.8/13)
	}
	if p.VsFirstPeer == nil || fmt.Sprintf("%.4f", *p.VsFirstPeer) != fmt.Sprintf("%.4f", 2.8/1.4) {
		t.Fatalf("github.com/ptun-vpn/ptun/wireguard-go = %v, want 2", p.VsFirstPeer)
	}
	if s := r.Candidate("raw").Summary[TCPUp]; s.VsRaw != nil {
		t.Fatal("raw has a ratio to itself")
	}
	if s := r.Candidate("ptun").Summary[CPUUp]; s.VsRaw != nil || s.VsFirstPeer == nil {
		t.Fatalf("CPU ratios %+v: want none to raw (it has no CPU figure) and one to the peer", s)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Fatalf("median even = %v", got)
	}
	var c CandidateResult
	c.add(TCPUp, 1)
	c.add(TCPUp, mathNaN())
	if len(c.Samples[TCPUp]) != 1 {
		t.Fatal("a NaN sample was recorded")
	}
}

func mathNaN() float64 { zero := 0.0; return zero / zero }

func TestWriteTable(t *testing.T) {
	r := sampleResult()
	r.Candidates[2].Errors = []string{"round 2, TCP down: iperf3: connection reset"}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"2026-11-23 12:00 UTC", "2 CPUs (Test CPU)", "3 rounds, 5s per test",
		"raw", "ptun", "wireguard-go",
		"TCP up (Gbit/s)", "2.80 (2.50-3.00)", "13.0 (12.0-14.0)",
		"UDP up @500M (Gbit/s)", "ptun / raw", "ptun / wireguard-go", "2.00x", "0.22x",
		"peak RSS (MiB)", "20.0",
		"wireguard-go: round 2, TCP down: iperf3: connection reset",
		"command: ptun bench --peer wireguard-go=wireguard",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "TCP up, 4 streams") {
		t.Errorf("table shows a metric nobody measured:\n%s", out)
	}
}

func TestFmtValue(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 0.0421: "0.042", 2.654: "2.65", 12.61: "12.6", 412.4: "412"} {
		if got := fmtValue(v); got != want {
			t.Errorf("fmtValue(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestNoRatioOfLossShares(t *testing.T) {
	s := sampleResult().Candidate("ptun").Summary[UDPUpLoss]
	if s.VsRaw != nil || s.VsFirstPeer != nil {
		t.Fatalf("loss summary has ratios: %+v", s)
	}
}

// TestDescendants finds a process's children and grandchildren, and not
// its parent.
func TestDescendants(t *testing.T) {
	// sh forks sh, which forks sleep ("; true" keeps each from exec'ing).
	cmd := exec.Command("sh", "-c", "sh -c 'sleep 30; true'; true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var pids []int
	for range 100 {
		children, _, err := processTree()
		if err != nil {
			t.Fatal(err)
		}
		if pids = descendants(children, cmd.Process.Pid); len(pids) == 3 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(pids) != 3 || !slices.Contains(pids, cmd.Process.Pid) || slices.Contains(pids, os.Getpid()) {
		t.Fatalf("descendants %v of %d, want it, its child and grandchild", pids, cmd.Process.Pid)
	}
}

func TestServerArgs(t *testing.T) {
	got := strings.Join(serverArgs(netip.MustParseAddr("100.64.3.1")), " ")
	if got != "-s -1 --forceflush -p 5201 -B 100.64.3.1" {
		t.Errorf("iperf3 server args %q", got)
	}
}
