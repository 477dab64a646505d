package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/enroll"
)

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
