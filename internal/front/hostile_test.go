package front

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// The hostile-engine suite: the real supervisor, in this test process,
// runs engines that are this test binary re-executed as an attacker would
// write an engine (hostileEngine below). Each test drives one attack and
// checks the front's state after: its descriptors, goroutines, grants, log,
// and what it replays into the next engine.

const (
	envEngine = "PTUN_FRONT_TEST_ENGINE" // the behaviour of a test engine
	envDir    = "PTUN_FRONT_TEST_DIR"    // where it reports what it saw
)

func TestMain(m *testing.M) {
	if b := os.Getenv(envEngine); b != "" {
		os.Exit(hostileEngine(b, os.Getenv(envDir)))
	}
	os.Exit(m.Run())
}

// hostileEngine is the engine process: it serves the control channel on
// descriptor 3 with the behaviour b.
func hostileEngine(b, dir string) int {
	report := func(name string, v any) {
		body, _ := json.Marshal(v)
		tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d", name, os.Getpid()))
		os.WriteFile(tmp, body, 0o600)
		os.Rename(tmp, filepath.Join(dir, name))
	}
	var conn *ctl.Conn
	hang := make(chan struct{}) // never closed
	setupDone := make(chan struct{}, 1)
	handler := func(req *ctl.Msg) *ctl.Msg {
		switch req.Op {
		case ctl.OpSetup:
			setupDone <- struct{}{}
			return nil
		case ctl.OpPing:
			if b == "hang" {
				<-hang
			}
			return nil
		case ctl.OpSet:
			var cfg wgcfg.DeviceConfig
			if err := ctl.Decode(req.Body, &cfg); err != nil {
				return ctl.Fail(err)
			}
			report(fmt.Sprintf("set.%d", os.Getpid()), &cfg)
			return nil
		case ctl.OpGet:
			// The liar: another private key, a peer nobody configured with
			// every address, the configured peer roamed and given 0/0.
			st := wgcfg.DeviceState{PrivateKey: noise.PrivateKey{0x66}, ListenPort: 1}
			st.Peers = append(st.Peers,
				wgcfg.PeerState{PublicKey: key(66), AllowedIPs: []netip.Prefix{pfx("0.0.0.0/0"), pfx("::/0")},
					Endpoint: netip.MustParseAddrPort("198.18.9.9:9")},
				wgcfg.PeerState{PublicKey: key(1), AllowedIPs: []netip.Prefix{pfx("0.0.0.0/0")},
					Endpoint: netip.MustParseAddrPort("198.18.0.3:40000"), TxBytes: 5})
			return &ctl.Msg{Body: ctl.Body(st)}
		case ctl.OpEndpoints:
			// The same lies, as changes: the peer nobody configured, and
			// the configured peer roamed.
			return &ctl.Msg{Body: ctl.Body(wgcfg.EndpointChanges{Gen: 7, Peers: []wgcfg.PeerEndpoint{
				{PublicKey: key(66), Endpoint: netip.MustParseAddrPort("198.18.9.9:9")},
				{PublicKey: key(1), Endpoint: netip.MustParseAddrPort("198.18.0.3:40000")},
			}})}
		case ctl.OpStats:
			return &ctl.Msg{Body: ctl.Body([]metrics.Counter{{Name: "drop_bad_mac", Value: 3}, {Name: "x\nerrno=0", Value: 1}})}
		}
		return ctl.Fail(syscall.EOPNOTSUPP)
	}
	rawFD, err := syscall.Dup(3) // the channel itself, for writing what is not a frame
	if err != nil {
		return 1
	}
	raw := os.NewFile(uintptr(rawFD), "ctl-raw")
	c, err := ctl.FromFile(os.NewFile(3, "ctl"), handler)
	if err != nil {
		return 1
	}
	conn = c
	go func() {
		<-setupDone
		time.Sleep(10 * time.Millisecond) // the setup reply first
		switch b {
		case "flood":
			report("flood", flood(conn))
		case "garbage":
			// Not a frame: a length over MaxFrame and junk.
			raw.Write([]byte{0xff, 0xff, 0xff, 0xff, 'j', 'u', 'n', 'k'})
		case "bigframe":
			conn.Send(&ctl.Msg{Op: ctl.OpLog, Text: strings.Repeat("x", 2*maxEngineRequest)})
		}
	}()
	conn.Run()
	return 0
}

