// Package gomaxprocs chooses how many Go processors (GOMAXPROCS) a ptun
// process uses.
//
// On a machine with one or two CPUs a tunnel endpoint shares them with the
// applications whose traffic it carries, and the Go scheduler's second
// processor costs more than it brings: each time a goroutine becomes
// runnable the runtime wakes another thread to look for work, and on a
// virtual machine every such wakeup is expensive. Measured with `ptun bench`
// on a 2-vCPU VM (docs/performance.md): one processor carried 9–16% more
// TCP at 13–20% less CPU per byte than two, and lowered the RTT under load.
// System calls still run beside the one processor: when one lasts (a TUN
// write runs the receiver's TCP inside it), the runtime hands the processor
// to another thread, so the other direction goes on meanwhile. Raw system
// calls, which keep the processor, measured 7–14% more CPU per byte.
//
// With more CPUs the Go default stays: it has not been measured to hurt.
package gomaxprocs

import (
	"os"
	"runtime"
)

// For returns the GOMAXPROCS a ptun process should use where the runtime's
// default is def (the CPUs it may run on).
func For(def int) int {
	if def <= 2 {
		return 1
	}
	return def
}

// Apply sets GOMAXPROCS to For(the runtime's default), unless the
// GOMAXPROCS environment variable chose it. It returns the value in force.
func Apply() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	n := For(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(n)
	return n
}
