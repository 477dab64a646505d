package procs

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestFor(t *testing.T) {
	for _, c := range []struct{ def, want int }{{1, 1}, {2, 1}, {3, 3}, {4, 4}, {64, 64}} {
		if got := For(c.def); got != c.want {
			t.Errorf("For(%d) = %d, want %d", c.def, got, c.want)
		}
	}
}

// TestApply runs this test binary again with a chosen environment, so that
// Apply sees a fresh runtime default each time.
func TestApply(t *testing.T) {
	if os.Getenv("PROCS_CHILD") == "1" {
		os.Stdout.WriteString(strconv.Itoa(Apply()) + " " + strconv.Itoa(runtime.GOMAXPROCS(0)) + "\n")
		return
	}
	run := func(env ...string) string {
		cmd := exec.Command(os.Args[0], "-test.run=^TestApply$")
		cmd.Env = append(os.Environ(), append(env, "PROCS_CHILD=1")...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v", env, err)
		}
		f := strings.Fields(string(out))
		if len(f) < 2 {
			t.Fatalf("%v: child printed %q", env, out)
		}
		return f[0] + " " + f[1]
	}
	// An explicit GOMAXPROCS is kept.
	if got := run("GOMAXPROCS=3"); got != "3 3" {
		t.Errorf("with GOMAXPROCS=3: Apply, GOMAXPROCS = %s, want 3 3", got)
	}
	// Without it, the policy applies to the runtime's default.
	want := For(runtime.NumCPU())
	if got := run("GOMAXPROCS="); got != strconv.Itoa(want)+" "+strconv.Itoa(want) {
		t.Errorf("without GOMAXPROCS: Apply, GOMAXPROCS = %s, want %d %d", got, want, want)
	}
}
