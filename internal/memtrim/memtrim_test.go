package memtrim

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestNote(t *testing.T) {
	var trims atomic.Int32
	tr := &Trimmer{delay: 20 * time.Millisecond, trim: func() { trims.Add(1) }}
	tr.Note(BulkPeers - 1)
	time.Sleep(60 * time.Millisecond)
	if n := trims.Load(); n != 0 {
		t.Fatalf("%d trims after a small operation, want none", n)
	}
	// A burst of bulk operations: one trim.
	for range 5 {
		tr.Note(BulkPeers)
	}
	deadline := time.Now().Add(5 * time.Second)
	for trims.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(60 * time.Millisecond)
	if n := trims.Load(); n != 1 {
		t.Fatalf("%d trims after a burst, want 1", n)
	}
	// The next bulk operation schedules another.
	tr.Note(10 * BulkPeers)
	deadline = time.Now().Add(5 * time.Second)
	for trims.Load() == 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := trims.Load(); n != 2 {
		t.Fatalf("%d trims, want 2", n)
	}
}
