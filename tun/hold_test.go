package tun

import (
	"errors"
	"os"
	"sync"
	"testing"
	"time"
)

// chanFrames is Frames over a channel of packets, whose blocked ReadFrame a
// read deadline interrupts, as the kernel's TUN file's does.
type chanFrames struct {
	in   chan []byte
	kick chan struct{}

	mu       sync.Mutex
	deadline time.Time
	closed   chan struct{}
}

func newChanFrames() *chanFrames {
	return &chanFrames{in: make(chan []byte, 16), kick: make(chan struct{}, 1), closed: make(chan struct{})}
}

func (c *chanFrames) ReadFrame(b []byte, wait bool) (int, error) {
	if !wait {
		select {
		case p := <-c.in:
			return copy(b, p), nil
		default:
			return 0, ErrWouldBlock
		}
	}
	for {
		c.mu.Lock()
		dl := c.deadline
		c.mu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timeout = time.After(d)
		}
		select {
		case p := <-c.in:
			return copy(b, p), nil
		case <-c.kick:
		case <-timeout:
		case <-c.closed:
			return 0, os.ErrClosed
		}
	}
}

func (c *chanFrames) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

func (c *chanFrames) WriteFrame([]byte) error { return nil }
func (c *chanFrames) MTU() (int, error)       { return 1420, nil }
func (c *chanFrames) Close() error            { close(c.closed); return nil }

// noDeadline is Frames without a read deadline.
type noDeadline struct{ Frames }

// TestHold: a held device's Read takes nothing (the packets stay for
// another reader of the same file), a Read waiting when the hold begins
// is woken and waits on, the end of the hold lets Read go on, Close ends
// a held Read, and a device whose Frames take no deadline cannot be held.
func TestHold(t *testing.T) {
	f := newChanFrames()
	d := NewDevice(f, Format{Name: "hold0"}, nil)
	type result struct {
		pkt string
		err error
	}
	got := make(chan result, 16)
	go func() {
		bufs, sizes := readBufs(4, MinOffset)
		for {
			n, err := d.Read(bufs, sizes, MinOffset)
			if err != nil {
				got <- result{err: err}
				return
			}
			for i := range n {
				got <- result{pkt: string(bufs[i][MinOffset : MinOffset+sizes[i]])}
			}
		}
	}()
	next := func(want string) {
		t.Helper()
		select {
		case r := <-got:
			if r.err != nil || r.pkt != want {
				t.Fatalf("Read: %q %v, want %q", r.pkt, r.err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Read returned nothing, want %q", want)
		}
	}
	f.in <- []byte("a")
	next("a")
	time.Sleep(20 * time.Millisecond) // the reader waits in ReadFrame again
	if err := Hold(d, true); err != nil {
		t.Fatal(err)
	}
	if err := Hold(d, true); err != nil {
		t.Fatalf("holding twice: %v", err)
	}
	f.in <- []byte("b")
	select {
	case r := <-got:
		t.Fatalf("a held device's Read returned %q %v", r.pkt, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	if p := <-f.in; string(p) != "b" { // the other reader takes it
		t.Fatalf("queued %q", p)
	}
	if err := Hold(d, false); err != nil {
		t.Fatal(err)
	}
	f.in <- []byte("c")
	next("c")
	// Released with nothing queued: Read waits, without a deadline left.
	select {
	case r := <-got:
		t.Fatalf("after the hold, Read returned %q %v with nothing queued", r.pkt, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	Hold(d, true)
	d.Close()
	select {
	case r := <-got:
		if !errors.Is(r.err, os.ErrClosed) {
			t.Fatalf("a held Read after Close: %q %v, want os.ErrClosed", r.pkt, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a held Read")
	}

	if err := Hold(NewDevice(noDeadline{newChanFrames()}, Format{}, nil), true); !errors.Is(err, ErrCannotHold) {
		t.Errorf("Hold over Frames without a deadline: %v, want ErrCannotHold", err)
	}
}
