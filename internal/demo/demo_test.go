package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/probe"
	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/uapi"
)

// fakeDaemonEnv, when set to "wireguard-go" in the environment of this test
// binary, makes it act as the ptun daemon (`-f IFNAME`) using wireguard-go:
// a real WireGuard implementation that the testbed's plumbing can be tested
// against before, and independently of, ptun's own daemon.
const fakeDaemonEnv = "PTUN_DEMO_TEST_DAEMON"

func TestMain(m *testing.M) {
	if os.Getenv(fakeDaemonEnv) == "wireguard-go" {
		os.Exit(runWireguardGo(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// testOptions gives each test its own namespace and interface names, so
// tests (and packages) running at the same time do not collide, and a
// wireguard-go stand-in for ptun.
func testOptions(t testing.TB) Options {
	var b [3]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		PtunBinary: exe,
		Env:        []string{fakeDaemonEnv + "=wireguard-go"},
		NamePrefix: "ptun-demotest-" + id,
		IfPrefix:   "pd" + id,
		Duration:   300 * time.Millisecond,
		Logf:       t.Logf,
		// The stand-in speaks WireGuard only; the real binary's test
		// (TestRunDemoRealPtun) runs the remote-access part.
		TunnelOnly: true,
	}
}

// newTestbed creates a testbed that is closed, and checked to leave nothing
// behind, when t ends.
func newTestbed(t *testing.T, opts Options) *Testbed {
	t.Helper()
	tb, err := NewTestbed(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Error(err)
		}
		checkGone(t, tb)
	})
	return tb
}

// checkGone fails t if anything tb made is still there.
func checkGone(t *testing.T, tb *Testbed) {
	t.Helper()
	paths := []string{tb.A.Path(), tb.B.Path()}
	if len(tb.daemons) > 0 { // else the sockets, if any, are not tb's
		paths = append(paths, tb.SockA, tb.SockB)
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left behind (%v)", p, err)
		}
	}
	for _, d := range tb.daemons {
		if !d.Exited() {
			t.Errorf("daemon %s (pid %d) still runs", d.IfName, d.Cmd.Process.Pid)
		}
	}
}

