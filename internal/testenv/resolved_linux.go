package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Resolved is a real systemd-resolved serving one network namespace, on a
// D-Bus system bus of its own, for tests of the client's DNS. systemd is not
// PID 1 on test machines, so it is started by hand: its files come from the
// Debian package systemd-resolved unpacked (not installed: its maintainer
// scripts would take over the machine's /etc/resolv.conf) in the folder
// PTUN_TEST_RESOLVED names, which .ci/run makes.
type Resolved struct {
	// Bus is the D-Bus address to give processes as
	// DBUS_SYSTEM_BUS_ADDRESS.
	Bus string
	ns  string
	bin string // resolvectl
}

// resolvedUID is the uid the daemon runs as (it refuses to run as root).
const resolvedUID = 64990

// StartResolved starts a systemd-resolved in network namespace ns (a name
// for `ip netns exec`), with its runtime folder and user in a mount
// namespace of its own, and a dbus-daemon as its system bus; both are
// stopped at cleanup. Without the unpacked package or dbus-daemon it skips
// (fails under CI=true).
func StartResolved(t testing.TB, ns string) *Resolved {
	t.Helper()
	RequireRoot(t)
	root := os.Getenv("PTUN_TEST_RESOLVED")
	if root == "" {
		SkipOrFail(t, "PTUN_TEST_RESOLVED does not name an unpacked systemd-resolved package (.ci/run makes one)")
	}
	daemon := filepath.Join(root, "lib/systemd/systemd-resolved")
	ctl := filepath.Join(root, "usr/bin/resolvectl")
	for _, f := range []string{daemon, ctl} {
		if _, err := os.Stat(f); err != nil {
			SkipOrFail(t, "PTUN_TEST_RESOLVED=%s: %v", root, err)
		}
	}
	dbusDaemon := RequireTool(t, "dbus-daemon", "dbus-daemon")
	// A folder of its own, not t.TempDir (whose parent is 0700): the
	// daemon's user must reach the bus in it.
	dir, err := os.MkdirTemp("", "ptun-resolved-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bus := filepath.Join(dir, "system_bus_socket")
	conf := `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=` + bus + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
`
	if err := os.WriteFile(filepath.Join(dir, "bus.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// In the daemon's own mount namespace: a tmpfs over /run/systemd (its
	// runtime folder), and a passwd and group that know its user.
	uid := strconv.Itoa(resolvedUID)
	script := strings.Join([]string{
		"set -e",
		"mount -t tmpfs -o mode=0755 tmpfs /run/systemd",
		"mkdir -p /run/systemd/resolve && chown " + uid + ":" + uid + " /run/systemd/resolve",
		"cp /etc/passwd " + dir + "/passwd && echo 'systemd-resolve:x:" + uid + ":" + uid + "::/:/usr/sbin/nologin' >>" + dir + "/passwd",
		"cp /etc/group " + dir + "/group && echo 'systemd-resolve:x:" + uid + ":' >>" + dir + "/group",
		"mount --bind " + dir + "/passwd /etc/passwd && mount --bind " + dir + "/group /etc/group",
		dbusDaemon + " --config-file=" + dir + "/bus.conf --fork --print-pid=3 3>" + dir + "/dbus.pid",
		"export DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + bus,
		"exec " + daemon,
	}, "\n")
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if b, err := os.ReadFile(filepath.Join(dir, "dbus.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGTERM)
			}
		}
		if t.Failed() {
			t.Logf("systemd-resolved's output:\n%s", out.String())
		}
	})
	r := &Resolved{Bus: "unix:path=" + bus, ns: ns, bin: ctl}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.Ctl("status"); err == nil {
			return r
		}
		select {
		case <-done:
			t.Fatalf("systemd-resolved exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd-resolved did not answer within 10 s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ctl runs resolvectl with args in the daemon's network namespace.
func (r *Resolved) Ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", r.ns, r.bin}, args...)...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+r.Bus, "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return string(b), fmt.Errorf("resolvectl %s: %v: %s", strings.Join(args, " "), err, b)
	}
	return string(b), nil
}
