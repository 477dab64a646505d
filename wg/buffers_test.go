package wg

import (
	"testing"

	"github.com/ptun-vpn/ptun/wgcfg"
)

func TestBufferSet(t *testing.T) {
	s := newBufferSet(5)
	if len(s.bufs) != 5 {
		t.Fatalf("%d buffers, want 5", len(s.bufs))
	}
	for i, b := range s.bufs {
		if len(b) != bufSize || cap(b) != bufSize {
			t.Fatalf("buffer %d: len %d cap %d, want %d", i, len(b), cap(b), bufSize)
		}
		if b[0] != 0 || b[bufSize-1] != 0 {
			t.Fatalf("buffer %d is not zeroed", i)
		}
		b[0], b[bufSize-1] = byte(i+1), byte(i+1)
	}
	// No two buffers overlap: each kept what was written to it.
	for i, b := range s.bufs {
		if b[0] != byte(i+1) || b[bufSize-1] != byte(i+1) {
			t.Fatalf("buffer %d was overwritten", i)
		}
	}
	s.free()
	s.free() // twice is no error
	if s.bufs != nil {
		t.Error("buffers still listed after free")
	}
}

// TestCloseFreesBuffers: once closed, a device holds no receive buffers,
// also those an earlier binding's routines left.
func TestCloseFreesBuffers(t *testing.T) {
	a, _ := newTestPair(t, Timers{})
	port := uint16(51999)
	if err := a.dev.Set(&wgcfg.DeviceConfig{ListenPort: &port}); err != nil {
		t.Fatal(err)
	}
	a.dev.Close()
	a.dev.rxBufsMu.Lock()
	defer a.dev.rxBufsMu.Unlock()
	if len(a.dev.rxBufs) != 0 {
		t.Fatalf("%d receive buffer sets left after Close", len(a.dev.rxBufs))
	}
}