func TestUnderlayPingAndThroughput(t *testing.T) {
	testenv.RequireRoot(t)
	tb := newTestbed(t, testOptions(t))
	for _, a := range []struct {
		name string
		rtt  func() ([]time.Duration, error)
	}{
		{"v4 a->b", func() ([]time.Duration, error) { return Ping(tb.A, tb.UnderlayB.V4, 3) }},
		{"v6 a->b", func() ([]time.Duration, error) { return Ping(tb.A, tb.UnderlayB.V6, 3) }},
		{"v4 b->a", func() ([]time.Duration, error) { return Ping(tb.B, tb.UnderlayA.V4, 3) }},
	} {
		rtts, err := a.rtt()
		if err != nil {
			t.Fatalf("ping %s: %v", a.name, err)
		}
		if len(rtts) != 3 {
			t.Fatalf("ping %s: %d RTTs, want 3", a.name, len(rtts))
		}
		for _, r := range rtts {
			if r <= 0 || r > 2*time.Second {
				t.Fatalf("ping %s: RTT %v out of range", a.name, r)
			}
		}
	}

	// Nothing answers an address no host has: the echoes time out.
	rtts, err := probe.Ping(context.Background(), tb.A, tb.UnderlayB.V4.Next(), 1, 0, 200*time.Millisecond)
	if err == nil || len(rtts) != 0 {
		t.Fatalf("ping to a missing host: %v, %v; want no replies and an error", rtts, err)
	}

	up, err := TCPThroughput(tb.A, tb.B, tb.UnderlayB.V4, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	down, err := TCPThroughput(tb.B, tb.A, tb.UnderlayA.V6, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if up <= 0 || down <= 0 {
		t.Fatalf("throughput up %v, down %v; want > 0", up, down)
	}
	t.Logf("raw link: up %s, down %s", fmtRate(up), fmtRate(down))

	// The underlay addresses exist only in the hosts.
	if _, err := TCPThroughput(tb.A, tb.B, tb.UnderlayA.V4, 100*time.Millisecond); err == nil {
		t.Fatal("B listened on A's address")
	}
}

// fakeBinary writes a shell script standing in for ptun.
func fakeBinary(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fake-ptun")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStartPtunDaemonExits(t *testing.T) {
	testenv.RequireRoot(t)
	opts := testOptions(t)
	opts.PtunBinary = fakeBinary(t, `echo "starting $2" >&2; echo "fatal: cannot open the moon" >&2; exit 3`)
	tb := newTestbed(t, opts)
	err := tb.StartPtun()
	if !errors.Is(err, ErrDaemonExited) {
		t.Fatalf("StartPtun: %v, want ErrDaemonExited", err)
	}
	for _, want := range []string{"fatal: cannot open the moon", "starting " + tb.TunA, "exit status 3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if tb.DaemonError() == nil {
		t.Error("DaemonError is nil after a daemon exited")
	}
}

func TestStartPtunNoSocket(t *testing.T) {
	testenv.RequireRoot(t)
	opts := testOptions(t)
	opts.PtunBinary = fakeBinary(t, `exec sleep 60`)
	opts.StartTimeout = 300 * time.Millisecond
	tb := newTestbed(t, opts)
	start := time.Now()
	err := tb.StartPtun()
	if err == nil || !strings.Contains(err.Error(), "no UAPI socket") {
		t.Fatalf("StartPtun: %v, want a timeout waiting for the socket", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("StartPtun took %v with a 300ms start timeout", el)
	}
	if len(tb.daemons) != 2 {
		t.Fatalf("%d daemons started, want 2", len(tb.daemons))
	}
	// The sleeping stand-ins must be in the hosts, and die with Close
	// (checked by newTestbed's cleanup).
	for i, ns := range []string{tb.A.Path(), tb.B.Path()} {
		if got, want := nsInode(t, "/proc/"+itoa(tb.daemons[i].Cmd.Process.Pid)+"/ns/net"), nsInode(t, ns); got != want {
			t.Errorf("daemon %d runs in namespace %d, want %d", i, got, want)
		}
	}
}

func TestStartPtunRefusesLiveSocket(t *testing.T) {
	testenv.RequireRoot(t)
	opts := testOptions(t)
	first := newTestbed(t, opts)
	if err := first.StartPtun(); err != nil {
		t.Fatal(err)
	}
	second := newTestbed(t, opts) // same interface names, so the same sockets
	err := second.StartPtun()
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second StartPtun with the same sockets: %v, want in use", err)
	}
	if derr := first.DaemonError(); derr != nil {
		t.Fatalf("the first testbed's daemon died: %v", derr)
	}
}

// TestTunnelWithWireguardGo runs the whole testbed with wireguard-go standing
// in for ptun: the daemons start in the hosts, the UAPI configuration makes
// them peers, and ping and TCP go through the tunnel.
func TestTunnelWithWireguardGo(t *testing.T) {
	testenv.RequireRoot(t)
	opts := testOptions(t)
	opts.IPv6Underlay = true
	tb := newTestbed(t, opts)
	if err := tb.StartPtun(); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(context.Background(), tb.A, tb.TunnelB.V4, 1, 0, 5*time.Second); err != nil {
		t.Fatalf("first echo through the tunnel: %v", err)
	}
	for _, c := range []struct {
		name string
		rtt  func() ([]time.Duration, error)
	}{
		{"v4 a->b", func() ([]time.Duration, error) { return Ping(tb.A, tb.TunnelB.V4, 2) }},
		{"v6 a->b", func() ([]time.Duration, error) { return Ping(tb.A, tb.TunnelB.V6, 2) }},
		{"v4 b->a", func() ([]time.Duration, error) { return Ping(tb.B, tb.TunnelA.V4, 2) }},
	} {
		if rtts, err := c.rtt(); err != nil || len(rtts) != 2 {
			t.Fatalf("ping %s through the tunnel: %v, %v", c.name, rtts, err)
		}
	}
	bps, err := TCPThroughput(tb.B, tb.A, tb.TunnelA.V4, 300*time.Millisecond)
	if err != nil || bps <= 0 {
		t.Fatalf("TCP through the tunnel: %v, %v", bps, err)
	}
	t.Logf("tunnel down: %s", fmtRate(bps))

	st, err := uapi.Get(tb.SockA)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].LastHandshake.IsZero() || st.Peers[0].RxBytes == 0 {
		t.Fatalf("A's state after traffic: %+v", st)
	}
	if ep := st.Peers[0].Endpoint.Addr(); ep != tb.UnderlayB.V6 {
		t.Errorf("A's peer endpoint %v, want B's IPv6 underlay address %v", ep, tb.UnderlayB.V6)
	}
	if err := tb.DaemonError(); err != nil {
		t.Fatal(err)
	}
}

// TestRunWithWireguardGo runs the demo end to end with wireguard-go standing
// in for ptun, and checks what it prints.
func TestRunWithWireguardGo(t *testing.T) {
	testenv.RequireRoot(t)
	opts := testOptions(t)
	var out bytes.Buffer
	err := Run(t.Context(), opts, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"handshake: first echo through the tunnel ... answered",
		"raw link  IPv4  198.18.0.2", "tunnel    IPv6  2001:db8:100::2",
		"up (a->b)", "down (b->a)", "tunnel/raw",
		"handshake done", "drops: ",
		"cleaning up", "done",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	checkNothingLeft(t, opts)
}

// TestRunCancel cancels the demo in the middle of its transfers: it must
// return promptly with the context's error and leave nothing behind.
func TestRunCancel(t *testing.T) {
	testenv.RequireRoot(t)
	opts := testOptions(t)
	opts.Duration = time.Minute
	ctx, cancel := context.WithCancel(t.Context())
	w := &signalWriter{trigger: "TCP bulk transfer", fired: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts, w) }()
	select {
	case <-w.fired:
	case err := <-done:
		t.Fatalf("Run ended before its transfers: %v\n%s", err, w.String())
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("no transfer started within 60s:\n%s", w.String())
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of cancel")
	}
	t.Logf("output:\n%s", w.String())
	checkNothingLeft(t, opts)
}

// TestRunDemoRealPtun builds ptun/cmd/ptun and runs the demo with it for 1s
// per transfer.
func TestRunDemoRealPtun(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("builds ptun; skipped in -short mode")
	}
	bin := filepath.Join(t.TempDir(), "ptun")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goTool, "build", "-o", bin, "github.com/ptun-vpn/ptun/cmd/ptun")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ptun/cmd/ptun: %v\n%s", err, out)
	}
	opts := testOptions(t)
	opts.PtunBinary = bin
	opts.Env = nil
	opts.Duration = time.Second
	opts.TunnelOnly = false
	var out bytes.Buffer
	err := Run(ctx, opts, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, opts)
}

