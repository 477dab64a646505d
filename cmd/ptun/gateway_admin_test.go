package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
)

// withStdin runs f with stdin reading in (not a terminal).
func withStdin(t *testing.T, in string, f func()) {
	t.Helper()
	oldIn, oldTerm := stdin, stdinIsTerminal
	stdin, stdinIsTerminal = strings.NewReader(in), func() bool { return false }
	defer func() { stdin, stdinIsTerminal = oldIn, oldTerm }()
	f()
}

// TestGatewayAdminCommands: admin add (password from stdin, or generated
// and printed once), admins, admin token (printed once, works), admin
// remove (the token stops working), each in the audit log with the CLI's
// actor; init's --admin and --admin-plain.
func TestGatewayAdminCommands(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "gw")
	out := ok(t, "gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443", "--pool", "100.80.0.0/16")
	if !strings.Contains(out, "admin API https://127.0.0.1:8444/api/v1/admin/") {
		t.Errorf("init output does not name the admin API:\n%s", out)
	}
	cfg, err := gateway.LoadConfig(state)
	if err != nil || cfg.Admin != gateway.DefaultAdmin || cfg.AdminPlain {
		t.Fatalf("config %+v %v: want the admin API on %v, HTTPS", cfg, err, gateway.DefaultAdmin)
	}

	withStdin(t, "correct horse battery\n", func() { ok(t, "gateway", "admin", "add", "root", "--state", state) })
	withStdin(t, "short\n", func() { fails(t, 1, "gateway", "admin", "add", "weak", "--state", state) })
	withStdin(t, "", func() { fails(t, 1, "gateway", "admin", "add", "empty", "--state", state) })
	withStdin(t, "another good one\n", func() { fails(t, 1, "gateway", "admin", "add", "root", "--state", state) })
	withStdin(t, "x\n", func() { fails(t, 1, "gateway", "admin", "add", "<b>", "--state", state) })
	var gen string
	withStdin(t, "ignored\n", func() { gen = ok(t, "gateway", "admin", "add", "ops", "--generate", "--state", state) })
	lines := strings.Split(strings.TrimSpace(gen), "\n")
	password := lines[len(lines)-1]
	if len(password) < 20 || strings.Contains(password, " ") {
		t.Fatalf("generated password: %q", gen)
	}
	if out := ok(t, "gateway", "admins", "--state", state); !strings.Contains(out, "ops\t") || !strings.Contains(out, "root\t") {
		t.Errorf("admins:\n%s", out)
	}
	out = ok(t, "gateway", "admin", "token", "root", "--state", state)
	lines = strings.Split(strings.TrimSpace(out), "\n")
	token := lines[len(lines)-1]
	fails(t, 1, "gateway", "admin", "token", "nobody", "--state", state)
	fails(t, 2, "gateway", "admin", "frobnicate", "root", "--state", state)

	ctx := context.Background()
	check := func(f func(reg registry.Registry)) {
		t.Helper()
		_, reg, err := gateway.Load(ctx, state)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		f(reg)
	}
	check(func(reg registry.Registry) {
		if _, err := reg.CheckAdminPassword(ctx, "root", "correct horse battery"); err != nil {
			t.Errorf("root's password from stdin: %v", err)
		}
		if _, err := reg.CheckAdminPassword(ctx, "ops", password); err != nil {
			t.Errorf("ops's generated password: %v", err)
		}
		if a, _, err := reg.AdminByToken(ctx, token); err != nil || a.Name != "root" {
			t.Errorf("the printed token: %v %v", a, err)
		}
	})
	if out := ok(t, "gateway", "admins", "--state", state); !strings.Contains(out, "tokens 1:") {
		t.Errorf("admins does not list root's token:\n%s", out)
	}
	ok(t, "gateway", "admin", "remove", "root", "--state", state)
	fails(t, 1, "gateway", "admin", "remove", "root", "--state", state)
	check(func(reg registry.Registry) {
		if _, _, err := reg.AdminByToken(ctx, token); err == nil {
			t.Error("the token of a removed admin still works")
		}
		es, err := reg.Audit(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			if strings.HasPrefix(e.Action, "admin.") {
				if e.Actor != gateway.Actor() {
					t.Errorf("audit %+v: actor, want %s", e, gateway.Actor())
				}
				got = append(got, e.Action+" "+e.Target)
			}
		}
		if s := strings.Join(got, ","); s != "admin.add root,admin.add ops,admin.token.create root,admin.remove root" {
			t.Errorf("audit: %s", s)
		}
	})
	if out := ok(t, "gateway", "admins", "--state", state); strings.Contains(out, "root") {
		t.Errorf("admins lists a removed admin:\n%s", out)
	}

	// --admin off, a plain loopback one, and a plain one that is not loopback.
	off := filepath.Join(dir, "off")
	ok(t, "gateway", "init", "--state", off, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443", "--pool", "100.80.0.0/16", "--admin", "off")
	if c, _ := gateway.LoadConfig(off); c == nil || c.Admin.IsValid() {
		t.Errorf("--admin off: %+v", c)
	}
	plain := filepath.Join(dir, "plain")
	out = ok(t, "gateway", "init", "--state", plain, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443", "--pool", "100.80.0.0/16",
		"--admin", "[::1]:9444", "--admin-plain")
	if !strings.Contains(out, "http://[::1]:9444/api/v1/admin/") {
		t.Errorf("--admin-plain init output:\n%s", out)
	}
	errOut := fails(t, 1, "gateway", "init", "--state", filepath.Join(dir, "bad"), "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443",
		"--pool", "100.80.0.0/16", "--admin", "198.18.0.1:8444", "--admin-plain")
	if !strings.Contains(errOut, "loopback") {
		t.Errorf("--admin-plain on a non-loopback address: %s", errOut)
	}
	fails(t, 1, "gateway", "init", "--state", filepath.Join(dir, "bad2"), "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443",
		"--pool", "100.80.0.0/16", "--admin", "localhost:8444")
}

