package ipc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/internal/ipc/ring"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/tun"
)

// EnvShmRingSize names the environment variable that sets each shm ring's
// data size in bytes (a power of two, 64 KiB to 64 MiB).
const EnvShmRingSize = "PTUN_SHM_RING_SIZE"

// maxFrame is the largest frame: a virtio-net header and a 64 KiB packet.
const maxFrame = 10 + tun.MaxSegmentSize

// flushEvery bounds how many frames the front reads from the TUN before it
// publishes them, and how many records a side reads before it releases
// their space.
const flushEvery = 32

// ShmRingSize returns the ring size from EnvShmRingSize, or the default.
func ShmRingSize() (int, error) {
	v := os.Getenv(EnvShmRingSize)
	if v == "" {
		return ring.DefaultDataSize, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || !ring.ValidDataSize(n) || ring.MaxPayload(n) < maxFrame {
		return 0, fmt.Errorf("%s=%q: want a power of two from %d to %d bytes", EnvShmRingSize, v, 256<<10, ring.MaxDataSize)
	}
	return n, nil
}

// shmRing is one direction: its memfd, its two eventfds and its mapping.
type shmRing struct {
	memfd, dataReady, spaceReady int
	region                       *ring.Region
}

func newShmRing(size int) (*shmRing, error) {
	r := &shmRing{memfd: -1, dataReady: -1, spaceReady: -1}
	var err error
	if r.memfd, err = ring.Create(size); err != nil {
		return nil, err
	}
	if r.dataReady, err = ring.NewEventFD(); err == nil {
		r.spaceReady, err = ring.NewEventFD()
	}
	if err == nil {
		r.region, err = ring.Map(r.memfd)
	}
	if err != nil {
		r.closeFDs()
		return nil, err
	}
	return r, nil
}

// files returns the ring's descriptors as files for the engine (which
// then own them).
func (r *shmRing) files() []*os.File {
	fs := []*os.File{
		os.NewFile(uintptr(r.memfd), "shm-ring"),
		os.NewFile(uintptr(r.dataReady), "shm-data-ready"),
		os.NewFile(uintptr(r.spaceReady), "shm-space-ready"),
	}
	r.memfd, r.dataReady, r.spaceReady = -1, -1, -1
	return fs
}

func (r *shmRing) closeFDs() {
	for _, fd := range []int{r.memfd, r.dataReady, r.spaceReady} {
		if fd >= 0 {
			os.NewFile(uintptr(fd), "").Close()
		}
	}
	r.memfd, r.dataReady, r.spaceReady = -1, -1, -1
}

// shmLink is the front's side: it reads frames from the TUN straight into
// the ring to the engine (no copy in the front) and writes the frames of
// the ring from the engine straight to the TUN.
type shmLink struct {
	dev    tun.Device
	frames tun.Frames
	ft     tun.Format
	logf   func(string, ...any)
	size   int

	toEngine, toFront *shmRing
	prod              *ring.Producer
	cons              *ring.Consumer
	handed            []*os.File

	stopping atomic.Bool
	wg       sync.WaitGroup
	tunGone

	framesToEngine, framesFromEngine atomic.Uint64
	drops                            sync.Map // reason string -> *atomic.Uint64
	sourceFilter
}

func newShmLink(dev tun.Device, logf func(string, ...any)) (_ *shmLink, err error) {
	fr, ok := dev.(tun.Framed)
	if !ok {
		return nil, errNotFramed
	}
	size, err := ShmRingSize()
	if err != nil {
		return nil, err
	}
	l := &shmLink{dev: dev, frames: fr.Frames(), ft: fr.Format(), logf: logf, size: size, tunGone: newTUNGone()}
	defer func() {
		if err != nil {
			l.release()
		}
	}()
	if l.toEngine, err = newShmRing(size); err != nil {
		return nil, err
	}
	if l.toFront, err = newShmRing(size); err != nil {
		return nil, err
	}
	if l.prod, err = ring.NewProducer(l.toEngine.region, l.toEngine.dataReady, l.toEngine.spaceReady); err != nil {
		return nil, err
	}
	if l.cons, err = ring.NewConsumer(l.toFront.region, l.toFront.dataReady, l.toFront.spaceReady); err != nil {
		return nil, err
	}
	l.handed = append(l.toEngine.files(), l.toFront.files()...)
	return l, nil
}

func (l *shmLink) Setup() Setup {
	return Setup{Mode: Shm, Format: l.ft, RingSize: l.size}
}
func (l *shmLink) Files() []*os.File { return l.handed }
func (l *shmLink) HandedOver() {
	closeAll(l.handed)
	l.handed = nil
}

func (l *shmLink) Start() {
	l.wg.Add(2)
	go l.up()
	go l.down()
}

// up reads frames from the TUN into the ring to the engine, publishing a
// burst at a time. A full ring makes it wait: the TUN's queue then holds
// the packets (backpressure), and the kernel counts what overflows it.
func (l *shmLink) up() {
	defer l.wg.Done()
	pending := 0
	for {
		slot, err := l.prod.Reserve(maxFrame)
		if err != nil {
			l.stopped("to engine", err)
			return
		}
		n, err := l.frames.ReadFrame(slot, pending == 0)
		if err == tun.ErrWouldBlock {
			l.prod.Flush()
			l.framesToEngine.Add(uint64(pending))
			pending = 0
			continue
		}
		if err != nil {
			l.stopped("reading the TUN", err)
			if errors.Is(err, os.ErrClosed) && !l.stopping.Load() {
				l.closedTUN()
			}
			return
		}
		l.prod.Commit(n)
		pending++
		if pending == flushEvery {
			l.prod.Flush()
			l.framesToEngine.Add(uint64(pending))
			pending = 0
		}
	}
}

// down writes the engine's frames to the TUN, straight from the ring.
func (l *shmLink) down() {
	defer l.wg.Done()
	done := 0
	for {
		rec, err := l.cons.Next(false)
		if err == ring.ErrEmpty {
			l.framesFromEngine.Add(uint64(done))
			done = 0
			rec, err = l.cons.Next(true) // releases first
		}
		if err != nil {
			l.stopped("from engine", err)
			return
		}
		if !l.allow(rec, frameHeader(l.ft)) {
			done++
			continue
		}
		if err := l.frames.WriteFrame(rec); err != nil {
			if errors.Is(err, os.ErrClosed) {
				l.stopped("writing the TUN", err)
				if errors.Is(err, os.ErrClosed) && !l.stopping.Load() {
					l.closedTUN()
				}
				return
			}
			l.drop(tun.WriteDropReason(err))
		}
		done++
		if done%flushEvery == 0 {
			l.cons.Release()
		}
	}
}

func (l *shmLink) drop(reason string) {
	v, _ := l.drops.LoadOrStore(reason, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

func (l *shmLink) stopped(where string, err error) {
	if !l.stopping.Load() && !errors.Is(err, os.ErrClosed) && !errors.Is(err, ring.ErrClosed) {
		l.logf("flow: shm relay stopped %s: %v", where, err)
	}
}

func (l *shmLink) Close() error {
	l.stopping.Store(true)
	d := tunDeadliner(l.dev)
	if d != nil {
		d.SetReadDeadline(time.Now())
	}
	l.prod.Close()
	l.cons.Close()
	l.wg.Wait()
	if d != nil {
		d.SetReadDeadline(time.Time{})
	}
	l.release()
	return nil
}

// release unmaps the rings and closes what the front still holds.
func (l *shmLink) release() {
	closeAll(l.handed)
	l.handed = nil
	for _, r := range []*shmRing{l.toEngine, l.toFront} {
		if r == nil {
			continue
		}
		r.closeFDs()
		if r.region != nil {
			r.region.Unmap()
			r.region = nil
		}
	}
}

func (l *shmLink) Stats() []metrics.Counter {
	out := []metrics.Counter{
		{Name: "flow_frames_to_engine", Value: l.framesToEngine.Load()},
		{Name: "flow_frames_from_engine", Value: l.framesFromEngine.Load()},
	}
	l.drops.Range(func(k, v any) bool {
		out = append(out, metrics.Counter{Name: k.(string), Value: v.(*atomic.Uint64).Load()})
		return true
	})
	out = append(out, l.sourceFilter.stats()...)
	out = append(out, metrics.Prefixed("flow_to_engine_", l.prod.Stats())...)
	out = append(out, metrics.Prefixed("flow_to_front_", l.cons.Stats())...)
	return out
}

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
