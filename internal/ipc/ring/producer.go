package ring

import (
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/ptun-vpn/ptun/metrics"
)

// defaultSpins is how many times a side yields (runtime.Gosched) and
// re-checks the peer's index before it arms its flag and sleeps. A short spin
// catches a peer that is about to publish, saving two syscalls and a wakeup.
const defaultSpins = 4

// Producer writes records into a ring. All methods except Close and Stats
// must be called from one goroutine at a time.
type Producer struct {
	r          *Region
	data       []byte
	size       uint64
	mask       uint64
	maxPayload int
	spins      int
	// beforeArm, if set, runs between the last look at head and arming
	// producerWaiting: tests widen the lost-wakeup window with it.
	beforeArm func()

	tail      uint64 // end of the committed records; ahead of published until Flush
	published uint64 // the tail last stored to shared memory
	head      uint64 // the last validated consumer head
	reserved  int    // payload bytes of the open reservation; -1 when none
	err       error  // sticky ErrCorrupt

	// Counted on the hot path, added to stats at Flush.
	pendingRecords, pendingBytes uint64

	dataReady, spaceReady *notifier
	closing               atomic.Bool

	stats struct {
		records, bytes, flushes, kicks, fullWaits, corrupt atomic.Uint64
	}
}

// NewProducer returns the producer side of the ring in r. dataReady and
// spaceReady are eventfds (NewEventFD) shared with the consumer; the producer
// works on duplicates, so the caller keeps ownership of its descriptors. The
// producer resumes from the indices in r (zero for a new ring) and returns
// ErrCorrupt if they are impossible, ErrClosed if the ring is closed.
func NewProducer(r *Region, dataReady, spaceReady int) (*Producer, error) {
	tail, head := r.h.tail.Load(), r.h.head.Load()
	if tail%RecordAlign != 0 || head%RecordAlign != 0 || tail-head > r.size {
		return nil, fmt.Errorf("%w: producer attach: tail %d, head %d, data size %d", ErrCorrupt, tail, head, r.size)
	}
	if r.h.closed.Load() != 0 {
		return nil, ErrClosed
	}
	p := &Producer{
		r:          r,
		data:       r.data,
		size:       r.size,
		mask:       r.size - 1,
		maxPayload: r.MaxPayload(),
		spins:      defaultSpins,
		tail:       tail,
		published:  tail,
		head:       head,
		reserved:   -1,
	}
	var err error
	if p.dataReady, err = newNotifier(dataReady, "dataReady"); err != nil {
		return nil, err
	}
	if p.spaceReady, err = newNotifier(spaceReady, "spaceReady"); err != nil {
		p.dataReady.close()
		return nil, err
	}
	return p, nil
}

// MaxPayload returns the largest n Reserve accepts.
func (p *Producer) MaxPayload() int { return p.maxPayload }

// Reserve returns a slice of exactly n bytes in shared memory for the payload
// of the next record. The caller fills it and calls Commit; the slice belongs
// to the caller only until Commit or the next Reserve (which abandons an
// uncommitted reservation), after which it must not be touched.
//
// When the ring has no room, Reserve flushes the committed records, arms
// producerWaiting and sleeps until the consumer releases space
// (backpressure). It returns ErrClosed once either side closed, ErrTooLarge
// if n > MaxPayload, ErrCorrupt if the consumer's head is impossible.
func (p *Producer) Reserve(n int) ([]byte, error) {
	if p.err != nil {
		return nil, p.err
	}
	if n < 0 || n > p.maxPayload {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, n, p.maxPayload)
	}
	if p.closing.Load() || p.r.h.closed.Load() != 0 {
		return nil, ErrClosed
	}
	p.reserved = -1
	rec := recordSize(uint64(n))
	off := p.tail & p.mask
	need, pad := rec, uint64(0)
	if rec > p.size-off {
		pad = p.size - off
		need += pad
	}
	if p.size-(p.tail-p.head) < need {
		if err := p.waitSpace(need); err != nil {
			return nil, err
		}
	}
	if pad != 0 {
		storeUint64(p.data, off, (pad-RecordHeaderSize)|flagPadding<<32)
		p.tail += pad
		off = 0
	}
	p.reserved = n
	start := off + RecordHeaderSize
	return p.data[start : start+uint64(n) : start+uint64(n)], nil
}

// Commit ends the open reservation with a record of n bytes, n at most the
// size reserved. The record becomes visible to the consumer at the next
// Flush. Commit without a reservation, or with n out of range, panics: it
// is a bug in the caller, not in the peer.
func (p *Producer) Commit(n int) {
	if n < 0 || n > p.reserved {
		panic(fmt.Sprintf("ring: Commit(%d) with %d bytes reserved", n, p.reserved))
	}
	storeUint64(p.data, p.tail&p.mask, uint64(n))
	p.tail += recordSize(uint64(n))
	p.reserved = -1
	p.pendingRecords++
	p.pendingBytes += uint64(n)
}