// checkNothingLeft fails t if a namespace or socket of opts remains.
func checkNothingLeft(t *testing.T, opts Options) {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), opts.NamePrefix) {
			t.Errorf("namespace %s is left behind", e.Name())
		}
	}
	for _, s := range []string{uapi.SocketPath(opts.IfPrefix + "-a"), uapi.SocketPath(opts.IfPrefix + "-b")} {
		if _, err := os.Lstat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s is left behind", s)
		}
	}
}

// signalWriter collects output and closes fired once trigger was written.
type signalWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	trigger string
	fired   chan struct{}
	once    sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.trigger) {
		w.once.Do(func() { close(w.fired) })
	}
	return len(p), nil
}

func (w *signalWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestFormatting(t *testing.T) {
	if got := median([]time.Duration{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v", got)
	}
	if got := median([]time.Duration{4, 1, 2, 3}); got != 2 {
		t.Errorf("median even = %v", got)
	}
	if got := fmtRate(2.5e9); got != "2.50 Gbit/s" {
		t.Errorf("fmtRate = %q", got)
	}
	if got := fmtRate(25e6); got != "25.0 Mbit/s" {
		t.Errorf("fmtRate = %q", got)
	}
	if got := fmtBytes(3 << 20); got != "3.0 MiB" {
		t.Errorf("fmtBytes = %q", got)
	}
	if got := dropSummary([]metrics.Counter{{Name: "rx_packets", Value: 9}, {Name: "drop_bad_mac", Value: 2}, {Name: "drop_no_route", Value: 0}}); got != "2 (drop_bad_mac=2)" {
		t.Errorf("dropSummary = %q", got)
	}
	if got := dropSummary(nil); got != "none" {
		t.Errorf("dropSummary(nil) = %q", got)
	}
}
