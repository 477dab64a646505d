package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// The lan host behind the gateway in TestExport, and the gateway's
// address in its pool.
var (
	exportLAN     = netip.MustParseAddr("198.18.2.2")
	gatewayTunnel = netip.MustParseAddr("100.80.0.1")
)

// TestExport: a config for the official apps, end to end. The gateway
// stands in front of a lan host as in TestGatewayEndToEnd; `ptun gateway
// export alice phone --qr FILE` makes the device; the QR code, decoded
// (as the app's scanner would), is the very config printed on stdout; the
// real wg-quick brings it up on the client with wireguard-go (the
// userspace implementation the official apps share their code with) and
// pings the lan host through the gateway, and the gateway's own tunnel
// address; wg-quick down takes it away.
//
// The config has a DNS line, for which wg-quick calls resolvconf. That
// would change the machine's resolver (and this machine may have no
// resolvconf), so a stub resolvconf first in wg-quick's PATH records what
// it is given instead, and the test checks that: the servers as
// nameservers, the search domain as search.
func TestExport(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	wgQuick := testenv.RequireTool(t, "wg-quick", "wireguard-tools")
	c := l.client

	gw := startExportGateway(t, l)

	// The export, run on the gateway host: the config on stdout alone.
	pngPath := filepath.Join(l.dir, "phone.png")
	start := time.Now()
	var stdout, stderr bytes.Buffer
	exp := nsCommand(context.Background(), l.server.ns, ptun.bin, "gateway", "export", "alice", "phone", "--qr", pngPath, "--state", gw.state)
	exp.Stdout, exp.Stderr = &stdout, &stderr
	if err := exp.Run(); err != nil {
		t.Fatalf("ptun gateway export: %v\n%s", err, stderr.String())
	}
	conf := stdout.String()
	t.Logf("export took %v; it said: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr.String()))
	fi, err := os.Stat(pngPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the QR code %s: %v %v, want mode 0600", pngPath, fi, err)
	}
	scanned := scanQR(t, pngPath)
	if scanned != conf {
		t.Fatalf("the QR code says:\n%s\nthe export printed:\n%s", scanned, conf)
	}
	t.Logf("config (%d bytes), QR code %s (%d bytes):\n%s", len(conf), filepath.Base(pngPath), fi.Size(),
		strings.Join(redactKey(strings.Split(conf, "\n")), "\n"))

	// The device the gateway made, as `devices` lists it.
	var devs []struct {
		User, Name string
		Addresses  []netip.Addr
	}
	if err := json.Unmarshal([]byte(mustRun(t, l.server.ns, ptun.bin, "gateway", "devices", "--json", "--state", gw.state)), &devs); err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || devs[0].User != "alice" || devs[0].Name != "phone" || len(devs[0].Addresses) != 1 {
		t.Fatalf("devices: %+v, want alice/phone with one address", devs)
	}
	devAddr := devs[0].Addresses[0]
	if !netip.MustParsePrefix("100.80.0.0/16").Contains(devAddr) || !strings.Contains(conf, "Address = "+devAddr.String()+"/32\n") {
		t.Fatalf("alice/phone has %v; the config says:\n%s", devAddr, conf)
	}
	if out := mustRun(t, l.server.ns, ptun.bin, "gateway", "devices", "--state", gw.state); !strings.Contains(out, "alice") || !strings.Contains(out, "phone") {
		t.Errorf("devices does not list alice/phone:\n%s", out)
	}
	waitFor(t, 5*time.Second, "the gateway to make alice/phone a peer", func() (bool, string) {
		out, err := run(l.server.ns, "wg", "show", gw.iface, "allowed-ips")
		return err == nil && strings.Contains(out, devAddr.String()+"/32"), out
	})
	t.Logf("alice/phone was the gateway's peer %v after the export began", time.Since(start).Round(time.Millisecond))

	// The client: wg-quick with the scanned config, wireguard-go as its
	// userspace implementation. wg-quick names the interface after the
	// file.
	ifname := "ex" + l.id
	confPath := filepath.Join(l.dir, ifname+".conf")
	if err := os.WriteFile(confPath, []byte(scanned), 0o600); err != nil {
		t.Fatal(err)
	}
	stubDir := filepath.Join(l.dir, "stub")
	resolvLog := filepath.Join(l.dir, "resolvconf.log")
	if err := os.Mkdir(stubDir, 0o755); err != nil {
		t.Fatal(err)
	}
	stub := fmt.Sprintf("#!/bin/sh\n{ echo \"args: $*\"; cat; } >> %s\n", resolvLog)
	if err := os.WriteFile(filepath.Join(stubDir, "resolvconf"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	quickLog := filepath.Join(l.dir, "wg-quick.log")
	wgQuickRun := func(action string) error {
		// wireguard-go, started by wg-quick, keeps the log file as its
		// stdout: a file, not a pipe, so that waiting for wg-quick does
		// not wait for the daemon.
		f, err := os.OpenFile(quickLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(f, "--- wg-quick %s\n", action)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := nsCommand(ctx, c.ns, "env", "PATH="+stubDir+":"+os.Getenv("PATH"),
			"WG_QUICK_USERSPACE_IMPLEMENTATION="+wgGo.bin, "LOG_LEVEL=verbose", wgQuick, action, confPath)
		cmd.Stdout, cmd.Stderr = f, f
		return cmd.Run()
	}
	upped := false
	t.Cleanup(func() {
		if upped {
			wgQuickRun("down") // after a failure; else a no-op that fails
		}
		killPIDs(wgGoPIDs(c))
		os.Remove(socketPath(ifname))
		if t.Failed() {
			t.Logf("wg-quick and wireguard-go said:\n%s", tail(quickLog, 6000))
		}
	})
	noRoute := func(when string) {
		t.Helper()
		if out, err := run(c.ns, "ip", "-4", "route", "get", exportLAN.String()); err == nil {
			t.Errorf("%s the client has a route to the lan host:\n%s", when, out)
		}
	}
	noRoute("before the tunnel,")

	start = time.Now()
	upped = true
	if err := wgQuickRun("up"); err != nil {
		t.Fatalf("wg-quick up: %v\n%s", err, tail(quickLog, 4000))
	}
	upTook := time.Since(start)
	out, _ := os.ReadFile(quickLog)
	if !strings.Contains(string(out), "Falling back to slow userspace implementation") || !strings.Contains(string(out), wgGo.bin+" "+ifname) {
		t.Errorf("wg-quick did not start wireguard-go:\n%s", out)
	}
	if len(wgGoPIDs(c)) == 0 {
		t.Errorf("no wireguard-go process in %s", c.ns)
	}
	link := mustRun(t, c.ns, "ip", "addr", "show", ifname)
	if !strings.Contains(link, "inet "+devAddr.String()+"/32") || !strings.Contains(link, "mtu 1420") {
		t.Errorf("%s:\n%s", ifname, link)
	}
	if out := mustRun(t, c.ns, "ip", "-4", "route", "get", exportLAN.String()); !strings.Contains(out, "dev "+ifname) {
		t.Errorf("the lan host is not routed into the tunnel:\n%s", out)
	}

	start = time.Now()
	pingOut := mustRun(t, c.ns, "ping", "-n", "-c", "3", "-i", "0.2", "-w", "10", exportLAN.String())
	t.Logf("wg-quick up took %v; the first 3 pings through the gateway %v:\n%s", upTook.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond), lastLines(pingOut, 2))
	// The gateway's own tunnel address, which the config routes too.
	nsPing(t, c.ns, gatewayTunnel)

	d, err := parseDump(mustRun(t, c.ns, "wg", "show", ifname, "dump"))
	if err != nil {
		t.Fatal(err)
	}
	gwPeer, ok := d.Peers[gw.pub]
	if len(d.Peers) != 1 || !ok || gwPeer.Endpoint != serverLink4.String()+":51820" || !sameSet(gwPeer.AllowedIPs, "198.18.2.0/24,100.80.0.1/32") ||
		gwPeer.LatestHandshake == 0 || gwPeer.RxBytes == 0 {
		t.Errorf("wireguard-go's peers (want only the gateway %s, with a handshake):\n%s", gw.pub, d.raw)
	}
	if ka := strings.TrimSpace(mustRun(t, c.ns, "wg", "show", ifname, "persistent-keepalive")); !strings.HasSuffix(ka, "\t25") {
		t.Errorf("persistent keepalive: %q, want 25", ka)
	}
	gd, err := parseDump(mustRun(t, l.server.ns, "wg", "show", gw.iface, "dump"))
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := gd.Peers[d.PublicKey]; !ok || p.LatestHandshake == 0 || p.AllowedIPs != devAddr.String()+"/32" ||
		!strings.HasPrefix(p.Endpoint, clientLink4.String()+":") {
		t.Errorf("the gateway's view of alice/phone (%s):\n%s", d.PublicKey, gd.raw)
	}
	b, _ := os.ReadFile(resolvLog)
	if want := "args: -a " + ifname + " -m 0 -x\nnameserver 198.18.2.53\nsearch corp.example\n"; string(b) != want {
		t.Errorf("wg-quick gave resolvconf:\n%s\nwant:\n%s", b, want)
	}

	pids := wgGoPIDs(c)
	start = time.Now()
	if err := wgQuickRun("down"); err != nil {
		t.Fatalf("wg-quick down: %v\n%s", err, tail(quickLog, 4000))
	}
	upped = false
	waitFor(t, 5*time.Second, "wireguard-go to exit", func() (bool, string) {
		for _, pid := range pids {
			if processAlive(pid) {
				return false, fmt.Sprintf("pid %d still running", pid)
			}
		}
		return true, ""
	})
	t.Logf("wg-quick down and wireguard-go gone in %v", time.Since(start).Round(time.Millisecond))
	if out, err := run(c.ns, "ip", "link", "show", ifname); err == nil {
		t.Errorf("%s is still there after wg-quick down:\n%s", ifname, out)
	}
	if b, _ := os.ReadFile(resolvLog); !strings.HasSuffix(string(b), "args: -d "+ifname+" -f\n") {
		t.Errorf("wg-quick down did not remove the DNS settings:\n%s", b)
	}
	noRoute("after wg-quick down,")
}

// exportGateway is a gateway running in a lab's server host.
type exportGateway struct {
	state, iface string
	pub          string // its WireGuard public key, base64
}

// startExportGateway builds what TestGatewayEndToEnd builds: a lan host
// (198.18.2.2) behind the lab's server, which is made a gateway (pool
// 100.80.0.0/16, route 198.18.2.0/24, masquerade) with user alice and
// runs `ptun gateway run --foreground` until the test's cleanup.
func startExportGateway(t *testing.T, l *lab) *exportGateway {
	t.Helper()
	l.addLan(t) // exportLAN
	g := &exportGateway{state: filepath.Join(l.dir, "gw"), iface: "pgw" + l.id}
	mustRun(t, l.server.ns, ptun.bin, "gateway", "init", "--state", g.state, "--interface", g.iface,
		"--endpoint", l.server.link4.String()+":51820", "--api", l.server.link4.String()+":8443",
		"--pool", "100.80.0.0/16", "--route", "198.18.2.0/24", "--dns", "198.18.2.53", "--search", "corp.example", "--masquerade")
	mustRun(t, l.server.ns, ptun.bin, "gateway", "user", "add", "alice", "--group", "eng", "--state", g.state)

	startGateway(t, l.server.ns, g.state)
	waitFor(t, 5*time.Second, "the gateway's interface", func() (bool, string) {
		out, err := run(l.server.ns, "wg", "show", g.iface, "public-key")
		g.pub = strings.TrimSpace(out)
		return err == nil && len(g.pub) == 44, out
	})
	return g
}

// sameSet reports whether two comma-separated lists hold the same items.
func sameSet(a, b string) bool {
	as, bs := strings.Split(a, ","), strings.Split(b, ",")
	slices.Sort(as)
	slices.Sort(bs)
	return slices.Equal(as, bs)
}

// scanQR decodes the QR code in a PNG file with gozxing, as an app's
// scanner would.
func scanQR(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		t.Fatal(err)
	}
	res, err := qrcode.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]interface{}{gozxing.DecodeHintType_PURE_BARCODE: true}) // a drawn symbol, not a photograph
	if err != nil {
		t.Fatalf("scanning %s: %v", path, err)
	}
	return res.GetText()
}

// wgGoPIDs lists the live wireguard-go processes in h's namespace.
func wgGoPIDs(h *host) []int {
	out, _ := run("", "ip", "netns", "pids", h.ns)
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == wgGo.bin && processAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// redactKey hides a config's private key, for the test's log.
func redactKey(lines []string) []string {
	out := make([]string, len(lines))
	for i, line := range lines {
		if strings.HasPrefix(line, "PrivateKey = ") {
			line = "PrivateKey = (redacted)"
		}
		out[i] = line
	}
	return out
}
