package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/ipc"
)

const testPin = "pin-sha256:o2K8FPUk0cwWgPYx7kfYMbmS2RXqGGLbJx9xdhBdgGU="

// TestConnectFlags: the flags and the URL, parsed and checked before
// anything is read or started.
func TestConnectFlags(t *testing.T) {
	c, err := parseConnect([]string{"https://198.18.0.2:4443", "--user", "alice", "--servercert", testPin,
		"--name", "work", "--kill-switch", "--no-dtls", "--state", "/tmp/s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.o.URL != "https://198.18.0.2:4443" || c.o.User != "alice" || c.o.Pin != testPin || c.name != "work" ||
		!c.o.KillSwitch || !c.o.DisableDTLS || c.o.State != "/tmp/s" || c.foreground || c.o.Wait != 30*time.Second || c.o.Mode != ipc.FD {
		t.Errorf("parsed %+v", c)
	}
	// Flags before the URL; the name from the host; the port's default.
	c, err = parseConnect([]string{"--user=bob", "--foreground", "vpn.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if c.o.URL != "https://vpn.example.com:443" || c.name != "vpn.example.com" || !c.foreground || c.o.Pin != "" {
		t.Errorf("parsed %+v", c)
	}
}

// TestConnectBadInput: each mistake exits with a line that says what is
// wrong (2 for a usage error, 1 for a bad value), on stderr only, before
// a password is read.
func TestConnectBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"--user", "alice"}, 2, "the server's URL is missing"},
		{[]string{"https://a.example", "https://b.example", "--user", "alice"}, 2, "unexpected argument"},
		{[]string{"https://a.example", "--user", "alice", "--no-such-flag"}, 2, "not defined"},
		{[]string{"https://a.example"}, 1, "--user is required"},
		{[]string{"http://a.example", "--user", "alice"}, 1, "must be https"},
		{[]string{"https://alice@a.example", "--user", "alice"}, 1, "with --user, not in the URL"},
		{[]string{"https://a.example:70000", "--user", "alice"}, 1, "port"},
		{[]string{"https://a.example/admins", "--user", "alice"}, 1, "user group"},
		{[]string{"https://a.example", "--user", "alice", "--servercert", "sha1:abcdef"}, 1, "want pin-sha256:BASE64"},
		{[]string{"https://a.example", "--user", "alice", "--servercert", "pin-sha256:AAAA"}, 1, "32-byte"},
		{[]string{"https://a.example", "--user", "alice", "--name", "no/slash"}, 1, "--name"},
		{[]string{"https://a.example", "--user", "alice", "--wait", "0s"}, 1, "--wait"},
		{[]string{"https://a.example", "--user", "alice", "--ipc", "inproc"}, 1, "confined"},
		{[]string{"https://a.example", "--user", "alice", "--ipc", "carrier-pigeon"}, 1, "--ipc"},
	} {
		var code int
		out, errOut := capture(t, func() { code = run(append([]string{"connect"}, tc.args...)) })
		if code != tc.code || out != "" || !strings.Contains(errOut, tc.says) {
			t.Errorf("ptun connect %s: exit %d (want %d), stdout %q, stderr %q (want it to say %q)",
				strings.Join(tc.args, " "), code, tc.code, out, errOut, tc.says)
		}
	}
}

// TestReadLine: the password is the first line, without its line end,
// and nothing after it is read.
func TestReadLine(t *testing.T) {
	r := strings.NewReader("secret pass\r\nnext")
	got, err := readLine(r)
	if err != nil || got != "secret pass" || r.Len() != 4 {
		t.Errorf("readLine = %q, %v; %d bytes left, want 4", got, err, r.Len())
	}
	if got, err := readLine(strings.NewReader("no newline")); err != nil || got != "no newline" {
		t.Errorf("readLine without a newline = %q, %v", got, err)
	}
	if _, err := readLine(strings.NewReader("")); err == nil {
		t.Error("readLine of nothing: no error")
	}
	if _, err := readLine(strings.NewReader(strings.Repeat("x", maxPassword+1))); err == nil {
		t.Error("readLine of an over-long line: no error")
	}
}

// TestPasswordPrompt: on a terminal the password is read without echo,
// and the terminal's echo is back afterwards.
func TestPasswordPrompt(t *testing.T) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	type result struct {
		pw  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		pw, err := readConnectPassword(slave, "alice", "https://vpn.example")
		done <- result{pw, err}
	}()
	// Wait until the prompt turned echo off, then type.
	deadline := time.Now().Add(5 * time.Second)
	for {
		tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if err == nil && tio.Lflag&unix.ECHO == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("echo still on after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	master.Write([]byte("s3cret\n"))
	r := <-done
	if r.err != nil || r.pw != "s3cret" {
		t.Fatalf("readConnectPassword = %q, %v", r.pw, r.err)
	}
	// What the terminal echoed, if anything, is waiting on the master.
	time.Sleep(100 * time.Millisecond)
	mfd := int(master.Fd()) // Fd makes it blocking: once, before
	unix.SetNonblock(mfd, true)
	buf := make([]byte, 256)
	k, _ := unix.Read(mfd, buf)
	if echoed := buf[:max(k, 0)]; strings.Contains(string(echoed), "s3cret") {
		t.Errorf("the terminal echoed the password: %q", echoed)
	}
	tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil || tio.Lflag&unix.ECHO == 0 {
		t.Errorf("echo not restored: %v", err)
	}
}
