package ipc

import (
	"encoding/binary"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/tun"
)

// fakeFrames stands for the kernel's TUN under a front: ReadFrame hands
// out numbered frames of one size, in bursts of burst frames (then
// ErrWouldBlock, as an empty kernel queue would); WriteFrame records what
// the engine sent back.
type fakeFrames struct {
	size  int   // frame length, header included
	burst int   // frames per burst; 0: endless
	limit int64 // frames to hand out in all; 0: endless

	mu      sync.Mutex // guards the read side
	next    int64
	inBurst int
	closed  chan struct{}
	once    sync.Once
	dlMu    sync.Mutex
	expired chan struct{} // closed by a SetReadDeadline in the past

	wmu      sync.Mutex
	written  [][]byte // copies, when keep
	keep     bool
	nWritten atomic.Int64
	gotAll   chan struct{}
	want     atomic.Int64
}

func newFakeFrames(size, burst int) *fakeFrames {
	return &fakeFrames{size: size, burst: burst, closed: make(chan struct{}), gotAll: make(chan struct{})}
}

func (f *fakeFrames) ReadFrame(b []byte, wait bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.closed:
		return 0, os.ErrClosed
	default:
	}
	if f.limit > 0 && f.next >= f.limit || f.burst > 0 && f.inBurst == f.burst {
		f.inBurst = 0
		if !wait {
			return 0, tun.ErrWouldBlock
		}
		if f.limit > 0 && f.next >= f.limit {
			f.mu.Unlock()
			defer f.mu.Lock()
			select {
			case <-f.closed:
				return 0, os.ErrClosed
			case <-f.deadline():
				return 0, os.ErrDeadlineExceeded
			}
		}
	}
	n := min(f.size, len(b))
	binary.BigEndian.PutUint64(b[12:], uint64(f.next)) // after a 10-byte header and 2 spare bytes
	f.next++
	f.inBurst++
	return n, nil
}

func (f *fakeFrames) WriteFrame(b []byte) error {
	select {
	case <-f.closed:
		return os.ErrClosed
	default:
	}
	if f.keep {
		f.wmu.Lock()
		f.written = append(f.written, append([]byte(nil), b...))
		f.wmu.Unlock()
	}
	if n := f.nWritten.Add(1); n == f.want.Load() {
		close(f.gotAll)
	}
	return nil
}

func (f *fakeFrames) MTU() (int, error) { return 1420, nil }

func (f *fakeFrames) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

// SetReadDeadline lets a link interrupt a relay blocked in ReadFrame, as
// the kernel's frames do: any non-zero time counts as passed.
func (f *fakeFrames) SetReadDeadline(t time.Time) error {
	f.dlMu.Lock()
	defer f.dlMu.Unlock()
	if t.IsZero() {
		f.expired = nil
		return nil
	}
	if f.expired == nil {
		f.expired = make(chan struct{})
	}
	select {
	case <-f.expired:
	default:
		close(f.expired)
	}
	return nil
}

func (f *fakeFrames) deadline() <-chan struct{} {
	f.dlMu.Lock()
	defer f.dlMu.Unlock()
	if f.expired == nil {
		f.expired = make(chan struct{})
	}
	return f.expired
}

// waitWritten waits until n frames were written, or d passed.
func (f *fakeFrames) waitWritten(n int64, d time.Duration) bool {
	if f.nWritten.Load() >= n {
		return true
	}
	f.want.Store(n)
	if f.nWritten.Load() >= n {
		return true
	}
	select {
	case <-f.gotAll:
		return true
	case <-time.After(d):
		return false
	}
}
