package main

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// fakeDevice answers get=1 with a state of one peer.
type fakeDevice struct{ state wgcfg.DeviceState }

func (d *fakeDevice) Get() (*wgcfg.DeviceState, error) {
	st := d.state
	return &st, nil
}

func (d *fakeDevice) Set(*wgcfg.DeviceConfig) error {
	return &wgcfg.Error{Errno: syscall.EPERM, Err: errors.New("read-only fake")}
}

// fakePtun also answers stats=1, as ptun does.
type fakePtun struct {
	fakeDevice
	counters []metrics.Counter
}

func (d *fakePtun) Stats() []metrics.Counter { return d.counters }

func newFakeState(t *testing.T) wgcfg.DeviceState {
	t.Helper()
	priv, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	peer, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return wgcfg.DeviceState{PrivateKey: priv, ListenPort: 51820, Peers: []wgcfg.PeerState{{
		PublicKey:     peer.PublicKey(),
		Endpoint:      netip.MustParseAddrPort("198.18.0.2:51820"),
		AllowedIPs:    []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")},
		LastHandshake: time.Now().Add(-5 * time.Second),
		RxBytes:       1000, TxBytes: 2000,
	}}}
}

// useSocketDir points uapi.SocketDir at a new temporary directory.
func useSocketDir(t *testing.T) string {
	t.Helper()
	old := uapi.SocketDir
	uapi.SocketDir = t.TempDir()
	t.Cleanup(func() { uapi.SocketDir = old })
	return uapi.SocketDir
}

// serveFake serves h on the UAPI socket of ifname until the test ends.
func serveFake(t *testing.T, ifname string, h uapi.Handler) {
	t.Helper()
	ln, err := net.Listen("unix", uapi.SocketPath(ifname))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- uapi.Serve(ln, h, t.Logf) }()
	t.Cleanup(func() { ln.Close(); <-done })
}

// serveHangUp accepts connections on ifname's socket and closes them at
// once, as a device that fails does.
func serveHangUp(t *testing.T, ifname string) {
	t.Helper()
	ln, err := net.Listen("unix", uapi.SocketPath(ifname))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
}

// TestShowAllGoesOnAfterAFailure: `ptun show` with no argument shows every
// interface even when one fails, reports that one on stderr, and exits 1.
// An interface without counters (wireguard-go answers stats=1 with
// EOPNOTSUPP) is shown, and is no failure.
func TestShowAllGoesOnAfterAFailure(t *testing.T) {
	useSocketDir(t)
	ptunState, wggoState := newFakeState(t), newFakeState(t)
	serveFake(t, "a-ptun", &fakePtun{fakeDevice{ptunState}, []metrics.Counter{
		{Name: "drop_bad_mac", Value: 3}, {Name: "drop_no_route", Value: 0}, {Name: "rx_packets", Value: 7},
	}})
	serveHangUp(t, "b-broken")
	serveFake(t, "c-wggo", &fakeDevice{wggoState})

	var out, errOut bytes.Buffer
	err := show(nil, &out, &errOut)
	if !errors.Is(err, errReported) {
		t.Errorf("show returned %v, want errReported", err)
	}
	o := out.String()
	for _, want := range []string{
		"interface: a-ptun\n", "  public key: " + ptunState.PrivateKey.PublicKey().Base64() + "\n",
		"peer: " + ptunState.Peers[0].PublicKey.Base64() + "\n", "  endpoint: 198.18.0.2:51820\n",
		"  allowed ips: 100.64.0.2/32\n", "  drop_bad_mac: 3\n", "  drop_no_route: 0\n", "  rx_packets: 7\n",
		"interface: c-wggo\n", "peer: " + wggoState.Peers[0].PublicKey.Base64() + "\n",
		"(no counters: the interface is not served by ptun)",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("stdout lacks %q:\n%s", want, o)
		}
	}
	if strings.Contains(o, "b-broken") {
		t.Errorf("stdout shows the broken interface:\n%s", o)
	}
	e := errOut.String()
	if !strings.Contains(e, "ptun: b-broken: ") || !strings.Contains(e, "1 of 3 interfaces could not be shown") ||
		strings.Contains(e, "a-ptun") || strings.Contains(e, "c-wggo") {
		t.Errorf("stderr should report b-broken only:\n%s", e)
	}

	// The command exits 1, and shows the others.
	var code int
	cout, _ := capture(t, func() { code = run([]string{"show"}) })
	if code != 1 || !strings.Contains(cout, "interface: c-wggo") {
		t.Errorf("ptun show: exit status %d, want 1; stdout:\n%s", code, cout)
	}
	// Naming one that works exits 0.
	for _, args := range [][]string{{"show", "c-wggo"}, {"show", "--", "c-wggo"}} {
		cout, _ = capture(t, func() { code = run(args) })
		if code != 0 || !strings.Contains(cout, "interface: c-wggo") || strings.Contains(cout, "a-ptun") {
			t.Errorf("ptun %s: exit status %d, want 0; stdout:\n%s", strings.Join(args, " "), code, cout)
		}
	}
}

func TestShowErrors(t *testing.T) {
	dir := useSocketDir(t)
	var out, errOut bytes.Buffer
	if err := show(nil, &out, &errOut); err == nil || !strings.Contains(err.Error(), "no interfaces found") {
		t.Errorf("show in an empty directory: %v", err)
	}
	if err := show([]string{"nosuch0"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "nosuch0: no such interface") {
		t.Errorf("show nosuch0: %v", err)
	}
	// A socket nobody serves any more.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "stale0.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if err := show([]string{"stale0"}, &out, &errOut); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("show stale0: %v, want ECONNREFUSED", err)
	}
}

// TestShowPermissionHint: a permission error tells the user to run as root.
func TestShowPermissionHint(t *testing.T) {
	dir := useSocketDir(t)
	err := withRootHint(&net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)})
	if !strings.Contains(err.Error(), "run as root (the UAPI sockets in "+dir+" are root's)") || !errors.Is(err, syscall.EACCES) {
		t.Errorf("withRootHint gave %v", err)
	}
	if err := withRootHint(syscall.ECONNREFUSED); strings.Contains(err.Error(), "root") {
		t.Errorf("withRootHint added a hint to %v", err)
	}
	if os.Geteuid() == 0 {
		t.Log("as root no socket refuses us; checked the hint only")
		return
	}
	// The real thing: a socket this user may not connect to.
	serveFake(t, "locked0", &fakeDevice{newFakeState(t)})
	if err := os.Chmod(uapi.SocketPath("locked0"), 0); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err = show([]string{"locked0"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "run as root") {
		t.Errorf("show locked0 as uid %d: %v, want a hint to run as root", os.Geteuid(), err)
	}
}
