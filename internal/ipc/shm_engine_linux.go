package ipc

// The engine's side of the shm flow (the front's is shm_front_linux.go).

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/ptun-vpn/ptun/internal/ipc/ring"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/tun"
)

// shmFrames is the engine's tun.Frames in shm mode: it reads frames from
// the ring the front fills and writes frames into the ring the front
// drains. Over it, tun.NewDevice splits and coalesces as it would over
// the kernel's TUN file.
type shmFrames struct {
	in      *ring.Consumer
	out     *ring.Producer
	regions []*ring.Region
	mtu     func() (int, error)
	closed  atomic.Bool
	unread  int // records read since the last Release (reader only)
}

func openShm(s Setup, files []*os.File, mtu func() (int, error), logf func(string, ...any)) (_ tun.Device, err error) {
	if err := wantFiles(Shm, files, 6); err != nil {
		return nil, err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		if fds[i], err = dupAndClose(f); err != nil {
			for _, f := range files[i+1:] {
				f.Close()
			}
			for _, fd := range fds[:i] {
				os.NewFile(uintptr(fd), "").Close()
			}
			return nil, err
		}
	}
	defer func() {
		for _, fd := range fds {
			os.NewFile(uintptr(fd), "").Close() // the rings work on duplicates
		}
	}()
	f := &shmFrames{mtu: mtu}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	in, err := ring.Map(fds[0])
	if err != nil {
		return nil, fmt.Errorf("flow: shm ring to the engine: %w", err)
	}
	f.regions = append(f.regions, in)
	out, err := ring.Map(fds[3])
	if err != nil {
		return nil, fmt.Errorf("flow: shm ring to the front: %w", err)
	}
	f.regions = append(f.regions, out)
	if f.in, err = ring.NewConsumer(in, fds[1], fds[2]); err != nil {
		return nil, err
	}
	if f.out, err = ring.NewProducer(out, fds[4], fds[5]); err != nil {
		return nil, err
	}
	if s.Format.Name == "" {
		return nil, errors.New("flow: shm setup without an interface name")
	}
	return tun.NewDevice(f, s.Format, logf), nil
}

// ReadFrame implements tun.Frames: one copy, from the ring into b.
func (f *shmFrames) ReadFrame(b []byte, wait bool) (int, error) {
	rec, err := f.in.Next(false)
	if err == ring.ErrEmpty {
		f.in.Release()
		f.unread = 0
		if !wait {
			return 0, tun.ErrWouldBlock
		}
		rec, err = f.in.Next(true)
	}
	if err != nil {
		return 0, f.closedErr(err)
	}
	if len(rec) > len(b) {
		return 0, fmt.Errorf("flow: a %d-byte frame from the front does not fit a %d-byte buffer: %w", len(rec), len(b), ring.ErrCorrupt)
	}
	n := copy(b, rec)
	if f.unread++; f.unread == flushEvery {
		f.in.Release()
		f.unread = 0
	}
	return n, nil
}

// WriteFrame implements tun.Frames: one copy into the ring. A full ring
// makes it wait (after publishing what it holds). The frame is published
// by Flush, which the Device calls once per Write.
func (f *shmFrames) WriteFrame(b []byte) error {
	if err := f.out.Push(b); err != nil {
		return f.closedErr(err)
	}
	return nil
}

// Flush implements tun.Flusher: one atomic store publishes every frame
// written since the last Flush; the front is kicked only if it sleeps.
func (f *shmFrames) Flush() { f.out.Flush() }

func (f *shmFrames) closedErr(err error) error {
	if f.closed.Load() || errors.Is(err, ring.ErrClosed) {
		return os.ErrClosed
	}
	return err
}

func (f *shmFrames) MTU() (int, error) { return f.mtu() }

func (f *shmFrames) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return nil
	}
	if f.in != nil {
		f.in.Close()
	}
	if f.out != nil {
		f.out.Close()
	}
	// The regions stay mapped: a reader may still hold a record slice
	// until its call returns, and the process is about to exit anyway.
	return nil
}

// Stats reports the rings' counters.
func (f *shmFrames) Stats() []metrics.Counter {
	var out []metrics.Counter
	if f.in != nil {
		out = append(out, metrics.Prefixed("flow_to_engine_", f.in.Stats())...)
	}
	if f.out != nil {
		out = append(out, metrics.Prefixed("flow_to_front_", f.out.Stats())...)
	}
	return out
}