// Push copies b into the next record: Reserve, copy, Commit. Like Commit, it
// does not publish; call Flush after a batch.
func (p *Producer) Push(b []byte) error {
	dst, err := p.Reserve(len(b))
	if err != nil {
		return err
	}
	copy(dst, b)
	p.Commit(len(b))
	return nil
}

// Flush publishes every committed record with one atomic store of tail and,
// only if the consumer armed consumerWaiting, writes the dataReady eventfd.
// A poisoned producer (ErrCorrupt) publishes nothing more.
func (p *Producer) Flush() {
	if p.tail == p.published || p.err != nil {
		return
	}
	// Store tail, then load consumerWaiting; the consumer stores
	// consumerWaiting, then loads tail. Both are sequentially consistent,
	// so one of the two sides sees the other's store: no lost wakeup.
	p.r.h.tail.Store(p.tail)
	p.published = p.tail
	p.stats.flushes.Add(1)
	p.stats.records.Add(p.pendingRecords)
	p.stats.bytes.Add(p.pendingBytes)
	p.pendingRecords, p.pendingBytes = 0, 0
	if p.r.h.consumerWaiting.Load() != 0 && p.r.h.consumerWaiting.Swap(0) != 0 {
		p.stats.kicks.Add(1)
		p.dataReady.kick()
	}
}

// refreshHead loads the consumer's head and checks it: aligned, not behind
// the last head seen and not beyond the published tail.
func (p *Producer) refreshHead() error {
	h := p.r.h.head.Load()
	if h == p.head {
		return nil
	}
	if h%RecordAlign != 0 || h-p.head > p.published-p.head {
		p.stats.corrupt.Add(1)
		p.err = fmt.Errorf("%w: consumer head %d outside [%d, %d]", ErrCorrupt, h, p.head, p.published)
		return p.err
	}
	p.head = h
	return nil
}

func (p *Producer) hasRoom(need uint64) bool {
	return p.size-(p.tail-p.head) >= need
}

// waitSpace returns once need bytes are free after p.tail. Each pass of its
// loop either returns or sleeps on spaceReady, which only a release, a
// close, or the peer writing the eventfd ends.
func (p *Producer) waitSpace(need uint64) error {
	for {
		if err := p.refreshHead(); err != nil {
			return err
		}
		if p.hasRoom(need) {
			return nil
		}
		if p.closing.Load() || p.r.h.closed.Load() != 0 {
			return ErrClosed
		}
		// The consumer may be asleep waiting for what we have not
		// published yet.
		p.Flush()
		if p.spin() {
			continue
		}
		if p.beforeArm != nil {
			p.beforeArm()
		}
		p.r.h.producerWaiting.Store(1)
		if err := p.refreshHead(); err != nil {
			return err
		}
		if p.hasRoom(need) || p.r.h.closed.Load() != 0 {
			p.r.h.producerWaiting.Store(0)
			continue
		}
		p.stats.fullWaits.Add(1)
		err := p.spaceReady.wait()
		if p.r.h.producerWaiting.Load() != 0 {
			p.r.h.producerWaiting.Store(0)
		}
		if p.closing.Load() {
			return ErrClosed
		}
		if err != nil {
			return fmt.Errorf("ring: waiting for space: %w", err)
		}
	}
}

// spin yields up to p.spins times and reports whether the consumer's head
// moved meanwhile.
func (p *Producer) spin() bool {
	for range p.spins {
		runtime.Gosched()
		if p.r.h.head.Load() != p.head {
			return true
		}
	}
	return false
}

// Close marks the ring closed and wakes every waiter on both eventfds, in
// this process (a Reserve blocked in another goroutine returns ErrClosed) and
// in the peer. Committed records that were not flushed are lost: Flush from
// the producing goroutine first to deliver them. Close may be called from
// any goroutine, any number of times; the Region must stay mapped until the
// producing goroutine has returned from its last call.
func (p *Producer) Close() error {
	if p.closing.Swap(true) {
		return nil
	}
	p.r.h.closed.Or(closedByProducer)
	p.dataReady.kick()
	p.spaceReady.kick()
	err1 := p.dataReady.close()
	err2 := p.spaceReady.close()
	if err1 != nil {
		return err1
	}
	return err2
}

// Stats returns the producer's counters. Records and bytes count flushed
// records. Safe to call from any goroutine.
func (p *Producer) Stats() []metrics.Counter {
	return []metrics.Counter{
		{Name: "ring_tx_records", Value: p.stats.records.Load()},
		{Name: "ring_tx_bytes", Value: p.stats.bytes.Load()},
		{Name: "ring_tx_flushes", Value: p.stats.flushes.Load()},
		{Name: "ring_tx_kicks", Value: p.stats.kicks.Load()},
		{Name: "ring_tx_full_waits", Value: p.stats.fullWaits.Load()},
		{Name: "ring_tx_corrupt", Value: p.stats.corrupt.Load()},
	}
}