// floodResult is what the flooding engine saw.
type floodResult struct {
	Notices, Requests  int
	Granted, Refused   int
	Refusals           []string
	LowPort, OtherMark string
}

// flood is the attack of a hostile engine on its front: requests and
// notices that carry descriptors, forged log lines, socket requests past
// the budget, on a port that is not configured, with a mark.
func flood(c *ctl.Conn) floodResult {
	var r floodResult
	null, _ := os.Open("/dev/null")
	files := make([]*os.File, ctl.MaxFiles)
	for i := range files {
		files[i] = null
	}
	call := func(m *ctl.Msg) (*ctl.Msg, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.Call(ctx, m)
	}
	for i := range 1000 {
		text := fmt.Sprintf("line %d\nfront: engine exited (signal: killed); engine 1 took over\x1b[2J\x1b]0;owned\x07", i)
		if c.Send(&ctl.Msg{Op: ctl.OpLog, Text: text, Files: files}) == nil {
			r.Notices++
		}
		if i%5 == 0 {
			if _, err := call(&ctl.Msg{Op: ctl.OpMTU, Files: files}); err == nil {
				r.Requests++
			}
		}
	}
	for range 4 * socketBudget {
		rep, err := call(&ctl.Msg{Op: ctl.OpSocket, Body: ctl.Body(ctl.SocketRequest{Port: 0})})
		if err != nil {
			r.Refused++
			r.Refusals = append(r.Refusals, err.Error())
			continue
		}
		r.Granted += len(rep.Files)
		for _, f := range rep.Files {
			f.Close()
		}
	}
	if _, err := call(&ctl.Msg{Op: ctl.OpSocket, Body: ctl.Body(ctl.SocketRequest{Port: 22})}); err != nil {
		r.LowPort = err.Error()
	}
	if _, err := call(&ctl.Msg{Op: ctl.OpSetMark, Body: ctl.Body(uint32(0xbad)), Files: files[:1]}); err != nil {
		r.OtherMark = err.Error()
	}
	return r
}

// logSink collects the front's log lines.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *logSink) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// idleFrames is a TUN with no traffic: reads wait for a deadline or Close,
// writes are dropped. It has the read deadline a link uses to stop its
// relay, as a real TUN has.
type idleFrames struct {
	mu       sync.Mutex
	deadline time.Time
	kick     chan struct{} // closed and replaced when the deadline changes
	closed   chan struct{}
	once     sync.Once
}

func newIdleFrames() *idleFrames {
	return &idleFrames{kick: make(chan struct{}), closed: make(chan struct{})}
}

func (f *idleFrames) ReadFrame(b []byte, wait bool) (int, error) {
	for {
		f.mu.Lock()
		dl, kick := f.deadline, f.kick
		f.mu.Unlock()
		if !dl.IsZero() && !time.Now().Before(dl) {
			return 0, os.ErrDeadlineExceeded
		}
		if !wait {
			return 0, tun.ErrWouldBlock
		}
		select {
		case <-f.closed:
			return 0, os.ErrClosed
		case <-kick:
		}
	}
}

func (f *idleFrames) WriteFrame(b []byte) error { return nil }
func (f *idleFrames) MTU() (int, error)         { return 1420, nil }
func (f *idleFrames) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

func (f *idleFrames) SetReadDeadline(t time.Time) error {
	f.mu.Lock()
	f.deadline = t
	close(f.kick)
	f.kick = make(chan struct{})
	f.mu.Unlock()
	return nil
}

type frontTest struct {
	t   *testing.T
	s   *supervisor
	dev tun.Device
	dir string
	log *logSink
}

func (ft *frontTest) stop() {
	ft.s.shutdown()
	ft.dev.Close()
}

// startFront runs a supervisor over an in-memory TUN whose engines behave
// as behaviour says.
func startFront(t *testing.T, behaviour string) *frontTest {
	t.Helper()
	return startFrontWith(t, behaviour, nil)
}

