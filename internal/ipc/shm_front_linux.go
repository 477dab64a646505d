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
	CloseFiles(l.handed)
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
	CloseFiles(l.handed)
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
