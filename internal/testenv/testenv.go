// Package testenv holds the one rule for tests that need something from the
// machine: skip when it is missing, except under CI=true, where CI runs as
// root with every tool installed and a skip would hide a broken test.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
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
