package uapi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// fakeHandler records set requests and answers get with a fixed state.
type fakeHandler struct {
	mu     sync.Mutex
	state  *wgcfg.DeviceState
	sets   []*wgcfg.DeviceConfig
	setErr error // returned by Set when non-nil
	getErr error // returned by Get when non-nil
}

func (h *fakeHandler) Get() (*wgcfg.DeviceState, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.getErr != nil {
		return nil, h.getErr
	}
	return h.state, nil
}

func (h *fakeHandler) Set(cfg *wgcfg.DeviceConfig) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.setErr != nil {
		return h.setErr
	}
	h.sets = append(h.sets, cfg)
	return nil
}

func (h *fakeHandler) lastSet() *wgcfg.DeviceConfig {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.sets) == 0 {
		return nil
	}
	return h.sets[len(h.sets)-1]
}

type statsHandler struct {
	fakeHandler
	counters []metrics.Counter
}

func (h *statsHandler) Stats() []metrics.Counter { return h.counters }

// serve starts Serve on a socket in a temporary directory and stops it when
// the test ends, checking that Serve returns.
func serve(t *testing.T, h Handler) string {
	t.Helper()
	old := SocketDir
	SocketDir = t.TempDir()
	t.Cleanup(func() { SocketDir = old })
	return serveAt(t, h, "ptuntest0")
}

func serveAt(t *testing.T, h Handler, ifname string) string {
	t.Helper()
	ln, err := Listen(ifname)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(ln, h, t.Logf) }()
	t.Cleanup(func() {
		ln.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after its listener closed")
		}
	})
	return SocketPath(ifname)
}

func TestClientServer(t *testing.T) {
	h := &statsHandler{
		fakeHandler: fakeHandler{state: sampleState()},
		counters:    []metrics.Counter{{Name: "drop_bad_mac", Value: 3}, {Name: "bad=name", Value: 1}, {Name: "rx_packets", Value: 1 << 63}},
	}
	sock := serve(t, h)

	st, err := Get(sock)
	if err != nil {
		t.Fatal(err)
	}
	if !statesEqual(st, sampleState()) {
		t.Fatalf("Get =\n%+v\nwant\n%+v", st, sampleState())
	}

	priv := noise.PrivateKey(keyA)
	psk := noise.PresharedKey(keyC)
	cfg := &wgcfg.DeviceConfig{
		PrivateKey: &priv, ListenPort: ptr[uint16](1), FwMark: ptr[uint32](2), ReplacePeers: true,
		Peers: []wgcfg.PeerConfig{{
			PublicKey: noise.PublicKey(keyB), UpdateOnly: true, PresharedKey: &psk,
			Endpoint: ptr(netip.MustParseAddrPort("[2001:db8::9]:5")), PersistentKeepalive: ptr[uint16](0),
			ReplaceAllowedIPs: true, AddAllowedIPs: []netip.Prefix{pfx("100.64.0.0/10")}, RemoveAllowedIPs: []netip.Prefix{pfx("2001:db8::/32")},
		}, {PublicKey: noise.PublicKey(keyC), Remove: true}},
	}
	if err := Set(sock, cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.lastSet(); !reflect.DeepEqual(got, cfg) {
		t.Fatalf("handler got\n%+v\nwant\n%+v", got, cfg)
	}

	if err := SetRaw(sock, "listen_port=9\n"); err != nil {
		t.Fatal(err)
	}
	if got := h.lastSet(); got.ListenPort == nil || *got.ListenPort != 9 {
		t.Fatalf("SetRaw: handler got %+v", got)
	}
	if err := SetRaw(sock, ""); err != nil {
		t.Fatalf("empty SetRaw: %v", err)
	}
	if err := SetRaw(sock, "listen_port=1\n\nlisten_port=2"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("SetRaw with a blank line: %v", err)
	}
	before := len(h.sets)
	if err := SetRaw(sock, "listen_port=70000"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("bad SetRaw: %v, want EINVAL", err)
	}
	if err := SetRaw(sock, "public_key="+hexB+"\nprotocol_version=3"); !errors.Is(err, syscall.EPROTO) {
		t.Fatalf("bad protocol version: %v, want EPROTO", err)
	}
	if len(h.sets) != before {
		t.Fatal("the handler saw an invalid request")
	}

	counters, err := Stats(sock)
	if err != nil {
		t.Fatal(err)
	}
	want := []metrics.Counter{{Name: "drop_bad_mac", Value: 3}, {Name: "rx_packets", Value: 1 << 63}}
	if !reflect.DeepEqual(counters, want) {
		t.Fatalf("Stats = %+v, want %+v", counters, want)
	}
}

func TestHandlerErrors(t *testing.T) {
	h := &fakeHandler{
		state:  sampleState(),
		setErr: &wgcfg.Error{Errno: syscall.EADDRINUSE, Err: errors.New("port taken")},
		getErr: errors.New("not an *wgcfg.Error"),
	}
	sock := serve(t, h)
	if err := SetRaw(sock, "listen_port=1"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Set: %v, want EADDRINUSE", err)
	}
	if _, err := Get(sock); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Get: %v, want EIO", err)
	}
	if _, err := Stats(sock); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("Stats without StatsHandler: %v, want EOPNOTSUPP", err)
	}
	h.mu.Lock()
	h.setErr = fmt.Errorf("wrapped: %w", syscall.ENOSPC)
	h.mu.Unlock()
	if err := SetRaw(sock, "listen_port=1"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Set: %v, want ENOSPC", err)
	}
}

