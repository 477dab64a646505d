package tun

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
)

// A WriteQueue gathers packets from many goroutines (an OpenConnect
// engine's sessions) and writes them to a Device in batches from one:
// one Write call for whatever is queued, so the device can coalesce them
// (GRO). A full queue holds the putters back; it never drops.
//
// Queued packets wait in buffers of their own size (Size), not of a
// segment's: a full queue of 1400-byte packets holds 256 × 2 KiB, not
// 256 × 64 KiB. Run copies each batch into buffers of MaxSegmentSize, in
// which the device coalesces them.
type WriteQueue struct {
	dev    Device
	offset int
	size   int
	q      chan []byte
	stop   chan struct{}
	once   sync.Once
	pool   sync.Pool
	errors atomic.Uint64
}

// NewWriteQueue makes a queue of depth packets for dev, whose packets
// start at offset in their buffers; Buffer's hold a packet of up to size
// bytes.
func NewWriteQueue(dev Device, offset, depth, size int) *WriteQueue {
	w := &WriteQueue{dev: dev, offset: offset, size: size, q: make(chan []byte, depth), stop: make(chan struct{})}
	w.pool.New = func() any { b := make([]byte, offset+size); return &b }
	return w
}

// Size is the largest packet a Buffer holds.
func (w *WriteQueue) Size() int { return w.size }

// Buffer returns a buffer for one packet of up to Size bytes, to be
// filled at [offset:] and given to Queue (or back with Release). A larger
// packet needs a buffer of its own, which Queue takes as well.
func (w *WriteQueue) Buffer() []byte { return *w.pool.Get().(*[]byte) }

// Release returns a buffer Queue was not given.
func (w *WriteQueue) Release(b []byte) {
	if cap(b) != w.offset+w.size {
		return
	}
	b = b[:cap(b)]
	w.pool.Put(&b)
}

// Queue queues the packet in b[offset:offset+n] (b from Buffer, or of its
// own for a packet larger than Size), which it takes, waiting while the
// queue is full. It returns false, having released b, once the queue has
// stopped.
func (w *WriteQueue) Queue(b []byte, n int) bool {
	select {
	case <-w.stop:
		w.Release(b)
		return false
	default:
	}
	select {
	case w.q <- b[:w.offset+n]:
		return true
	case <-w.stop:
		w.Release(b)
		return false
	}
}

// Put queues a copy of pkt.
func (w *WriteQueue) Put(pkt []byte) bool {
	var b []byte
	if len(pkt) <= w.size {
		b = w.Buffer()
	} else {
		b = make([]byte, w.offset+len(pkt))
	}
	copy(b[w.offset:], pkt)
	return w.Queue(b, len(pkt))
}

// Stop ends Run; Queue then refuses.
func (w *WriteQueue) Stop() { w.once.Do(func() { close(w.stop) }) }

// Errors counts the writes the device refused (packets it counts by reason).
func (w *WriteQueue) Errors() uint64 { return w.errors.Load() }

// Run writes the queue to the device until Stop, or until the device is
// closed (then it stops the queue and returns os.ErrClosed).
func (w *WriteQueue) Run() error {
	n := w.dev.BatchSize()
	segs := make([][]byte, n) // where the device may coalesce: each of a segment's size
	for i := range segs {
		segs[i] = make([]byte, w.offset+MaxSegmentSize)
	}
	batch := make([][]byte, 0, n)
	for {
		var b []byte
		select {
		case b = <-w.q:
		case <-w.stop:
			return nil
		}
		batch = append(batch[:0], w.take(segs[0], b))
	more:
		for len(batch) < n {
			select {
			case b := <-w.q:
				batch = append(batch, w.take(segs[len(batch)], b))
			default:
				break more
			}
		}
		_, err := w.dev.Write(batch, w.offset)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				w.Stop()
				return err
			}
			w.errors.Add(1)
		}
	}
}

// take copies the queued packet b into seg, releases b and returns the
// packet in seg.
func (w *WriteQueue) take(seg, b []byte) []byte {
	seg = seg[:cap(seg)]
	n := copy(seg[w.offset:], b[w.offset:])
	w.Release(b)
	return seg[:w.offset+n]
}
