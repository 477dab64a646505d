package main

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
)

// initGateway makes a gateway with a SQLite registry in a temporary folder
// and returns the folder.
func initGateway(t *testing.T, extra ...string) string {
	t.Helper()
	state := filepath.Join(t.TempDir(), "gw")
	ok(t, append([]string{"gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443",
		"--pool", "100.80.0.0/16"}, extra...)...)
	return state
}

// fails runs ptun with args, fails t unless it exits with status code, and
// returns stderr.
func fails(t *testing.T, code int, args ...string) string {
	t.Helper()
	var got int
	out, errOut := capture(t, func() { got = run(args) })
	if got != code {
		t.Fatalf("ptun %s: exit %d, want %d\n%s%s", strings.Join(args, " "), got, code, out, errOut)
	}
	return errOut
}

// TestGatewayInitTLS: init --tls records the OpenConnect listener, with
// the endpoint's address for :PORT, in the registry (where devices'
// offers read it) and says so; without --tls there is none.
func TestGatewayInitTLS(t *testing.T) {
	for _, c := range []struct{ tls, want string }{{"", ""}, {":443", "https://198.18.0.1:443"}, {"198.18.0.5:8443", "https://198.18.0.5:8443"}} {
		state := filepath.Join(t.TempDir(), "gw")
		args := []string{"gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443", "--pool", "100.80.0.0/16"}
		if c.tls != "" {
			args = append(args, "--tls", c.tls)
		}
		out := ok(t, args...)
		if said := strings.Contains(out, "OpenConnect listener"); said != (c.want != "") || !strings.Contains(out, c.want) {
			t.Errorf("--tls %q: init says\n%s", c.tls, out)
		}
		_, reg, err := gateway.Load(context.Background(), state)
		if err != nil {
			t.Fatal(err)
		}
		gws, err := reg.ListGateways(context.Background())
		reg.Close()
		if err != nil || len(gws) != 1 || gws[0].TLS != c.want {
			t.Errorf("--tls %q: gateways %+v (%v), want TLS %q", c.tls, gws, err, c.want)
		}
	}
}

// TestGatewayInitCertificate: init --cert --key takes the operator's
// certificate, and the invites carry its pin; --cert alone is refused in
// one line and makes no state folder.
func TestGatewayInitCertificate(t *testing.T) {
	certPEM, keyPEM, err := enroll.NewCertificate([]string{"vpn.example"})
	if err != nil {
		t.Fatal(err)
	}
	files := t.TempDir()
	certFile, keyFile := filepath.Join(files, "vpn.pem"), filepath.Join(files, "vpn.key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	want, err := enroll.PinOfPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "gw")
	out := ok(t, "gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443",
		"--pool", "100.80.0.0/16", "--cert", certFile, "--key", keyFile)
	if !strings.Contains(out, want.String()) || !strings.Contains(out, "copied from "+certFile) {
		t.Errorf("init does not print the certificate's pin %v and where it came from:\n%s", want, out)
	}
	ok(t, "gateway", "user", "add", "alice", "--state", state)
	lines := strings.Split(strings.TrimSpace(ok(t, "gateway", "invite", "alice", "--state", state)), "\n")
	inv, err := enroll.ParseInvite(lines[len(lines)-1])
	if err != nil || inv.Pin != want {
		t.Errorf("the invite %q (%v) does not carry the pin %v", lines[len(lines)-1], err, want)
	}

	other := filepath.Join(t.TempDir(), "gw")
	errOut := fails(t, 1, "gateway", "init", "--state", other, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443",
		"--pool", "100.80.0.0/16", "--cert", certFile)
	if !strings.Contains(errOut, "--cert and --key go together") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("--cert without --key: stderr %q, want one line saying both go together", errOut)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("a refused init made %s (%v)", other, err)
	}
}

