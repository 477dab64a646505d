// Package memtrim gives memory back to the system after a bulk operation
// on the configuration, in the front and in the engine.
//
// A set or a get of many peers (a wg setconf, a gateway's first sync, a
// wg show) makes several MiB of garbage in each process: the request's
// text or JSON, decoded, copied and encoded again on its way to the other
// process and back. The collector frees it at its next cycle but keeps
// the pages for later allocations, and an idle daemon makes little
// garbage: without a trim, those pages would stay resident for hours, 2 to
// 4 KiB per peer in each process at 1,000 peers. Live, a peer costs about
// 0.9 KiB in the engine and 0.4 KiB in the front.
//
// A trim is one forced collection that returns the free pages (a few
// milliseconds at 1,000 peers), run Delay after a bulk operation so that
// the answer it was written into is garbage by then, and once for a burst
// of them (a monitor reading every peer in a loop). Operations on fewer
// than BulkPeers peers (a gateway adds one device at a time) never cause
// one.
package memtrim

import (
	"runtime/debug"
	"sync"
	"time"
)

const (
	// BulkPeers is how many peers make an operation bulk.
	BulkPeers = 256
	// Delay is how long after a bulk operation the trim runs.
	Delay = time.Second
)

// A Trimmer coalesces the trims that bulk operations ask for.
type Trimmer struct {
	mu    sync.Mutex
	armed bool // a trim is scheduled

	delay time.Duration
	trim  func()
}

// Default is the process's Trimmer.
var Default = &Trimmer{delay: Delay, trim: debug.FreeOSMemory}

// Note records an operation on peers peers: if it was bulk, a trim runs
// Delay later, unless one is scheduled already. It never blocks.
func (t *Trimmer) Note(peers int) {
	if peers < BulkPeers {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.armed {
		return
	}
	t.armed = true
	time.AfterFunc(t.delay, func() {
		t.mu.Lock()
		t.armed = false
		t.mu.Unlock()
		t.trim()
	})
}

// Note is Default.Note.
func Note(peers int) { Default.Note(peers) }
