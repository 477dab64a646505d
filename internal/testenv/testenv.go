// Package testenv holds the one rule for tests that need something from the
// machine: skip when it is missing, except under CI=true, where CI runs as
// root with every tool installed and a skip would hide a broken test.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// UnderCI reports whether the tests run in CI (CI=true).
func UnderCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips t with the reason, or fails it under CI=true.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	why := fmt.Sprintf(format, args...)
	if UnderCI() {
		t.Fatalf("%s (CI=true: not skipping)", why)
	}
	t.Skip(why)
}

// RequireRoot skips (or, under CI, fails) t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root (network namespaces, TUN devices, /var/run/wireguard)")
	}
}

// RequireTool returns the path of a command the test needs, skipping (or,
// under CI, failing) t when it is not installed; pkg names the Debian
// package that provides it.
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, "needs %s (Debian package %s)", name, pkg)
	}
	return path
}

// WaitBlocked waits (up to 10 s) until some goroutine is blocked (in a
// channel operation, a select, a lock, or the network poller) with a frame
// whose function name contains fn, and fails t if none is. A test that
// checks that Close unblocks a call uses it instead of a sleep, so it
// really tests a blocked call, not one that had not started.
func WaitBlocked(t testing.TB, fn string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			header, _, _ := strings.Cut(g, "\n")
			if blockedState(header) && strings.Contains(g, fn) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine blocked in %s within 10s:\n%s", fn, buf[:n])
		}
		time.Sleep(time.Millisecond)
	}
}

// blockedState reports whether a goroutine header ("goroutine 7 [chan
// receive]:") names a waiting state.
func blockedState(header string) bool {
	for _, s := range []string{"[chan receive", "[chan send", "[select", "[IO wait", "[sync.Mutex.Lock",
		"[sync.RWMutex", "[sync.Cond.Wait", "[semacquire", "[sleep"} {
		if strings.Contains(header, s) {
			return true
		}
	}
	return false
}

// RequireChromium returns the path of a Chromium (or Chrome) binary for a
// test that drives a real browser: $PTUN_TEST_CHROMIUM if set, else the
// first of chromium, chromium-browser, google-chrome-stable and
// google-chrome on PATH. Without one it skips (or, under CI, fails) t.
func RequireChromium(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("PTUN_TEST_CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("PTUN_TEST_CHROMIUM=%s: %v", p, err)
		}
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	SkipOrFail(t, "needs Chromium (Debian package chromium), or PTUN_TEST_CHROMIUM=/path/to/chrome")
	return ""
}
