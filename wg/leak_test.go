package wg

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// goroutineSet is a snapshot of the running goroutines' stacks, by
// goroutine id. Ids are never reused, so a goroutine present after an
// operation and absent before it was started by (or during) the operation,
// whatever other tests' goroutines do meanwhile; counting goroutines cannot
// tell a leak from another test's goroutine that exits late.
type goroutineSet map[uint64]string

func goroutines() goroutineSet {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	set := goroutineSet{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		// "goroutine 123 [running]:\n..."
		head, _, _ := strings.Cut(string(g), " [")
		id, err := strconv.ParseUint(strings.TrimPrefix(head, "goroutine "), 10, 64)
		if err == nil {
			set[id] = string(g)
		}
	}
	return set
}

// newSince returns the stacks of goroutines in s that are not in before.
func (s goroutineSet) newSince(before goroutineSet) []string {
	var out []string
	for id, stack := range s {
		if _, ok := before[id]; !ok {
			out = append(out, stack)
		}
	}
	return out
}

// checkNoLeak fails t if, within a bounded wait, goroutines started since
// before are still running; it prints their stacks. Goroutines of the
// testing package and the runtime that merely appear later are not
// ptun's: a leak is a goroutine with a frame in this module.
func checkNoLeak(t *testing.T, before goroutineSet) {
	t.Helper()
	var leaked []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		leaked = leaked[:0]
		for _, stack := range goroutines().newSince(before) {
			if strings.Contains(stack, "github.com/ptun-vpn/ptun/") && !strings.Contains(stack, "testing.tRunner") {
				leaked = append(leaked, stack)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%d goroutine(s) still running after the device closed:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
}

// TestLeakCheckerSeesALeak keeps the checker honest: a goroutine started
// after the snapshot and still blocked is reported.
func TestLeakCheckerSeesALeak(t *testing.T) {
	before := goroutines()
	stop := make(chan struct{})
	defer close(stop)
	go leakyRoutine(stop)
	for deadline := time.Now().Add(5 * time.Second); ; {
		found := false
		for _, s := range goroutines().newSince(before) {
			found = found || strings.Contains(s, "wg.leakyRoutine")
		}
		if found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a goroutine started after the snapshot is not reported")
		}
		time.Sleep(time.Millisecond)
	}
}

func leakyRoutine(stop chan struct{}) { <-stop }
