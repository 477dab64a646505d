package tun_test

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"testing"

	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/tun/tuntest"
)

func TestWriteQueue(t *testing.T) {
	dev := tuntest.NewChannelTUN(1420)
	w := tun.NewWriteQueue(dev, 16, 8, 64)
	done := make(chan error, 1)
	go func() { done <- w.Run() }()
	// Many putters; every packet arrives, none twice.
	const putters, each = 4, 50
	var wg sync.WaitGroup
	for p := range putters {
		wg.Go(func() {
			for i := range each {
				if !w.Put([]byte{byte(p), byte(i), 0x45}) {
					t.Error("Put refused before Stop")
				}
			}
		})
	}
	seen := map[[2]byte]bool{}
	for range putters * each {
		pkt := <-dev.Outbound
		k := [2]byte(pkt[:2])
		if seen[k] || !bytes.Equal(pkt[2:], []byte{0x45}) {
			t.Fatalf("packet %x twice or changed", pkt)
		}
		seen[k] = true
	}
	wg.Wait()
	// A packet larger than Size gets a buffer of its own, and arrives
	// whole; a Buffer holds Size bytes after the offset.
	big := bytes.Repeat([]byte{0x45, 1, 2, 3}, 1000)
	if !w.Put(big) {
		t.Fatal("Put of a large packet refused")
	}
	if got := <-dev.Outbound; !bytes.Equal(got, big) {
		t.Fatalf("a %d-byte packet arrived as %d bytes", len(big), len(got))
	}
	if b := w.Buffer(); cap(b) != 16+64 || w.Size() != 64 {
		t.Errorf("Buffer's capacity %d, Size %d; want 80 and 64", cap(b), w.Size())
	} else {
		w.Release(b)
	}
	// A closed device stops the queue; Put then refuses.
	dev.Close()
	w.Put([]byte{1})
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Run after the device closed: %v", err)
	}
	if w.Put([]byte{1}) {
		t.Error("Put accepted after the queue stopped")
	}
}

func TestWriteQueueStop(t *testing.T) {
	w := tun.NewWriteQueue(tuntest.NewChannelTUN(1420), 16, 1, 64)
	done := make(chan error, 1)
	go func() { done <- w.Run() }()
	w.Stop()
	if err := <-done; err != nil {
		t.Fatalf("Run after Stop: %v", err)
	}
	b := w.Buffer()
	if w.Queue(b, 0) {
		t.Error("Queue accepted after Stop")
	}
}
