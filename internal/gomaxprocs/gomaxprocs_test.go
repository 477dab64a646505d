package gomaxprocs

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
// Apply sees a fresh runtime each time. The child prints the runtime's
// default, what Apply returned, and GOMAXPROCS afterwards.
func TestApply(t *testing.T) {
	if os.Getenv("PROCS_CHILD") == "1" {
		def := runtime.GOMAXPROCS(0)
		n := Apply()
		os.Stdout.WriteString(strconv.Itoa(def) + " " + strconv.Itoa(n) + " " + strconv.Itoa(runtime.GOMAXPROCS(0)) + "\n")
		return
	}
	run := func(env string) (def, applied, after int) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestApply$")
		cmd.Env = append(os.Environ(), env, "PROCS_CHILD=1")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", env, err)
		}
		f := strings.Fields(string(out))
		if len(f) < 3 {
			t.Fatalf("%s: child printed %q", env, out)
		}
		def, _ = strconv.Atoi(f[0])
		applied, _ = strconv.Atoi(f[1])
		after, _ = strconv.Atoi(f[2])
		return def, applied, after
	}
	// An explicit GOMAXPROCS is kept.
	if _, applied, after := run("GOMAXPROCS=3"); applied != 3 || after != 3 {
		t.Errorf("with GOMAXPROCS=3: Apply = %d, GOMAXPROCS = %d; want 3, 3", applied, after)
	}
	// Without it, the policy applies to the runtime's default.
	def, applied, after := run("GOMAXPROCS=")
	if want := For(def); applied != want || after != want {
		t.Errorf("default %d: Apply = %d, GOMAXPROCS = %d; want %d", def, applied, after, want)
	}
}