// TestGatewayUserPasswd: user passwd sets a user's TLS password from stdin
// or generated (printed once), --clear removes it; a short, empty or
// overlong password, an unknown user and --generate with --clear are
// refused and change nothing; users shows who has one; devices shows the
// protocol; each change is audited as user.passwd with the CLI's actor
// and never the password.
func TestGatewayUserPasswd(t *testing.T) {
	state := filepath.Join(t.TempDir(), "gw")
	ok(t, "gateway", "init", "--state", state, "--endpoint", "198.18.0.1:51820", "--api", "198.18.0.1:8443", "--pool", "100.80.0.0/16")
	ok(t, "gateway", "user", "add", "alice", "--state", state)
	ok(t, "gateway", "user", "add", "bob", "--state", state)
	ctx := context.Background()
	check := func(f func(reg registry.Registry)) {
		t.Helper()
		_, reg, err := gateway.Load(ctx, state)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		f(reg)
	}
	hashOf := func(user string) (h string) {
		t.Helper()
		check(func(reg registry.Registry) {
			var err error
			if h, err = reg.UserPassword(ctx, user); err != nil {
				t.Fatal(err)
			}
		})
		return h
	}

	withStdin(t, "correct horse battery\r\n", func() {
		out := ok(t, "gateway", "user", "passwd", "alice", "--state", state)
		if !strings.Contains(out, "alice/DEVICE") || strings.Contains(out, "horse") {
			t.Errorf("passwd output:\n%s", out)
		}
	})
	if h := hashOf("alice"); !registry.PasswordMatches(h, "correct horse battery") {
		t.Fatalf("alice's password from stdin does not match (%q)", h)
	}
	var gen string
	withStdin(t, "ignored\n", func() { gen = ok(t, "gateway", "user", "passwd", "--generate", "bob", "--state", state) })
	lines := strings.Split(strings.TrimSpace(gen), "\n")
	password := lines[len(lines)-1]
	if len(password) < 20 || strings.Contains(password, " ") || !strings.Contains(gen, "shown once") {
		t.Fatalf("generated password: %q", gen)
	}
	if !registry.PasswordMatches(hashOf("bob"), password) {
		t.Fatal("bob's generated password does not match")
	}
	// A terminal on stdin: generated, as admin add does.
	old := stdinIsTerminal
	stdinIsTerminal = func() bool { return true }
	gen = ok(t, "gateway", "user", "passwd", "bob", "--state", state)
	stdinIsTerminal = old
	if lines = strings.Split(strings.TrimSpace(gen), "\n"); !registry.PasswordMatches(hashOf("bob"), lines[len(lines)-1]) {
		t.Fatalf("the password generated for a terminal does not match:\n%s", gen)
	}

	before := hashOf("alice")
	withStdin(t, "short\n", func() { fails(t, 1, "gateway", "user", "passwd", "alice", "--state", state) })
	withStdin(t, "", func() { fails(t, 1, "gateway", "user", "passwd", "alice", "--state", state) })
	withStdin(t, strings.Repeat("x", registry.MaxPasswordLen+1)+"\n", func() { fails(t, 1, "gateway", "user", "passwd", "alice", "--state", state) })
	withStdin(t, "long enough password\n", func() { fails(t, 1, "gateway", "user", "passwd", "carol", "--state", state) })
	withStdin(t, "long enough password\n", func() { fails(t, 2, "gateway", "user", "passwd", "--state", state) })
	fails(t, 2, "gateway", "user", "passwd", "alice", "--generate", "--clear", "--state", state)
	if hashOf("alice") != before {
		t.Fatal("a refused passwd changed alice's password")
	}
	if out := ok(t, "gateway", "users", "--state", state); !strings.Contains(out, "alice\t\ttls-password") || !strings.Contains(out, "bob\t\ttls-password") {
		t.Errorf("users:\n%s", out)
	}
	ok(t, "gateway", "user", "passwd", "alice", "--clear", "--state", state)
	if h := hashOf("alice"); h != "" {
		t.Errorf("after --clear: %q", h)
	}
	if out := ok(t, "gateway", "users", "--state", state); !strings.Contains(out, "alice\t\t-\n") {
		t.Errorf("users after --clear:\n%s", out)
	}

	check(func(reg registry.Registry) {
		es, err := reg.Audit(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			if strings.Contains(e.Detail, "argon2") || strings.Contains(e.Detail, password) {
				t.Errorf("audit entry %+v holds the password or its hash", e)
			}
			if e.Action == "user.passwd" {
				if e.Actor != gateway.Actor() {
					t.Errorf("audit %+v: actor, want %s", e, gateway.Actor())
				}
				got = append(got, e.Target+" "+e.Detail)
			}
		}
		if s := strings.Join(got, ","); s != "alice set,bob set,bob set,alice cleared" {
			t.Errorf("audit: %s", s)
		}
		// An OpenConnect login's device, as devices lists it.
		if _, err := reg.CreateDevice(ctx, "bob", registry.DeviceSpec{Name: "openconnect", PublicKey: registry.Key{7}, Protocol: registry.ProtocolOpenConnect}); err != nil {
			t.Fatal(err)
		}
	})
	if out := ok(t, "gateway", "devices", "--state", state); !strings.Contains(out, "PROTOCOL") || !strings.Contains(out, "openconnect  openconnect  100.80.") {
		t.Errorf("devices:\n%s", out)
	}
	if out := ok(t, "gateway", "devices", "--json", "--state", state); !strings.Contains(out, `"Protocol":"openconnect"`) {
		t.Errorf("devices --json:\n%s", out)
	}
	if _, errOut := capture(t, func() { run([]string{"gateway", "revoke", "bob/openconnect", "--state", state}) }); !strings.Contains(errOut, "user passwd bob --clear") {
		t.Errorf("revoking an OpenConnect device says nothing of the next login:\n%s", errOut)
	}
}
