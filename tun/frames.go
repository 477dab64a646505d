package tun

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"

	"github.com/ptun-vpn/ptun/metrics"
)

// A Device is two layers: Frames, which moves whole frames (one virtio-net
// header and one packet or GSO super-packet) to and from the kernel, and the
// offload layer NewDevice builds on it, which splits super-packets on Read
// and coalesces packets on Write. The kernel's TUN file is one Frames; the
// front/engine flow (package internal/ipc) supplies others, so an engine in another
// process runs the same offload code over a shared-memory ring.

// Frames moves whole frames between the kernel (or a process that owns the
// kernel's device) and ptun. With Format.VnetHdr each frame starts with a
// 10-byte virtio-net header; without it a frame is one IP packet.
//
// One goroutine at a time may call ReadFrame, and one WriteFrame; the two
// may run concurrently.
type Frames interface {
	// ReadFrame reads one frame into b and returns its length. With wait
	// false it returns ErrWouldBlock at once when no frame is queued.
	// After Close, or when the interface went away, it returns
	// os.ErrClosed.
	ReadFrame(b []byte, wait bool) (int, error)

	// WriteFrame writes the frame b. It returns nil, os.ErrClosed, or an
	// error saying why the frame was dropped; b is not retained.
	WriteFrame(b []byte) error

	// MTU is the interface's current MTU.
	MTU() (int, error)

	// Close closes the frames; blocked calls return os.ErrClosed.
	Close() error
}

// Flusher is implemented by Frames that buffer written frames (a shared
// memory ring): Flush publishes them. The Device calls it at the end of
// every Write, so one Write's frames cross in one batch.
type Flusher interface{ Flush() }

// ErrWouldBlock is returned by Frames.ReadFrame(b, false) when no frame is
// queued: read again with wait true.
var ErrWouldBlock = errors.New("tun: no frame queued")

// Format says what the frames of a Frames hold and which offloads the
// device may use on them. The kernel's device reports its own with
// Framed.Format; a Frames that relays another process's device must use
// that device's Format.
type Format struct {
	Name    string // the interface's name
	VnetHdr bool   // frames start with a virtio-net header; GSO super-packets may come
	USO     bool   // the kernel takes UDP super-packets (USO4/USO6)
	GRO     bool   // coalesce packets of one flow on Write (TCP; UDP too with USO)
}

// VirtioNetHdrLen is the size of the virtio-net header that starts each
// frame of a Format with VnetHdr.
const VirtioNetHdrLen = virtioNetHdrLen

// Framed is implemented by the Devices Create and NewDevice return: the
// layers under the Device, for a front that relays frames to an engine.
type Framed interface {
	Frames() Frames
	Format() Format
}

// NewDevice returns the Device that reads and writes packets over f, which
// holds frames in format ft: it splits GSO super-packets on Read, completes
// partial checksums, and coalesces on Write (ft.GRO), counting every drop
// by reason. Close closes f.
func NewDevice(f Frames, ft Format, logf func(format string, args ...any)) Device {
	d := &device{f: f, ft: ft, logf: logf, closing: make(chan struct{})}
	d.w = batchWriter{vnet: ft.VnetHdr, sys: d.writeFrame, st: &d.st, logf: logf,
		tcpGRO: ft.VnetHdr && ft.GRO, udpGRO: ft.VnetHdr && ft.GRO && ft.USO}
	if fl, ok := f.(Flusher); ok {
		d.w.flush = fl.Flush
	}
	return d
}

// device is the offload layer over Frames. Read may run concurrently with
// Write; concurrent Writes are serialized by batchWriter.mu, concurrent Reads
// by readMu.
type device struct {
	f      Frames
	ft     Format
	closed atomic.Bool
	st     counters
	w      batchWriter
	logf   func(format string, args ...any)

	// readMu guards pending: a frame read but not yet returned because
	// the batch had no room left for its segments.
	readMu  sync.Mutex
	pending []byte

	// Hold's (hold.go): released is closed when a hold ends (nil: not
	// held); holdEpoch counts holds and releases; closing is closed by
	// Close.
	holdMu    sync.Mutex
	released  chan struct{}
	holdEpoch atomic.Uint64
	closing   chan struct{}
}

var (
	_ Device           = (*device)(nil)
	_ Framed           = (*device)(nil)
	_ metrics.Reporter = (*device)(nil)
)