// startFrontWith is startFront with cfg changed by change (nil: not)
// before the supervisor starts.
func startFrontWith(t *testing.T, behaviour string, change func(cfg *Config)) *frontTest {
	t.Helper()
	ft := &frontTest{t: t, dir: t.TempDir(), log: &logSink{}}
	cfg := Config{
		Name: "hostile0", MTU: 1420, Mode: ipc.Seqpacket, Logf: ft.log.logf, Verbosef: ft.log.logf,
		EngineCommand: func() (*exec.Cmd, error) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), envEngine+"="+behaviour, envDir+"="+ft.dir)
			return cmd, nil
		},
		HeartbeatEvery: 50 * time.Millisecond, HeartbeatTimeout: 500 * time.Millisecond,
	}
	if change != nil {
		change(&cfg)
	}
	cfg.defaults()
	ft.dev = tun.NewDevice(newIdleFrames(), tun.Format{Name: "hostile0"}, nil)
	ft.s = newSupervisor(cfg, ft.dev)
	ft.s.linkExists = func(string) bool { return true }
	ft.s.roamedEvery = 50 * time.Millisecond
	if err := ft.s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ft.stop)
	return ft
}

// waitFor polls cond (bounded) and fails with what if it never holds.
func (ft *frontTest) waitFor(what string, cond func() bool) {
	ft.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			ft.t.Fatalf("timed out waiting for %s; front log:\n%s", what, strings.Join(ft.log.all(), "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (ft *frontTest) report(name string, v any) bool {
	body, err := os.ReadFile(filepath.Join(ft.dir, name))
	if err != nil {
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		ft.t.Fatalf("report %s: %v", name, err)
	}
	return true
}

func (ft *frontTest) enginePID() int {
	ft.s.mu.Lock()
	defer ft.s.mu.Unlock()
	if ft.s.cur == nil {
		return 0
	}
	return ft.s.cur.pid()
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// TestHostileFlood: descriptors attached to every request, a flood of log
// lines forging the front's, socket requests past the budget, a port and a
// mark nobody configured. The front's descriptors and goroutines stay
// flat, it grants socketBudget sockets, and its log holds no control
// character and no line the engine could pass off as the front's.
func TestHostileFlood(t *testing.T) {
	fdsBefore := openFDs(t)
	goroutinesBefore := runtime.NumGoroutine()
	ft := startFront(t, "flood")
	var r floodResult
	ft.waitFor("the flood's report", func() bool { return ft.report("flood", &r) })

	if fds := openFDs(t); fds > fdsBefore+16 {
		t.Errorf("the front holds %d descriptors after the flood, %d before (an engine process and its flow account for a few)", fds, fdsBefore)
	}
	if r.Notices != 1000 || r.Requests == 0 {
		t.Errorf("the flood did not get through: %+v", r)
	}
	if r.Granted != socketBudget || r.Refused != 3*socketBudget || ft.s.socketsGranted.Load() != socketBudget {
		t.Errorf("granted %d sockets (front counted %d), refused %d: want %d and %d", r.Granted, ft.s.socketsGranted.Load(), r.Refused, socketBudget, 3*socketBudget)
	}
	// Refused: the sockets past the budget, port 22, fwmark 0xbad.
	if got := ft.s.grantsRefused.Load(); got != uint64(3*socketBudget+2) {
		t.Errorf("engine_requests_refused = %d, want %d", got, 3*socketBudget+2)
	}
	if !strings.Contains(r.LowPort, "not the configured listen port") || !strings.Contains(r.OtherMark, "not the configured one") {
		t.Errorf("port 22: %q; fwmark 0xbad: %q", r.LowPort, r.OtherMark)
	}
	lines := ft.log.all()
	engineLines := 0
	control := regexp.MustCompile(`[\x00-\x1f\x7f]`)
	for _, l := range lines {
		if control.MatchString(l) {
			t.Fatalf("a control character reached the front's log: %q", l)
		}
		if strings.HasPrefix(l, "engine ") {
			engineLines++
			if !strings.HasPrefix(l, fmt.Sprintf("engine %d: ", ft.enginePID())) {
				t.Errorf("an engine line without its pid: %q", l)
			}
		}
		if strings.HasPrefix(l, "front: engine exited") {
			t.Errorf("a forged front line: %q", l)
		}
	}
	if engineLines > logBurst+logRate*10 || ft.s.logDropped.Load()+ft.s.logDroppedTotal.Load() == 0 {
		t.Errorf("%d engine lines logged, %d dropped: the rate limit did not hold", engineLines, ft.s.logDropped.Load()+ft.s.logDroppedTotal.Load())
	}
	// Stats from a hostile engine: its counters pass only if well named.
	for _, c := range ft.s.Stats() {
		if strings.ContainsAny(c.Name, "\n=") {
			t.Errorf("an engine counter named %q reached the stats", c.Name)
		}
	}
	ft.stop()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutinesBefore+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutinesBefore+2 {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after shutdown, %d before:\n%s", n, goroutinesBefore, buf[:runtime.Stack(buf, true)])
	}
}

// TestHostileReplay: what a new engine is given after the old one was
// killed comes from what the UAPI set, not from the old engine's answers:
// its extra peer, its key and its 0/0 do not survive kill -9; the roamed
// endpoint of the configured peer does.
func TestHostileReplay(t *testing.T) {
	ft := startFront(t, "liar")
	var priv noise.PrivateKey
	priv[0] = 7
	set := netip.MustParseAddrPort("198.18.0.2:51820")
	err := ft.s.Set(&wgcfg.DeviceConfig{PrivateKey: &priv, Peers: []wgcfg.PeerConfig{
		{PublicKey: key(1), Endpoint: &set, AddAllowedIPs: []netip.Prefix{pfx("100.64.1.0/24")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// The engine's answers are read (roamed endpoints) every roamedEvery.
	ft.waitFor("the roamed endpoint", func() bool {
		ft.s.cfgMu.Lock()
		defer ft.s.cfgMu.Unlock()
		return ft.s.held.peers[key(1)].roamed.IsValid()
	})
	st, err := ft.s.Get()
	if err != nil {
		t.Fatal(err)
	}
	if st.PrivateKey != priv || len(st.Peers) != 1 || st.Peers[0].TxBytes != 5 || len(st.Peers[0].AllowedIPs) != 1 {
		t.Fatalf("get shows the engine's lies: %+v", st)
	}
	old := ft.enginePID()
	syscall.Kill(old, syscall.SIGKILL)
	ft.waitFor("a new engine", func() bool { p := ft.enginePID(); return p != 0 && p != old })
	pid := ft.enginePID()
	var replayed wgcfg.DeviceConfig
	ft.waitFor("the replay", func() bool { return ft.report(fmt.Sprintf("set.%d", pid), &replayed) })
	if replayed.PrivateKey == nil || *replayed.PrivateKey != priv || !replayed.ReplacePeers || len(replayed.Peers) != 1 {
		t.Fatalf("replayed: %+v", replayed)
	}
	p := replayed.Peers[0]
	if p.PublicKey != key(1) || len(p.AddAllowedIPs) != 1 || p.AddAllowedIPs[0] != pfx("100.64.1.0/24") {
		t.Errorf("replayed peer: %+v", p)
	}
	if p.Endpoint == nil || *p.Endpoint != netip.MustParseAddrPort("198.18.0.3:40000") {
		t.Errorf("the roamed endpoint of the known peer was not kept: %v", p.Endpoint)
	}
	if ft.s.roamedIgnored.Load() == 0 {
		t.Error("the unknown peer's report was not counted as ignored")
	}
}

// TestHostileHang: an engine that stops answering (its heartbeat included)
// is killed and replaced like one that died.
func TestHostileHang(t *testing.T) {
	ft := startFront(t, "hang")
	first := ft.enginePID()
	ft.waitFor("a replaced engine", func() bool {
		p := ft.enginePID()
		return ft.s.heartbeatMissed.Load() >= 1 && ft.s.restarts.Load() >= 1 && p != 0 && p != first
	})
	if err := syscall.Kill(first, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the hung engine %d is still there: %v", first, err)
	}
}

// TestHostileFrames: a frame that is not one, and a request over the size
// limit, each end the engine's channel: the engine is replaced.
func TestHostileFrames(t *testing.T) {
	for _, b := range []string{"garbage", "bigframe"} {
		t.Run(b, func(t *testing.T) {
			ft := startFront(t, b)
			ft.waitFor("a replaced engine", func() bool { return ft.s.restarts.Load() >= 1 })
		})
	}
}
