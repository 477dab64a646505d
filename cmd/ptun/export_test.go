package main

import (
	"context"
	"encoding/json"
	"image/png"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"

	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// exportGateway makes a gateway in a temporary folder with user alice and
// returns its state folder.
func exportGateway(t *testing.T, pools ...string) string {
	t.Helper()
	state := filepath.Join(t.TempDir(), "gw")
	args := []string{"gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443",
		"--route", "198.18.2.0/24", "--dns", "198.18.2.53", "--search", "corp.example"}
	for _, p := range pools {
		args = append(args, "--pool", p)
	}
	ok(t, args...)
	ok(t, "gateway", "user", "add", "alice", "--state", state)
	return state
}

// devicesOf lists state's devices, revoked ones too.
func devicesOf(t *testing.T, state string) []registry.Device {
	t.Helper()
	var devs []registry.Device
	if err := json.Unmarshal([]byte(ok(t, "gateway", "devices", "--all", "--json", "--state", state)), &devs); err != nil {
		t.Fatal(err)
	}
	return devs
}

// confKey returns the private key of a wg-quick config.
func confKey(t *testing.T, conf string) noise.PrivateKey {
	t.Helper()
	for _, line := range strings.Split(conf, "\n") {
		if v, found := strings.CutPrefix(line, "PrivateKey = "); found {
			k, err := noise.ParsePrivateKeyBase64(v)
			if err != nil {
				t.Fatalf("PrivateKey %q: %v", v, err)
			}
			return k
		}
	}
	t.Fatalf("no PrivateKey in:\n%s", conf)
	return noise.PrivateKey{}
}

// TestGatewayExport: export prints exactly the device's config on stdout
// (and nothing else), with a key that is the registry's device's and is
// stored nowhere in the state folder; the audit log names the actor; --qr
// FILE writes a new 0600 PNG that decodes to the same text; --qr - prints
// the terminal QR code after the config; flags go before or after the
// arguments.
func TestGatewayExport(t *testing.T) {
	state := exportGateway(t, "100.80.0.0/16", "2001:db8:80::/64")
	t.Setenv("SUDO_USER", "tester")
	var code int
	out, errOut := capture(t, func() { code = run([]string{"gateway", "export", "--state", state, "alice", "phone"}) })
	if code != 0 {
		t.Fatalf("export: exit %d: %s", code, errOut)
	}
	devs := devicesOf(t, state)
	if len(devs) != 1 || devs[0].User != "alice" || devs[0].Name != "phone" || len(devs[0].Addresses) != 2 {
		t.Fatalf("devices after export: %+v", devs)
	}
	dev := devs[0]
	priv := confKey(t, out)
	if registry.Key(priv.PublicKey()) != dev.PublicKey {
		t.Fatal("the config's private key is not the registered device's")
	}
	cfg, reg, err := gateway.Load(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	gws, _ := reg.ListGateways(context.Background())
	site := cfg.Site
	site.Control = netip.AddrPortFrom(netip.MustParseAddr("100.80.0.1"), gateway.ControlPort) // the gateway's tunnel address
	want, err := gateway.ExportConfig(dev, priv, gws[0], site)
	if err != nil {
		t.Fatal(err)
	}
	if out != want {
		t.Errorf("stdout:\n%s\nwant exactly:\n%s", out, want)
	}
	if !strings.Contains(errOut, "alice/phone made") || strings.Contains(errOut, priv.Base64()) {
		t.Errorf("stderr: %q", errOut)
	}
	entries, _ := reg.Audit(context.Background(), 0, 1000)
	if e := entries[len(entries)-1]; e.Action != "device.create" || e.Actor != "cli:tester" || e.Target != "alice/phone" || !strings.HasSuffix(e.Detail, "via export") {
		t.Errorf("the last audit entry %+v, want alice/phone's creation via export by cli:tester", e)
	}
	// The private key is stored nowhere in the state folder (the SQLite
	// registry included).
	filepath.WalkDir(state, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), priv.Base64()) || strings.Contains(string(b), string(priv[:])) {
			t.Errorf("%s holds the exported private key", path)
		}
		return nil
	})

	// --qr FILE, after the arguments.
	pngPath := filepath.Join(t.TempDir(), "laptop.png")
	out = ok(t, "gateway", "export", "alice", "laptop", "--qr", pngPath, "--state", state)
	fi, err := os.Stat(pngPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v, want mode 0600", pngPath, fi, err)
	}
	f, _ := os.Open(pngPath)
	img, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	bmp, _ := gozxing.NewBinaryBitmapFromImage(img)
	// PURE_BARCODE: the image is the symbol as drawn, not a photograph;
	// without it gozxing's finder-pattern search misses about 1 in 60.
	res, err := qrcode.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]interface{}{gozxing.DecodeHintType_PURE_BARCODE: true})
	if err != nil {
		t.Fatalf("decoding %s: %v", pngPath, err)
	}
	if res.GetText() != out || !strings.Contains(out, "# alice/laptop ") {
		t.Errorf("the QR code says:\n%s\nstdout said:\n%s", res.GetText(), out)
	}

	// --qr -: the config, then the QR code.
	out = ok(t, "gateway", "export", "--qr", "-", "alice", "tablet", "--state", state)
	conf, qr, found := strings.Cut(out, "PersistentKeepalive = 25\n")
	if !found || !strings.HasPrefix(conf, "# alice/tablet ") || !strings.HasPrefix(qr, "\x1b[40;97m█") || strings.Count(qr, "\n") < 20 {
		t.Errorf("--qr - printed:\n%s", out)
	}
	if term, _ := gateway.QRTerminal(conf + "PersistentKeepalive = 25\n"); term != qr {
		t.Error("the terminal QR code is not the config's")
	}
	if n := len(devicesOf(t, state)); n != 3 {
		t.Errorf("%d devices, want 3", n)
	}
}

