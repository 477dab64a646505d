package ring

import (
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/ptun-vpn/ptun/metrics"
)

// Consumer reads records from a ring. All methods except Close and Stats must
// be called from one goroutine at a time.
type Consumer struct {
	r          *Region
	data       []byte
	size       uint64
	mask       uint64
	maxPayload uint64
	spins      int
	// beforeArm, if set, runs between the last look at tail and arming
	// consumerWaiting: tests widen the lost-wakeup window with it.
	beforeArm func()

	readPos   uint64 // start of the next record; ahead of published until Release
	published uint64 // the head last stored to shared memory
	tail      uint64 // the last validated producer tail
	err       error  // sticky ErrCorrupt

	// Counted on the hot path, added to stats at Release.
	pendingRecords, pendingBytes, pendingPads uint64

	dataReady, spaceReady *notifier
	closing               atomic.Bool

	stats struct {
		records, bytes, pads, kicks, emptyWaits, corrupt atomic.Uint64
	}
}

// NewConsumer returns the consumer side of the ring in r; dataReady and
// spaceReady are the eventfds shared with the producer, used as in
// NewProducer. The consumer resumes from the indices in r and returns
// ErrCorrupt if they are impossible.
func NewConsumer(r *Region, dataReady, spaceReady int) (*Consumer, error) {
	dr, err := newNotifier(dataReady, "dataReady")
	if err != nil {
		return nil, err
	}
	sr, err := newNotifier(spaceReady, "spaceReady")
	if err != nil {
		dr.close()
		return nil, err
	}
	c, err := newConsumer(r, dr, sr)
	if err != nil {
		dr.close()
		sr.close()
	}
	return c, err
}

// newConsumer is NewConsumer with the notifiers made; they are closed by
// Close.
func newConsumer(r *Region, dataReady, spaceReady *notifier) (*Consumer, error) {
	tail, head := r.h.tail.Load(), r.h.head.Load()
	if tail%RecordAlign != 0 || head%RecordAlign != 0 || tail-head > r.size {
		return nil, fmt.Errorf("%w: consumer attach: tail %d, head %d, data size %d", ErrCorrupt, tail, head, r.size)
	}
	return &Consumer{
		r:          r,
		data:       r.data,
		size:       r.size,
		mask:       r.size - 1,
		maxPayload: uint64(r.MaxPayload()),
		spins:      defaultSpins,
		readPos:    head,
		published:  head,
		tail:       tail,
		dataReady:  dataReady,
		spaceReady: spaceReady,
	}, nil
}

// Next returns the payload of the next record. The slice points into shared
// memory and stays valid until Release (or a Next(true) that sleeps, which
// releases first); the caller must not keep it longer or write to it. The
// peer can change the bytes at any time, so copy what must be validated
// before validating it.
//
// With wait false, Next returns ErrEmpty when no record is published. With
// wait true it releases, arms consumerWaiting, re-checks and sleeps until the
// producer publishes. It returns ErrClosed after Close on this side, or once
// the ring is closed and every published record was read; ErrCorrupt when
// the producer broke the layout.
func (c *Consumer) Next(wait bool) ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.closing.Load() {
		return nil, ErrClosed
	}
	for {
		if c.readPos == c.tail {
			if err := c.refreshTail(); err != nil {
				return nil, err
			}
		}
		if c.readPos != c.tail {
			b, ok, err := c.parse()
			if ok || err != nil {
				return b, err
			}
			// A padding record was skipped. The next record starts at
			// offset 0, where parse refuses padding, so Next skips at
			// most one before it returns or sleeps.
			continue
		}
		if c.r.h.closed.Load() != 0 {
			// Records published before the close are still read.
			if err := c.refreshTail(); err != nil {
				return nil, err
			}
			if c.readPos != c.tail {
				continue
			}
			return nil, ErrClosed
		}
		if !wait {
			return nil, ErrEmpty
		}
		if err := c.sleep(); err != nil {
			return nil, err
		}
	}
}

// refreshTail loads the producer's tail and checks it: aligned, not behind
// the last tail seen and at most one data region ahead of the published
// head.
func (c *Consumer) refreshTail() error {
	t := c.r.h.tail.Load()
	if t == c.tail {
		return nil
	}
	if t%RecordAlign != 0 || t-c.tail > c.size || t-c.published > c.size {
		return c.corrupt("producer tail %d, last tail %d, head %d, data size %d", t, c.tail, c.published, c.size)
	}
	c.tail = t
	return nil
}