// TestGatewayBackup: backup writes a copy of the registry (0600) that
// opens with the user in it, refuses to overwrite it, and wants a FILE.
func TestGatewayBackup(t *testing.T) {
	state := initGateway(t)
	ok(t, "gateway", "user", "add", "alice", "--group", "eng", "--state", state)
	file := filepath.Join(t.TempDir(), "backup.db")
	if out := ok(t, "gateway", "backup", file, "--state", state); !strings.Contains(out, "backed up to "+file) {
		t.Errorf("backup says %q", out)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the backup: %v, %v; want mode 0600", fi, err)
	}
	reg, err := registry.Open(context.Background(), file, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	users, err := reg.ListUsers(context.Background())
	reg.Close()
	if err != nil || len(users) != 1 || users[0].Name != "alice" {
		t.Errorf("users in the backup: %+v, %v", users, err)
	}
	if errOut := fails(t, 1, "gateway", "backup", file, "--state", state); !strings.Contains(errOut, "exists already") {
		t.Errorf("a backup over an existing file: %q", errOut)
	}
	fails(t, 2, "gateway", "backup", "--state", state)
}

// TestGatewaySchemaTooNew: an administrative command on a registry that a
// newer ptun migrated exits non-zero with the registry's one-line message
// (which schema, which this ptun knows, what to do), and changes nothing.
func TestGatewaySchemaTooNew(t *testing.T) {
	state := initGateway(t)
	c, err := gateway.LoadConfig(state)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", c.DBPath(state))
	if err != nil {
		t.Fatal(err)
	}
	newer := registry.SchemaVersion() + 1
	if _, err := db.Exec(`INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, 0)`, newer, "9999_future.sql"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, args := range [][]string{
		{"gateway", "users", "--state", state},
		{"gateway", "user", "add", "bob", "--state", state},
	} {
		errOut := fails(t, 1, args...)
		for _, want := range []string{"registry schema is newer than this ptun",
			"schema version " + strconv.Itoa(newer), "versions up to " + strconv.Itoa(registry.SchemaVersion()), "restore the backup"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("ptun %s: stderr %q does not say %q", strings.Join(args, " "), errOut, want)
			}
		}
		if strings.Count(errOut, "\n") != 1 {
			t.Errorf("ptun %s: stderr is not one line: %q", strings.Join(args, " "), errOut)
		}
	}
	// The refused commands changed nothing: no migration, no user.
	db, err = sql.Open("sqlite", c.DBPath(state))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version, users int
	if err := db.QueryRow(`SELECT MAX(version) FROM schema_version`).Scan(&version); err != nil || version != newer {
		t.Errorf("schema version %d (%v), want %d left alone", version, err, newer)
	}
	if err := db.QueryRow(`SELECT COUNT(*) FROM users`).Scan(&users); err != nil || users != 0 {
		t.Errorf("%d users (%v) after refused commands, want 0", users, err)
	}
}

// TestGatewayDeviceRename: device rename USER/DEVICE NEW renames the
// device in the registry (key and addresses kept, audited with the CLI's
// actor); a taken or bad name, an unknown or revoked device, and missing
// arguments are refused and change nothing.
func TestGatewayDeviceRename(t *testing.T) {
	state := initGateway(t)
	ok(t, "gateway", "user", "add", "alice", "--state", state)
	ctx := context.Background()
	withReg := func(f func(reg registry.Registry)) {
		t.Helper()
		_, reg, err := gateway.Load(ctx, state)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		f(reg)
	}
	var laptop registry.Device
	withReg(func(reg registry.Registry) {
		var err error
		if laptop, err = reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "laptop", PublicKey: registry.Key{1}}); err != nil {
			t.Fatal(err)
		}
		if _, err := reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "phone", PublicKey: registry.Key{2}}); err != nil {
			t.Fatal(err)
		}
		old, err := reg.CreateDevice(ctx, "alice", registry.DeviceSpec{Name: "tablet", PublicKey: registry.Key{3}})
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.RevokeDevice(ctx, old.ID); err != nil {
			t.Fatal(err)
		}
	})
	if out := ok(t, "gateway", "device", "rename", "alice/laptop", "work-laptop", "--state", state); !strings.Contains(out, "alice/laptop renamed alice/work-laptop") {
		t.Errorf("rename says %q", out)
	}
	for _, c := range []struct {
		code int
		args []string
	}{
		{1, []string{"alice/phone", "work-laptop"}}, // taken
		{1, []string{"alice/phone", "my phone"}},    // bad name
		{1, []string{"alice/laptop", "x"}},          // renamed away
		{1, []string{"alice/tablet", "x"}},          // revoked
		{1, []string{"bob/phone", "x"}},             // no such user
		{2, []string{"alice/phone"}},
		{2, []string{"alice-phone", "x"}},
		{2, []string{"alice/phone", "x", "y"}},
	} {
		fails(t, c.code, append(append([]string{"gateway", "device", "rename"}, c.args...), "--state", state)...)
	}
	fails(t, 2, "gateway", "device", "frobnicate", "alice/phone", "x", "--state", state)
	fails(t, 2, "gateway", "device", "--state", state)
	withReg(func(reg registry.Registry) {
		d, err := reg.Device(ctx, laptop.ID)
		if err != nil || d.Name != "work-laptop" || d.PublicKey != laptop.PublicKey || len(d.Addresses) != 1 || d.Addresses[0] != laptop.Addresses[0] {
			t.Errorf("the renamed device %+v (%v), was %+v", d, err, laptop)
		}
		if ds, _ := reg.ListDevices(ctx, registry.DeviceFilter{User: "alice", Name: "phone"}); len(ds) != 1 {
			t.Errorf("phone after the refused renames: %+v", ds)
		}
		es, err := reg.Audit(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var renames []string
		for _, e := range es {
			if e.Action == "device.rename" {
				renames = append(renames, e.Actor+" "+e.Target+" "+e.Detail)
			}
		}
		if s := strings.Join(renames, ","); s != gateway.Actor()+" alice/work-laptop laptop" {
			t.Errorf("audit of renames: %q", s)
		}
	})
	if out := ok(t, "gateway", "device", "-h"); !strings.Contains(out, "device rename USER/DEVICE NEW") || !strings.Contains(out, "gateway device rename alice/phone") {
		t.Errorf("gateway device -h:\n%s", out)
	}
}
