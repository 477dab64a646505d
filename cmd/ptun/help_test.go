package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
)

// capture runs f with stdout and os.Stderr going to buffers and returns
// what each received. Tests using it must not run in parallel.
func capture(t *testing.T, f func()) (out, errOut string) {
	t.Helper()
	var ob bytes.Buffer
	oldOut, oldErr := stdout, os.Stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, os.Stderr = &ob, w
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	defer func() { stdout, os.Stderr = oldOut, oldErr }()
	f()
	w.Close()
	eb := <-done
	r.Close()
	return ob.String(), string(eb)
}

// TestHelp: -h and --help on the daemon and on every command print its
// usage with an example to stdout and exit 0.
func TestHelp(t *testing.T) {
	cases := [][]string{{"-h"}, {"--help"}, {"help"}, {"-f", "-h"}, {"--mtu", "1400", "--help"}}
	for _, name := range commandNames() {
		cases = append(cases, []string{name, "-h"}, []string{name, "--help"}, []string{"help", name})
	}
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var code int
			out, errOut := capture(t, func() { code = run(args) })
			if code != 0 {
				t.Errorf("exit status %d, want 0; stderr:\n%s", code, errOut)
			}
			if errOut != "" {
				t.Errorf("stderr is not empty:\n%s", errOut)
			}
			name := args[0]
			if name == "help" && len(args) > 1 {
				name = args[1]
			}
			want := "Usage: ptun " + name
			if _, ok := commands[name]; !ok {
				want = "Usage:\n  ptun [-f|--foreground]"
			}
			if !strings.HasPrefix(out, want) {
				t.Errorf("stdout does not start with %q:\n%s", want, out)
			}
			if !strings.Contains(out, "Example") {
				t.Errorf("the usage has no example:\n%s", out)
			}
		})
	}
}

// TestHelpListsFlags: a command's -h lists its flags.
func TestHelpListsFlags(t *testing.T) {
	for name, flags := range map[string][]string{
		"bench":   {"-rounds", "-peer", "-json", "-svg", "-ptun"},
		"demo":    {"-duration"},
		"up":      {"-metrics"},
		"connect": {"-user", "-servercert", "-name", "-kill-switch", "-no-dtls", "-foreground"},
	} {
		out, _ := capture(t, func() { run([]string{name, "-h"}) })
		for _, f := range flags {
			if !strings.Contains(out, f) {
				t.Errorf("ptun %s -h does not list %s:\n%s", name, f, out)
			}
		}
	}
}

// TestBadUsage: unknown flags and extra arguments exit 2, on stderr.
func TestBadUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--no-such-flag"}, {"demo", "extra"}, {"genkey", "extra"},
		{"show", "a", "b"}, {"help", "nosuchcommand"}, {"--no-such-flag", "wg0"}, {},
	} {
		var code int
		out, errOut := capture(t, func() { code = run(args) })
		if code != 2 {
			t.Errorf("ptun %s: exit status %d, want 2", strings.Join(args, " "), code)
		}
		if out != "" || errOut == "" {
			t.Errorf("ptun %s: want only stderr; stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), out, errOut)
		}
	}
}

// TestUsageSaysWhereLogsGo: ptun -h names each log destination and what
// SIGHUP does.
func TestUsageSaysWhereLogsGo(t *testing.T) {
	for _, s := range []string{"syslog", "/dev/log", `"ptun"`, "/var/log/ptun/IFNAME.log", "--log FILE", "SIGHUP", "stderr"} {
		if !strings.Contains(usage, s) {
			t.Errorf("the usage does not mention %s", s)
		}
	}
}

// TestFlagsAfterArguments: a command that takes flags anywhere reads them
// before and after its argument alike, and refuses a second argument.
func TestFlagsAfterArguments(t *testing.T) {
	for _, args := range [][]string{
		{"--name", "work", "URL", "--device", "laptop"},
		{"URL", "--name", "work", "--device=laptop"},
	} {
		fs := newFlagSet("join")
		name := fs.String("name", "", "")
		device := fs.String("device", "", "")
		pos, err := parseInterspersed(fs, args, 1)
		if err != nil || len(pos) != 1 || pos[0] != "URL" || *name != "work" || *device != "laptop" {
			t.Errorf("%v: pos %v name %q device %q, %v", args, pos, *name, *device, err)
		}
	}
	var code int
	capture(t, func() { code = run([]string{"join", "a", "b"}) })
	if code != 2 {
		t.Errorf("join with two arguments: exit %d, want 2", code)
	}
}
