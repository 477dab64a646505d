package gateway

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"

	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
)

func fill[K ~[32]byte](b byte) (k K) {
	for i := range k {
		k[i] = b
	}
	return k
}

var (
	testPriv = fill[noise.PrivateKey](0x11) // ERER…ERE=
	testGW   = registry.Gateway{Name: "gw1", PublicKey: fill[registry.Key](0x22), Endpoint: "198.18.0.1:51820"}
	testDev  = registry.Device{User: "alice", Name: "phone",
		Addresses: []netip.Addr{netip.MustParseAddr("100.80.3.7"), netip.MustParseAddr("2001:db8:80::3:7")}}
	testSite = Site{MTU: 1420, Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24"), netip.MustParsePrefix("2001:db8:2::/64")},
		DNS: []netip.Addr{netip.MustParseAddr("198.18.2.53"), netip.MustParseAddr("2001:db8:2::53")}, Search: []string{"corp.example", "lab.example"},
		Keepalive: 25, API: "https://198.18.0.1:8443", Control: netip.MustParseAddrPort("100.80.0.1:51821")}
)

// TestExportConfig: the exact text of exported configs.
func TestExportConfig(t *testing.T) {
	v6gw := testGW
	v6gw.Endpoint = "[2001:db8:ff::2]:51820"
	named := testGW
	named.Endpoint = "vpn.corp.example:443"
	v4only := testDev
	v4only.Addresses = v4only.Addresses[:1]
	for _, tc := range []struct {
		name string
		dev  registry.Device
		gw   registry.Gateway
		site Site
		want string
	}{
		{"dual stack, DNS and search domains", testDev, testGW, testSite, `# alice/phone through ptun gateway gw1
[Interface]
PrivateKey = ERERERERERERERERERERERERERERERERERERERERERE=
Address = 100.80.3.7/32, 2001:db8:80::3:7/128
DNS = 198.18.2.53, 2001:db8:2::53, corp.example, lab.example
MTU = 1420

[Peer]
PublicKey = IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI=
Endpoint = 198.18.0.1:51820
AllowedIPs = 198.18.2.0/24, 2001:db8:2::/64, 100.80.0.1/32
PersistentKeepalive = 25
`},
		{"no DNS, no keepalive set (25), IPv6 endpoint, the routes cover the gateway", v4only, v6gw,
			Site{MTU: 1280, Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, Control: testSite.Control}, `# alice/phone through ptun gateway gw1
[Interface]
PrivateKey = ERERERERERERERERERERERERERERERERERERERERERE=
Address = 100.80.3.7/32
MTU = 1280

[Peer]
PublicKey = IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI=
Endpoint = [2001:db8:ff::2]:51820
AllowedIPs = 0.0.0.0/0
PersistentKeepalive = 25
`},
		{"search domain only, site keepalive, hostname endpoint, no control address", v4only, named,
			Site{MTU: 1420, Keepalive: 10, Routes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}, Search: []string{"corp.example"}},
			`# alice/phone through ptun gateway gw1
[Interface]
PrivateKey = ERERERERERERERERERERERERERERERERERERERERERE=
Address = 100.80.3.7/32
DNS = corp.example
MTU = 1420

[Peer]
PublicKey = IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI=
Endpoint = vpn.corp.example:443
AllowedIPs = 198.18.2.0/24
PersistentKeepalive = 10
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ExportConfig(tc.dev, testPriv, tc.gw, tc.site)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

// TestExportConfigRefuses: a config that could not work is an error, not
// a text.
func TestExportConfigRefuses(t *testing.T) {
	noAddr := testDev
	noAddr.Addresses = nil
	noRoutes := testSite
	noRoutes.Routes = nil
	noKey := testGW
	noKey.PublicKey = registry.Key{}
	for name, f := range map[string]func() (string, error){
		"no address":   func() (string, error) { return ExportConfig(noAddr, testPriv, testGW, testSite) },
		"no route":     func() (string, error) { return ExportConfig(testDev, testPriv, testGW, noRoutes) },
		"zero key":     func() (string, error) { return ExportConfig(testDev, noise.PrivateKey{}, testGW, testSite) },
		"no gw key":    func() (string, error) { return ExportConfig(testDev, testPriv, noKey, testSite) },
		"no port":      func() (string, error) { return exportWithEndpoint("198.18.0.1") },
		"port 0":       func() (string, error) { return exportWithEndpoint("198.18.0.1:0") },
		"any address":  func() (string, error) { return exportWithEndpoint("0.0.0.0:51820") },
		"spaces":       func() (string, error) { return exportWithEndpoint("a b:51820") },
		"a new line":   func() (string, error) { return exportWithEndpoint("a\nDNS=1.2.3.4:51820") },
		"empty":        func() (string, error) { return exportWithEndpoint("") },
		"port too big": func() (string, error) { return exportWithEndpoint("vpn.example:65536") },
	} {
		if s, err := f(); err == nil {
			t.Errorf("%s: no error; got\n%s", name, s)
		}
	}
}

func exportWithEndpoint(ep string) (string, error) {
	gw := testGW
	gw.Endpoint = ep
	return ExportConfig(testDev, testPriv, gw, testSite)
}

// decodeQR reads the QR code in img with gozxing, a decoder written
// apart from the encoder.
func decodeQR(t *testing.T, img image.Image) string {
	t.Helper()
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		t.Fatal(err)
	}
	res, err := qrcode.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]interface{}{gozxing.DecodeHintType_PURE_BARCODE: true})
	if err != nil {
		t.Fatalf("decoding the QR code: %v", err)
	}
	return res.GetText()
}

// TestQRPNG: the PNG decodes back to the exact config.
func TestQRPNG(t *testing.T) {
	conf, err := ExportConfig(testDev, testPriv, testGW, testSite)
	if err != nil {
		t.Fatal(err)
	}
	b, err := QRPNG(conf)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if got := decodeQR(t, img); got != conf {
		t.Errorf("the QR code says:\n%q\nwant:\n%q", got, conf)
	}
	// Black on white with a quiet zone: the corner pixel is white.
	if r, g, bl, _ := img.At(0, 0).RGBA(); r != 0xffff || g != 0xffff || bl != 0xffff {
		t.Errorf("corner pixel %v, want white", img.At(0, 0))
	}
}

// TestQRTerminal: the terminal drawing, read back module by module into
// an image, decodes to the exact config; every line sets its colors and
// resets them.
func TestQRTerminal(t *testing.T) {
	conf, err := ExportConfig(testDev, testPriv, testGW, testSite)
	if err != nil {
		t.Fatal(err)
	}
	s, err := QRTerminal(conf)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	var rows [][]bool // true: light
	for i, line := range lines {
		body, ok := strings.CutPrefix(line, "\x1b[40;97m")
		if body, ok = strings.CutSuffix(body, "\x1b[0m"); !ok {
			t.Fatalf("line %d does not set and reset its colors: %q", i, line)
		}
		top, bottom := []bool{}, []bool{}
		for _, r := range body {
			switch r {
			case '█':
				top, bottom = append(top, true), append(bottom, true)
			case '▀':
				top, bottom = append(top, true), append(bottom, false)
			case '▄':
				top, bottom = append(top, false), append(bottom, true)
			case ' ':
				top, bottom = append(top, false), append(bottom, false)
			default:
				t.Fatalf("line %d has %q", i, r)
			}
		}
		rows = append(rows, top, bottom)
	}
	width := len(rows[0])
	if len(rows) != width+1 { // an odd side: the last half line is quiet zone
		t.Fatalf("%d rows of %d modules: not square", len(rows), width)
	}
	const scale = 4
	img := image.NewGray(image.Rect(0, 0, width*scale, width*scale))
	for y := 0; y < width*scale; y++ {
		for x := 0; x < width*scale; x++ {
			if len(rows[y/scale]) != width {
				t.Fatalf("row %d has %d modules, want %d", y/scale, len(rows[y/scale]), width)
			}
			c := color.Gray{0}
			if rows[y/scale][x/scale] {
				c = color.Gray{255}
			}
			img.SetGray(x, y, c)
		}
	}
	for i := 0; i < qrBorder; i++ {
		for x := range width {
			if !rows[i][x] || !rows[width-1-i][x] || !rows[x][i] || !rows[x][width-1-i] {
				t.Fatalf("the quiet zone has a dark module at %d,%d", x, i)
			}
		}
	}
	if got := decodeQR(t, img); got != conf {
		t.Errorf("the terminal's QR code says:\n%q\nwant:\n%q", got, conf)
	}
}

// TestQRTooLong: a config too long for a QR code says so.
func TestQRTooLong(t *testing.T) {
	long := strings.Repeat("AllowedIPs = 198.18.2.0/24\n", 200) // 5400 bytes: over 2953
	if err := CheckQR(long); err == nil || !strings.Contains(err.Error(), "without --qr") {
		t.Errorf("CheckQR of %d bytes: %v", len(long), err)
	}
	if _, err := QRPNG(long); err == nil {
		t.Error("QRPNG of a too long text succeeded")
	}
}

// newTestGateway makes a gateway state folder with a SQLite registry.
func newTestGateway(t *testing.T, pools ...string) (*Config, registry.Registry) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "gw")
	o := InitOptions{Config: Config{Name: "gw1", Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"),
		API: netip.MustParseAddrPort("198.18.0.1:8443"), Site: testSite}}
	for _, p := range pools {
		o.Pools = append(o.Pools, netip.MustParsePrefix(p))
	}
	ctx := context.Background()
	if _, err := Init(ctx, dir, o); err != nil {
		t.Fatal(err)
	}
	cfg, reg, err := Load(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return cfg, reg
}

// TestExport: the device is made with a key whose private half is only in
// the config, audited as an export by the actor; refusals write nothing.
func TestExport(t *testing.T) {
	cfg, reg := newTestGateway(t, "100.80.0.0/16", "2001:db8:80::/64")
	ctx := registry.WithActor(context.Background(), "cli:tester")
	if _, err := reg.AddUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	var checked string
	conf, dev, err := Export(ctx, reg, cfg, ExportRequest{User: "alice", Device: "phone",
		Check: func(s string) error { checked = s; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if len(checked) < len(conf) || !strings.Contains(checked, "255.255.255.255/32") {
		t.Errorf("Check saw a dry run of %d bytes, the config has %d:\n%s", len(checked), len(conf), checked)
	}
	if len(dev.Addresses) != 2 {
		t.Fatalf("device %+v: want an address from each pool", dev)
	}
	var privText string
	for _, line := range strings.Split(conf, "\n") {
		if v, ok := strings.CutPrefix(line, "PrivateKey = "); ok {
			privText = v
		}
	}
	priv, err := noise.ParsePrivateKeyBase64(privText)
	if err != nil {
		t.Fatalf("the config's private key %q: %v", privText, err)
	}
	if registry.Key(priv.PublicKey()) != dev.PublicKey {
		t.Error("the registry's key is not the config's private key's")
	}
	gws, _ := reg.ListGateways(ctx)
	site := cfg.Site
	site.Control = netip.MustParseAddrPort("100.80.0.1:51821") // the first IPv4 pool's, as Run serves it
	want, _ := ExportConfig(dev, priv, gws[0], site)
	if conf != want || !strings.Contains(conf, "\nAllowedIPs = 198.18.2.0/24, 2001:db8:2::/64, 100.80.0.1/32\n") {
		t.Errorf("config:\n%s\nwant:\n%s", conf, want)
	}
	entries, err := reg.Audit(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	last := entries[len(entries)-1]
	if last.Action != "device.create" || last.Actor != "cli:tester" || last.Target != "alice/phone" ||
		!strings.HasSuffix(last.Detail, " via export") || !strings.Contains(last.Detail, dev.Addresses[0].String()) {
		t.Errorf("audit entry %+v, want alice/phone's creation via export by cli:tester", last)
	}

	// Refusals, each before anything is written.
	before, _, _ := reg.Changes(ctx, 0)
	for name, tc := range map[string]struct {
		req  ExportRequest
		want error
	}{
		"unknown user":    {ExportRequest{User: "bob", Device: "phone"}, registry.ErrNotFound},
		"name taken":      {ExportRequest{User: "alice", Device: "phone"}, registry.ErrExists},
		"bad device name": {ExportRequest{User: "alice", Device: "-x"}, nil},
		"bad user name":   {ExportRequest{User: "al ice", Device: "tablet"}, registry.ErrInvalid},
		"no such gateway": {ExportRequest{User: "alice", Device: "tablet", Gateway: "gw9"}, ErrNoSuchGateway},
		"check refuses":   {ExportRequest{User: "alice", Device: "tablet", Check: func(string) error { return errors.New("too big") }}, nil},
	} {
		_, _, err := Export(ctx, reg, cfg, tc.req)
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if after, _, _ := reg.Changes(ctx, 0); len(after) != len(before) {
		t.Errorf("refused exports changed the registry: %d changes, then %d", len(before), len(after))
	}

	// --gateway: another gateway of the registry.
	if _, err := reg.AddGateway(ctx, registry.Gateway{Name: "gw2", PublicKey: fill[registry.Key](0x33), Endpoint: "198.18.0.9:51820"}); err != nil {
		t.Fatal(err)
	}
	conf, _, err = Export(ctx, reg, cfg, ExportRequest{User: "alice", Device: "tablet", Gateway: "gw2"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(conf, "Endpoint = 198.18.0.9:51820\n") || !strings.Contains(conf, "PublicKey = MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM=\n") {
		t.Errorf("--gateway gw2's config:\n%s", conf)
	}
}

// TestExportPoolExhausted: no free address is an error that writes
// nothing.
func TestExportPoolExhausted(t *testing.T) {
	cfg, reg := newTestGateway(t, "100.80.0.0/30") // one address for a device
	ctx := context.Background()
	reg.AddUser(ctx, "alice")
	if _, _, err := Export(ctx, reg, cfg, ExportRequest{User: "alice", Device: "phone"}); err != nil {
		t.Fatal(err)
	}
	_, _, err := Export(ctx, reg, cfg, ExportRequest{User: "alice", Device: "tablet"})
	if !errors.Is(err, registry.ErrPoolExhausted) {
		t.Fatalf("second device in a /30: %v", err)
	}
	if devs, _ := reg.ListDevices(ctx, registry.DeviceFilter{IncludeRevoked: true}); len(devs) != 1 {
		t.Errorf("%d devices after a refused export, want 1", len(devs))
	}
}

// FuzzExportEndpoint: whatever endpoint the registry holds, the config
// either is refused or has it on one Endpoint line that wg-quick reads
// back as HOST:PORT, and no other line than a clean config's: an endpoint
// cannot add a setting.
func FuzzExportEndpoint(f *testing.F) {
	for _, s := range []string{"198.18.0.1:51820", "[2001:db8::1]:51820", "vpn.corp.example:443", "[::ffff:198.18.0.1]:1",
		"a\nDNS = 1.2.3.4:1", "x:0", "", ":51820", "[fe80::1%eth0]:51820", "vpn.example.:65535"} {
		f.Add(s)
	}
	clean, err := ExportConfig(testDev, testPriv, testGW, testSite)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ep string) {
		conf, err := exportWithEndpoint(ep)
		if err != nil {
			return
		}
		var got string
		lines, cleanLines := strings.Split(conf, "\n"), strings.Split(clean, "\n")
		if len(lines) != len(cleanLines) {
			t.Fatalf("endpoint %q: %d lines, want %d:\n%s", ep, len(lines), len(cleanLines), conf)
		}
		for i, line := range lines {
			if v, ok := strings.CutPrefix(line, "Endpoint = "); ok {
				got = v
			} else if line != cleanLines[i] {
				t.Fatalf("endpoint %q changed line %q to %q", ep, cleanLines[i], line)
			}
		}
		host, port, err := net.SplitHostPort(got)
		if err != nil || host == "" || port == "" || strings.ContainsAny(got, " \t#,=\r\n") {
			t.Fatalf("endpoint %q written as %q", ep, got)
		}
	})
}