// parse reads the record at readPos, which is before tail. It returns ok
// false and no error after skipping a padding record.
func (c *Consumer) parse() (b []byte, ok bool, err error) {
	avail := c.tail - c.readPos // at most c.size, checked by refreshTail
	off := c.readPos & c.mask   // 8-aligned: indices are checked aligned
	hdr := loadUint64(c.data, off)
	length, flags := hdr&0xffffffff, hdr>>32
	switch flags {
	case 0:
	case flagPadding:
		rest := c.size - off
		if off == 0 || length+RecordHeaderSize != rest || rest > avail {
			return nil, false, c.corrupt("padding record of %d bytes at offset %d, %d bytes to the end, %d published", length, off, rest, avail)
		}
		c.readPos += rest
		c.pendingPads++
		return nil, false, nil
	default:
		return nil, false, c.corrupt("record flags %#x at offset %d", flags, off)
	}
	if length > c.maxPayload {
		return nil, false, c.corrupt("record of %d bytes at offset %d, max %d", length, off, c.maxPayload)
	}
	rec := recordSize(length)
	if rec > avail || rec > c.size-off {
		return nil, false, c.corrupt("record of %d bytes at offset %d, %d bytes published, %d to the end", length, off, avail, c.size-off)
	}
	start := off + RecordHeaderSize
	c.readPos += rec
	c.pendingRecords++
	c.pendingBytes += length
	return c.data[start : start+length : start+length], true, nil
}

func (c *Consumer) corrupt(format string, args ...any) error {
	c.stats.corrupt.Add(1)
	c.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	return c.err
}

// sleep waits for the producer to publish, after a short spin. It returns nil
// when the caller should look again (maybe spuriously).
func (c *Consumer) sleep() error {
	for range c.spins {
		runtime.Gosched()
		if c.r.h.tail.Load() != c.tail {
			return nil
		}
	}
	// Give the space back first: the producer may be waiting for it.
	c.Release()
	if c.beforeArm != nil {
		c.beforeArm()
	}
	// Store consumerWaiting, then load tail; the producer stores tail, then
	// loads consumerWaiting (see Flush).
	c.r.h.consumerWaiting.Store(1)
	if c.r.h.tail.Load() != c.tail || c.r.h.closed.Load() != 0 {
		c.r.h.consumerWaiting.Store(0)
		return nil
	}
	c.stats.emptyWaits.Add(1)
	err := c.dataReady.wait()
	if c.r.h.consumerWaiting.Load() != 0 {
		c.r.h.consumerWaiting.Store(0)
	}
	if c.closing.Load() {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("ring: waiting for data: %w", err)
	}
	return nil
}

// Release hands the space of every record returned by Next back to the
// producer with one atomic store of head and, only if the producer armed
// producerWaiting, writes the spaceReady eventfd. Slices returned by Next
// are invalid afterwards. A poisoned consumer (ErrCorrupt) writes nothing
// more to the shared region.
func (c *Consumer) Release() {
	if c.readPos == c.published || c.err != nil {
		return
	}
	c.r.h.head.Store(c.readPos)
	c.published = c.readPos
	c.stats.records.Add(c.pendingRecords)
	c.stats.bytes.Add(c.pendingBytes)
	if c.pendingPads != 0 {
		c.stats.pads.Add(c.pendingPads)
	}
	c.pendingRecords, c.pendingBytes, c.pendingPads = 0, 0, 0
	if c.r.h.producerWaiting.Load() != 0 && c.r.h.producerWaiting.Swap(0) != 0 {
		c.stats.kicks.Add(1)
		c.spaceReady.kick()
	}
}

// Close marks the ring closed and wakes every waiter on both eventfds, in
// this process (a Next blocked in another goroutine returns ErrClosed) and in
// the peer. Later calls to Next return ErrClosed. Close may be called from
// any goroutine, any number of times; the Region must stay mapped until the
// consuming goroutine has returned from its last call.
func (c *Consumer) Close() error {
	if c.closing.Swap(true) {
		return nil
	}
	c.r.h.closed.Or(closedByConsumer)
	c.dataReady.kick()
	c.spaceReady.kick()
	err1 := c.dataReady.close()
	err2 := c.spaceReady.close()
	if err1 != nil {
		return err1
	}
	return err2
}

// Stats returns the consumer's counters. Records, bytes and pads (padding
// records skipped at the end of a lap) count released records. Safe to call
// from any goroutine.
func (c *Consumer) Stats() []metrics.Counter {
	return []metrics.Counter{
		{Name: "ring_rx_records", Value: c.stats.records.Load()},
		{Name: "ring_rx_bytes", Value: c.stats.bytes.Load()},
		{Name: "ring_rx_pads", Value: c.stats.pads.Load()},
		{Name: "ring_rx_kicks", Value: c.stats.kicks.Load()},
		{Name: "ring_rx_empty_waits", Value: c.stats.emptyWaits.Load()},
		{Name: "ring_rx_corrupt", Value: c.stats.corrupt.Load()},
	}
}