// rawConn speaks the protocol by hand.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, sock string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatal(err)
	}
}

// answer reads one answer through its blank line.
func (rc *rawConn) answer() string {
	rc.t.Helper()
	var b strings.Builder
	for range 10000 {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			rc.t.Fatalf("reading answer after %q: %v", b.String(), err)
		}
		b.WriteString(line)
		if line == "\n" {
			return b.String()
		}
	}
	rc.t.Fatal("answer too long")
	return ""
}

func TestMalformedRequestsKeepConnection(t *testing.T) {
	h := &fakeHandler{state: &wgcfg.DeviceState{ListenPort: 7}}
	sock := serve(t, h)
	rc := dialRaw(t, sock)

	steps := []struct{ req, want string }{
		{"get=1\n\n", "listen_port=7\nerrno=0\n\n"},
		{"set=1\nlisten_port=1\n\n", "errno=0\n\n"},
		{"set=1\nbogus=1\n\n", "errno=-22\n\n"},
		{"set=1\npublic_key=" + hexB + "\nprotocol_version=2\n\n", "errno=-71\n\n"},
		{"set=1\nlisten_port=" + strings.Repeat("9", 5000) + "\n\n", "errno=-22\n\n"},
		{"delete=1\nwhatever\n\n", "errno=-22\n\n"},
		{strings.Repeat("x", 5000) + "\n\n", "errno=-22\n\n"},
		{"\n", "errno=-22\n\n"},
		{"get=1\ntrailing\n\n", "errno=22\n\n"},
		{"stats=1\n\n", "errno=95\n\n"},
		{"get=1\n\n", "listen_port=7\nerrno=0\n\n"},
	}
	for _, s := range steps {
		rc.send(s.req)
		if got := rc.answer(); got != s.want {
			t.Fatalf("request %.40q: answer %q, want %q", s.req, got, s.want)
		}
	}
	// Several requests in one write are answered in order.
	rc.send("get=1\n\nset=1\nlisten_port=3\n\nget=1\n\n")
	for _, want := range []string{"listen_port=7\nerrno=0\n\n", "errno=0\n\n", "listen_port=7\nerrno=0\n\n"} {
		if got := rc.answer(); got != want {
			t.Fatalf("pipelined: %q, want %q", got, want)
		}
	}
	if got := h.lastSet(); got == nil || *got.ListenPort != 3 {
		t.Fatalf("pipelined set not applied: %+v", got)
	}
}

func TestOversizedRequestClosesConnection(t *testing.T) {
	old := requestLimit
	requestLimit = 64 << 10 // the same code path as 8 MiB, faster under -race
	t.Cleanup(func() { requestLimit = old })
	h := &fakeHandler{state: &wgcfg.DeviceState{}}
	sock := serve(t, h)
	rc := dialRaw(t, sock)
	go func() {
		// Write until the server hangs up; the error is expected.
		line := []byte("allowed_ip=100.64.0.0/10\n")
		io.WriteString(rc.c, "set=1\npublic_key="+hexB+"\n")
		for range requestLimit/len(line) + 1000 {
			if _, err := rc.c.Write(line); err != nil {
				return
			}
		}
	}()
	if got := rc.answer(); got != "errno=-90\n\n" {
		t.Fatalf("answer %q, want EMSGSIZE", got)
	}
	if _, err := rc.r.ReadByte(); err == nil {
		t.Fatal("connection still open after an oversized request")
	}
	if h.lastSet() != nil {
		t.Fatal("handler saw the oversized request")
	}
	// The server still takes new connections.
	if _, err := Get(sock); err != nil {
		t.Fatal(err)
	}
}

func TestServeClosesConnectionsOnShutdown(t *testing.T) {
	old := SocketDir
	SocketDir = t.TempDir()
	t.Cleanup(func() { SocketDir = old })
	ln, err := Listen("ptuntest1")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(ln, &fakeHandler{state: &wgcfg.DeviceState{}}, nil) }()
	rc := dialRaw(t, SocketPath("ptuntest1"))
	rc.send("get=1\n\n")
	rc.answer()
	rc.send("set=1\nlisten_port=1\n") // a request left half-sent
	ln.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := rc.r.ReadByte(); err == nil {
		t.Fatal("client connection survived Serve")
	}
	if _, err := os.Lstat(SocketPath("ptuntest1")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket file left behind: %v", err)
	}
}