// TestGatewayExportRefuses: each refusal exits non-zero with one line on
// stderr saying what to do, prints nothing on stdout, and writes nothing:
// no device, no PNG (and an existing file is left as it was).
func TestGatewayExportRefuses(t *testing.T) {
	state := exportGateway(t, "100.80.0.0/30") // room for one device
	ok(t, "gateway", "export", "alice", "phone", "--state", state)
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing.png")
	os.WriteFile(existing, []byte("keep me"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		says string
	}{
		{"unknown user", []string{"bob", "laptop"}, 1, `no user "bob"`},
		{"device name taken", []string{"alice", "phone"}, 1, "choose another name"},
		{"no free address", []string{"alice", "laptop"}, 1, "add a larger pool"},
		{"bad device name", []string{"alice", "lap/top"}, 1, "not a valid name"},
		{"bad user name", []string{"al ice", "laptop"}, 1, "use only letters"},
		{"no such gateway", []string{"alice", "laptop", "--gateway", "gw9"}, 1, "name one with --gateway"},
		{"existing PNG", []string{"alice", "laptop", "--qr", existing}, 1, "never overwrites"},
		{"one argument", []string{"alice"}, 2, "give USER and DEVICE"},
		{"three arguments", []string{"alice", "a", "b"}, 2, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pngPath := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".png")
			args := append([]string{"gateway", "export", "--state", state}, tc.args...)
			if !strings.Contains(tc.name, "PNG") {
				args = append(args, "--qr", pngPath)
			}
			var code int
			out, errOut := capture(t, func() { code = run(args) })
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			if out != "" {
				t.Errorf("stdout:\n%s", out)
			}
			if !strings.Contains(errOut, tc.says) || (tc.code == 1 && strings.Count(errOut, "\n") != 1) {
				t.Errorf("stderr %q, want one line saying %q", errOut, tc.says)
			}
			if _, err := os.Lstat(pngPath); err == nil {
				t.Errorf("%s was written", pngPath)
			}
			if devs := devicesOf(t, state); len(devs) != 1 || devs[0].Name != "phone" {
				t.Errorf("devices after a refused export: %+v", devs)
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Errorf("the existing file was changed: %q", b)
	}
}

// TestGatewayExportHelp: `ptun gateway export -h` shows its own usage with
// an example and its flags; `ptun gateway -h` lists export.
func TestGatewayExportHelp(t *testing.T) {
	out := ok(t, "gateway", "export", "-h")
	for _, s := range []string{"Usage: ptun gateway export USER DEVICE [--qr FILE.png | --qr -]", "Example", "-qr FILE.png", "-gateway", "-state", "not\nstored anywhere"} {
		if !strings.Contains(out, s) {
			t.Errorf("ptun gateway export -h does not say %q:\n%s", s, out)
		}
	}
	if out := ok(t, "gateway", "-h"); !strings.Contains(out, "  export USER DEVICE [--qr FILE.png | --qr -]") {
		t.Errorf("ptun gateway -h does not list export:\n%s", out)
	}
}
