package uapi

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// needWg returns the wg tool's path, skipping (or failing under CI=true) if
// it is not installed.
func needWg(t *testing.T) string {
	t.Helper()
	return testenv.RequireTool(t, "wg", "wireguard-tools")
}

func b64(k [32]byte) string { return base64.StdEncoding.EncodeToString(k[:]) }

// TestWgTool drives the real wg tool against Serve in the directory wg
// uses, with an interface name no real device has.
func TestWgTool(t *testing.T) {
	testenv.RequireRoot(t)
	wg := needWg(t)
	if SocketDir != "/var/run/wireguard" {
		t.Fatalf("SocketDir is %s", SocketDir)
	}
	ifname := fmt.Sprintf("ptuntest%d", os.Getpid()%10000000)
	h := &fakeHandler{}
	serveAt(t, h, ifname)

	run := func(args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(wg, args...)
		cmd.Env = append(os.Environ(), "WG_HIDE_KEYS=never")
		cmd.WaitDelay = 10 * time.Second
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	priv, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	peerPriv, _ := noise.GeneratePrivateKey()
	peerPub := peerPriv.PublicKey()
	psk, _ := noise.GeneratePresharedKey()
	keyFile := filepath.Join(t.TempDir(), "private")
	if err := os.WriteFile(keyFile, []byte(b64(priv)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pskFile := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(pskFile, []byte(b64(psk)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// wg set arrives as the wgcfg.DeviceConfig it means.
	out, err := run("set", ifname, "private-key", keyFile, "listen-port", "51820", "fwmark", "0x1234",
		"peer", b64(peerPub), "preshared-key", pskFile, "allowed-ips", "100.64.0.2/32,2001:db8::2/128",
		"endpoint", "198.18.0.2:51820", "persistent-keepalive", "25")
	if err != nil {
		t.Fatalf("wg set: %v\n%s", err, out)
	}
	want := &wgcfg.DeviceConfig{
		PrivateKey: &priv,
		ListenPort: ptr[uint16](51820),
		FwMark:     ptr[uint32](0x1234),
		Peers: []wgcfg.PeerConfig{{
			PublicKey:           peerPub,
			PresharedKey:        &psk,
			Endpoint:            ptr(netip.MustParseAddrPort("198.18.0.2:51820")),
			PersistentKeepalive: ptr[uint16](25),
			ReplaceAllowedIPs:   true, // wg's allowed-ips replaces the list
			AddAllowedIPs:       []netip.Prefix{pfx("100.64.0.2/32"), pfx("2001:db8::2/128")},
		}},
	}
	if got := h.lastSet(); !reflect.DeepEqual(got, want) {
		t.Fatalf("wg set delivered\n%+v\nwant\n%+v", got, want)
	}

	// IPv6 endpoint, replacing allowed IPs, removing a peer.
	out, err = run("set", ifname, "peer", b64(peerPub), "endpoint", "[2001:db8::1]:51821", "allowed-ips", "100.64.0.0/10",
		"peer", b64(noise.PublicKey(keyC)), "remove")
	if err != nil {
		t.Fatalf("wg set: %v\n%s", err, out)
	}
	want = &wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{
		{PublicKey: peerPub, Endpoint: ptr(netip.MustParseAddrPort("[2001:db8::1]:51821")), ReplaceAllowedIPs: true,
			AddAllowedIPs: []netip.Prefix{pfx("100.64.0.0/10")}},
		{PublicKey: noise.PublicKey(keyC), Remove: true},
	}}
	if got := h.lastSet(); !reflect.DeepEqual(got, want) {
		t.Fatalf("second wg set delivered\n%+v\nwant\n%+v", got, want)
	}

	// wg setconf replaces the peers.
	conf := filepath.Join(t.TempDir(), "wg.conf")
	os.WriteFile(conf, []byte("[Interface]\nPrivateKey = "+b64(priv)+"\nListenPort = 51822\n\n[Peer]\nPublicKey = "+
		b64(peerPub)+"\nAllowedIPs = 100.64.0.3/32\nEndpoint = [2001:db8::3]:51823\n"), 0o600)
	if out, err = run("setconf", ifname, conf); err != nil {
		t.Fatalf("wg setconf: %v\n%s", err, out)
	}
	want = &wgcfg.DeviceConfig{PrivateKey: &priv, ListenPort: ptr[uint16](51822), FwMark: ptr[uint32](0), ReplacePeers: true, Peers: []wgcfg.PeerConfig{
		{PublicKey: peerPub, Endpoint: ptr(netip.MustParseAddrPort("[2001:db8::3]:51823")), ReplaceAllowedIPs: true,
			AddAllowedIPs: []netip.Prefix{pfx("100.64.0.3/32")}},
	}}
	if got := h.lastSet(); !reflect.DeepEqual(got, want) {
		t.Fatalf("wg setconf delivered\n%+v\nwant\n%+v", got, want)
	}

	// wg show and wg showconf print what Get returns.
	second, _ := noise.GeneratePrivateKey()
	h.mu.Lock()
	h.state = &wgcfg.DeviceState{
		PrivateKey: priv,
		ListenPort: 51820,
		FwMark:     0x1234,
		Peers: []wgcfg.PeerState{
			{
				PublicKey:           peerPub,
				PresharedKey:        psk,
				Endpoint:            netip.MustParseAddrPort("198.18.0.2:51820"),
				LastHandshake:       time.Unix(1700000000, 5),
				TxBytes:             1234,
				RxBytes:             5678,
				PersistentKeepalive: 25,
				AllowedIPs:          []netip.Prefix{pfx("100.64.0.2/32"), pfx("2001:db8::2/128")},
			},
			{PublicKey: second.PublicKey(), Endpoint: netip.MustParseAddrPort("[2001:db8::1]:51821")},
		},
	}
	h.mu.Unlock()

	out, err = run("show", ifname, "dump")
	if err != nil {
		t.Fatalf("wg show dump: %v\n%s", err, out)
	}
	wantDump := strings.Join([]string{
		strings.Join([]string{b64(priv), b64(priv.PublicKey()), "51820", "0x1234"}, "\t"),
		strings.Join([]string{b64(peerPub), b64(psk), "198.18.0.2:51820", "100.64.0.2/32,2001:db8::2/128", "1700000000", "5678", "1234", "25"}, "\t"),
		strings.Join([]string{b64(second.PublicKey()), "(none)", "[2001:db8::1]:51821", "(none)", "0", "0", "0", "off"}, "\t"),
	}, "\n") + "\n"
	if out != wantDump {
		t.Fatalf("wg show dump =\n%s\nwant\n%s", out, wantDump)
	}

	out, err = run("showconf", ifname)
	if err != nil {
		t.Fatalf("wg showconf: %v\n%s", err, out)
	}
	for _, line := range []string{
		"ListenPort = 51820", "FwMark = 0x1234", "PrivateKey = " + b64(priv),
		"PublicKey = " + b64(peerPub), "PresharedKey = " + b64(psk),
		"AllowedIPs = 100.64.0.2/32, 2001:db8::2/128", "Endpoint = 198.18.0.2:51820", "PersistentKeepalive = 25",
		"PublicKey = " + b64(second.PublicKey()), "Endpoint = [2001:db8::1]:51821",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("wg showconf lacks %q:\n%s", line, out)
		}
	}

	// A handler error makes wg set fail, with the errno's message.
	h.mu.Lock()
	h.setErr = &wgcfg.Error{Errno: syscall.EADDRINUSE, Err: errors.New("port taken")}
	h.mu.Unlock()
	out, err = run("set", ifname, "listen-port", "1")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("wg set with a failing handler: err %v\n%s", err, out)
	}
	if !strings.Contains(strings.ToLower(out), syscall.EADDRINUSE.Error()) {
		t.Errorf("wg set error output %q does not name the errno", out)
	}

	// So does a Get error for wg show.
	h.mu.Lock()
	h.getErr = &wgcfg.Error{Errno: syscall.ENODEV, Err: errors.New("gone")}
	h.mu.Unlock()
	out, err = run("show", ifname)
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("wg show with a failing handler: err %v\n%s", err, out)
	}
	if !strings.Contains(strings.ToLower(out), syscall.ENODEV.Error()) {
		t.Errorf("wg show error output %q does not name the errno", out)
	}
	t.Logf("wg error output: %s", strings.TrimSpace(out))
}