func TestConcurrentClients(t *testing.T) {
	h := &fakeHandler{state: sampleState()}
	sock := serve(t, h)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := Get(sock); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			if err := SetRaw(sock, fmt.Sprintf("listen_port=%d", i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(h.sets) != 20 {
		t.Fatalf("%d sets applied, want 20", len(h.sets))
	}
}

func TestListen(t *testing.T) {
	old := SocketDir
	SocketDir = filepath.Join(t.TempDir(), "run", "wireguard") // Listen creates it
	t.Cleanup(func() { SocketDir = old })

	for _, bad := range []string{"", "a/b", "..", "this-name-is-too-long", "with space"} {
		if _, err := Listen(bad); err == nil {
			t.Errorf("Listen(%q) succeeded", bad)
		}
	}

	ln, err := Listen("ptuntest2")
	if err != nil {
		t.Fatal(err)
	}
	path := SocketPath("ptuntest2")
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want socket 0600", fi.Mode())
	}
	if di, err := os.Stat(SocketDir); err != nil || di.Mode().Perm() != 0o755 {
		t.Fatalf("directory: %v, %v", di.Mode(), err)
	}
	if entries, _ := os.ReadDir(SocketDir); len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the socket", len(entries))
	}
	// The socket answers at its final path.
	served := make(chan error, 1)
	go func() { served <- Serve(ln, &fakeHandler{state: &wgcfg.DeviceState{ListenPort: 5}}, nil) }()
	defer func() { ln.Close(); <-served }()
	if st, err := Get(path); err != nil || st.ListenPort != 5 {
		t.Fatalf("Get through the socket: %+v, %v", st, err)
	}

	// A second Listen for the same interface must not steal the socket.
	if _, err := Listen("ptuntest2"); err == nil || !strings.Contains(err.Error(), "already served by another process") {
		t.Fatalf("second Listen: %v", err)
	}

	// A stale socket (nobody listening) is replaced.
	stale := SocketPath("ptuntest3")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	ln3, err := Listen("ptuntest3")
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln3.Close()
	if _, err := os.Lstat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Close left the socket: %v", err)
	}

	// A regular file in the way is not removed.
	if err := os.WriteFile(SocketPath("ptuntest4"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("ptuntest4"); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}

	// Close does not remove a socket that another listener put in its place.
	ln5, err := Listen("ptuntest5")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(SocketPath("ptuntest5"))
	ln5b, err := Listen("ptuntest5")
	if err != nil {
		t.Fatal(err)
	}
	ln5.Close()
	if _, err := os.Lstat(SocketPath("ptuntest5")); err != nil {
		t.Fatalf("closing the old listener removed the new socket: %v", err)
	}
	ln5b.Close()
}

func TestListenPermissionError(t *testing.T) {
	if os.Geteuid() == 0 {
		// Root ignores directory permissions: run this test again as
		// nobody, in a child process, so it runs in CI too.
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		dir, err := os.MkdirTemp("", "ptun-uapi-nobody-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// The build directory is root's only: run a copy from dir.
		bin := filepath.Join(dir, "uapi.test")
		data, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-test.run=^TestListenPermissionError$", "-test.v")
		cmd.Dir = dir
		tmp := filepath.Join(dir, "tmp") // the child's TMPDIR, nobody's own
		if err := os.Mkdir(tmp, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(tmp, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "CI=")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestListenPermissionError") {
			t.Fatalf("as nobody: %v\n%s", err, out)
		}
		return
	}
	old := SocketDir
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	t.Cleanup(func() { os.Chmod(dir, 0o700); SocketDir = old })
	SocketDir = filepath.Join(dir, "wireguard")
	_, err := Listen("ptuntest6")
	if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "needs root") {
		t.Fatalf("Listen in a read-only directory: %v", err)
	}
}

// TestConnectionsBounded: past MaxConns open connections, a new one is
// closed at once, and the ones open still work.
func TestConnectionsBounded(t *testing.T) {
	sock := serve(t, &fakeHandler{})
	conns := make([]*rawConn, MaxConns)
	for i := range conns {
		conns[i] = dialRaw(t, sock)
		conns[i].send("get=1\n\n") // served: the connection is tracked
		conns[i].answer()
	}
	extra := dialRaw(t, sock)
	// The server may close the refused connection before this write
	// (EPIPE) or after it: either way nothing is answered on it.
	io.WriteString(extra.c, "get=1\n\n")
	if line, err := extra.r.ReadString('\n'); err == nil {
		t.Fatalf("connection %d was served (%q)", MaxConns+1, line)
	}
	conns[0].send("get=1\n\n")
	if a := conns[0].answer(); !strings.Contains(a, "errno=") {
		t.Fatalf("an open connection stopped working: %q", a)
	}
}