// Frames implements Framed.
func (d *device) Frames() Frames { return d.f }

// Format implements Framed.
func (d *device) Format() Format { return d.ft }

// Name implements Device.
func (d *device) Name() string { return d.ft.Name }

// BatchSize implements Device: 64, the interface's gso_max_segs, so that a
// super-packet always fits in one Read.
func (d *device) BatchSize() int { return defaultBatchSize }

// MTU implements Device.
func (d *device) MTU() (int, error) {
	if d.closed.Load() {
		return 0, os.ErrClosed
	}
	return d.f.MTU()
}

// Stats implements metrics.Reporter, with the Frames' counters if they
// keep any.
func (d *device) Stats() []metrics.Counter {
	out := d.st.snapshot()
	if r, ok := d.f.(metrics.Reporter); ok {
		out = append(out, r.Stats()...)
	}
	return out
}

// Close implements Device. It is safe to call more than once.
func (d *device) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(d.closing)
	return d.f.Close()
}

// Read implements Device. It waits for the first frame, then goes on
// reading plain packets, without waiting, while more are queued and bufs
// have room: one wakeup serves a whole burst. A GSO super-packet is split
// into as many bufs as it has segments and ends the batch. A super-packet
// read after plain packets that does not fit in the room left is kept, and
// is the first packet of the next Read: nothing is dropped for want of
// buffers. While the device is held (Hold), it waits.
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if offset < MinOffset || len(bufs) == 0 || len(sizes) == 0 || len(bufs[0]) <= offset {
		return 0, errBadOffset
	}
	for {
		if err := d.waitHold(); err != nil {
			return 0, err
		}
		epoch := d.holdEpoch.Load()
		n, err := d.read(bufs, sizes, offset)
		// A hold's wakeup (or the end of one racing it) is no error.
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && d.holdEpoch.Load() != epoch {
			continue
		}
		return n, err
	}
}

func (d *device) read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.readMu.Lock()
	defer d.readMu.Unlock()
	vnet := d.ft.VnetHdr
	limit := min(len(bufs), len(sizes))
	total := 0
	for total < limit {
		buf := bufs[total][offset:]
		if vnet {
			buf = bufs[total][offset-virtioNetHdrLen:]
		}
		var nr int
		var err error
		switch {
		case total == 0 && len(d.pending) > 0:
			nr = copy(buf, d.pending)
			d.pending = d.pending[:0]
		default:
			nr, err = d.f.ReadFrame(buf, total == 0)
		}
		if err != nil {
			if total > 0 {
				// ErrWouldBlock ends the burst; another error will
				// come back on the next Read, which has nothing to
				// return.
				return total, nil
			}
			if d.closed.Load() {
				err = os.ErrClosed
			}
			return 0, err
		}
		d.st.reads.Add(1)
		if !vnet {
			sizes[total] = nr
			d.st.packetsIn.Add(1)
			d.st.bytesIn.Add(uint64(nr))
			total++
			continue
		}
		res, err := processRead(bufs[total:limit], sizes[total:limit], offset, nr)
		if res.drop == dropReadTooManySegs && total > 0 {
			// It may fit in a whole batch: keep it for the next Read.
			d.pending = append(d.pending[:0], buf[:nr]...)
			return total, nil
		}
		if res.drop != dropNone {
			d.st.readDrops[res.drop].Add(1)
			if err != nil {
				return total, err
			}
			continue
		}
		if err != nil {
			return total, err
		}
		if res.split {
			d.st.gsoSplit.Add(1)
			d.st.gsoSegments.Add(uint64(res.n))
		}
		if res.csumed {
			d.st.csumCompleted.Add(1)
		}
		d.st.packetsIn.Add(uint64(res.n))
		d.st.bytesIn.Add(uint64(nr - virtioNetHdrLen))
		total += res.n
		if res.split {
			// A super-packet is a batch of its own; reading on would
			// likely bring another that does not fit in the room left,
			// and cost a copy to keep it.
			return total, nil
		}
	}
	return total, nil
}

// Write implements Device.
func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	if d.closed.Load() {
		return 0, os.ErrClosed
	}
	return d.w.write(bufs, offset)
}

// writeFrame is batchWriter's syscall layer.
func (d *device) writeFrame(b []byte) error {
	err := d.f.WriteFrame(b)
	if err != nil && d.closed.Load() {
		return os.ErrClosed
	}
	return err
}
