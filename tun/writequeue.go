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
type WriteQueue struct {
	dev    Device
	offset int
	q      chan []byte
	stop   chan struct{}
	once   sync.Once
	pool   sync.Pool
	errors atomic.Uint64
}

// NewWriteQueue makes a queue of depth packets for dev, whose packets
// start at offset in their buffers.
func NewWriteQueue(dev Device, offset, depth int) *WriteQueue {
	w := &WriteQueue{dev: dev, offset: offset, q: make(chan []byte, depth), stop: make(chan struct{})}
	w.pool.New = func() any { b := make([]byte, offset+MaxSegmentSize); return &b }
	return w
}

// Buffer returns a buffer for one packet, to be filled at [offset:] and
// given to Queue (or back with Release).
func (w *WriteQueue) Buffer() []byte { return *w.pool.Get().(*[]byte) }

// Release returns a buffer Queue was not given.
func (w *WriteQueue) Release(b []byte) {
	if cap(b) != w.offset+MaxSegmentSize {
		return
	}
	b = b[:cap(b)]
	w.pool.Put(&b)
}

// Queue queues the packet in b[offset:offset+n] (b from Buffer, which it
// takes), waiting while the queue is full. It returns false, having
// released b, once the queue has stopped.
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
	b := w.Buffer()
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
	batch := make([][]byte, 0, w.dev.BatchSize())
	for {
		var b []byte
		select {
		case b = <-w.q:
		case <-w.stop:
			return nil
		}
		batch = append(batch[:0], b)
	more:
		for len(batch) < cap(batch) {
			select {
			case b := <-w.q:
				batch = append(batch, b)
			default:
				break more
			}
		}
		_, err := w.dev.Write(batch, w.offset)
		for _, b := range batch {
			w.Release(b)
		}
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				w.Stop()
				return err
			}
			w.errors.Add(1)
		}
	}
}
