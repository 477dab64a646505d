package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// word reads the native-endian uint64 at off of a mapping, as the peer
// process would.
func word(r *Region, off uint64) uint64 { return binary.NativeEndian.Uint64(r.mem[off:]) }

func TestCreateRejectsSizes(t *testing.T) {
	for _, n := range []int{0, MinDataSize / 2, MinDataSize + 8, 3 << 20, MaxDataSize * 2} {
		if fd, err := Create(n); err == nil {
			unix.Close(fd)
			t.Errorf("Create(%d) succeeded", n)
		}
	}
	if got := MaxPayload(DefaultDataSize); got < gsoMax {
		t.Errorf("MaxPayload(DefaultDataSize) = %d, smaller than a GSO super-packet (%d)", got, gsoMax)
	}
}

// TestLayout pins the shared layout, which the peer process relies on:
// header fields, record headers, padding to the end of the data region, and
// that nothing is visible before Flush.
func TestLayout(t *testing.T) {
	tr := newTestRing(t, MinDataSize)
	size := uint64(MinDataSize)
	pr := tr.pr
	if got := word(pr, offMagic); got != magic {
		t.Fatalf("magic %#x", got)
	}
	if string(pr.mem[:8]) != "ptunring" && binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		t.Errorf("magic bytes %q on a little-endian host", pr.mem[:8])
	}
	if got := binary.NativeEndian.Uint32(pr.mem[offVersion:]); got != Version {
		t.Errorf("version %d", got)
	}
	if got := word(pr, offDataSize); got != size {
		t.Errorf("dataSize %d", got)
	}
	for _, n := range []int{0, 1, 13} {
		if err := tr.p.Push(pattern[:n]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.c.Next(false); err != ErrEmpty {
		t.Fatalf("Next before Flush: %v, want ErrEmpty", err)
	}
	if got := word(pr, offTail); got != 0 {
		t.Fatalf("tail %d published before Flush", got)
	}
	tr.p.Flush()
	// Records of 0, 1 and 13 bytes take 8, 16 and 24 bytes.
	if got := word(pr, offTail); got != 48 {
		t.Fatalf("tail %d, want 48", got)
	}
	data := uint64(HeaderSize)
	for _, w := range []struct{ off, want uint64 }{{0, 0}, {8, 1}, {24, 13}} {
		if got := word(pr, data+w.off); got != w.want {
			t.Errorf("record header at %d = %#x, want %#x", w.off, got, w.want)
		}
	}
	if string(pr.mem[data+32:][:13]) != string(pattern[:13]) {
		t.Errorf("payload of the third record not at data offset 32")
	}
	for _, n := range []int{0, 1, 13} {
		b, err := tr.c.Next(false)
		if err != nil || string(b) != string(pattern[:n]) || cap(b) != n {
			t.Fatalf("Next: %q (cap %d), %v; want %q", b, cap(b), err, pattern[:n])
		}
	}
	if got := word(pr, offHead); got != 0 {
		t.Fatalf("head %d published before Release", got)
	}
	tr.c.Release()
	if got := word(pr, offHead); got != 48 {
		t.Fatalf("head %d after Release, want 48", got)
	}

	// Fill to 16 bytes before the end: a record of 1000 bytes (1008 in
	// the ring) cannot fit there, so a padding record with 8 bytes of
	// payload fills to the end and the record starts at offset 0.
	fill := int(size-64)/2 - RecordHeaderSize // two records end 16 bytes short
	for range 2 {
		if err := tr.p.Push(pattern[:fill]); err != nil {
			t.Fatal(err)
		}
	}
	tr.p.Flush()
	for range 2 {
		if b, err := tr.c.Next(false); err != nil || len(b) != fill {
			t.Fatalf("Next: %d bytes, %v", len(b), err)
		}
	}
	tr.c.Release()
	if err := tr.p.Push(pattern[:1000]); err != nil {
		t.Fatal(err)
	}
	tr.p.Flush()
	if got, want := word(pr, data+size-16), uint64(8)|flagPadding<<32; got != want {
		t.Errorf("padding header %#x, want %#x", got, want)
	}
	if got := word(pr, data); got != 1000 {
		t.Errorf("record after the padding: header %#x, want 1000 at offset 0", got)
	}
	if got := word(pr, offTail); got != size+1008 {
		t.Errorf("tail %d, want %d", got, size+1008)
	}
	b, err := tr.c.Next(false)
	if err != nil || string(b) != string(pattern[:1000]) {
		t.Fatalf("record after the padding: %d bytes, %v", len(b), err)
	}
	tr.c.Release()
	if got := stat(t, tr.c, "ring_rx_pads"); got != 1 {
		t.Errorf("ring_rx_pads = %d, want 1", got)
	}
	if got := stat(t, tr.p, "ring_tx_records"); got != 6 {
		t.Errorf("ring_tx_records = %d, want 6", got)
	}
	if got := stat(t, tr.c, "ring_rx_bytes"); got != uint64(14+2*fill+1000) {
		t.Errorf("ring_rx_bytes = %d, want %d", got, 14+2*fill+1000)
	}
}

// reserveNeed is the space Reserve(n) needs at the producer's tail,
// including a padding record.
func reserveNeed(p *Producer, n int) uint64 {
	rec := recordSize(uint64(n))
	if off := p.tail & p.mask; rec > p.size-off {
		return rec + p.size - off
	}
	return rec
}

// TestWrapAround moves records of varying sizes (0 to the maximum) through
// a small ring for many laps on one goroutine, checking every byte, the
// padding record written at every wrap, and Commit of less than reserved.
func TestWrapAround(t *testing.T) {
	tr := newTestRing(t, MinDataSize)
	p, c := tr.p, tr.c
	size := p.size
	rng := rand.New(rand.NewPCG(7, 7))
	var sent, received uint64
	sizes := map[uint64]int{}
	wraps := 0
	const laps = 200
	for p.tail < laps*size {
		// Produce a batch that fits without blocking.
		for k := 1 + rng.IntN(16); k > 0; k-- {
			n := rng.IntN(200)
			if rng.IntN(4) == 0 {
				n = rng.IntN(p.maxPayload + 1)
			}
			reserve := n
			if rng.IntN(3) == 0 {
				reserve = min(p.maxPayload, n+rng.IntN(64))
			}
			tr.p.refreshHead()
			if p.size-(p.tail-p.head) < reserveNeed(p, reserve) {
				break
			}
			before := p.tail & p.mask
			dst, err := p.Reserve(reserve)
			if err != nil {
				t.Fatal(err)
			}
			if len(dst) != reserve || cap(dst) != reserve {
				t.Fatalf("Reserve(%d): len %d cap %d", reserve, len(dst), cap(dst))
			}
			if p.tail&p.mask != before {
				wraps++
				if p.tail&p.mask != 0 {
					t.Fatalf("record after padding at offset %d", p.tail&p.mask)
				}
				want := (size - before - RecordHeaderSize) | flagPadding<<32
				if got := word(tr.cr, HeaderSize+before); got != want {
					t.Fatalf("padding header at %d: %#x, want %#x", before, got, want)
				}
			}
			fillRecord(dst[:n], sent)
			p.Commit(n)
			sizes[sent] = n
			sent++
		}
		p.Flush()
		// Consume some or all of what is published.
		for k := 1 + rng.IntN(24); k > 0; k-- {
			b, err := c.Next(false)
			if err == ErrEmpty {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := checkRecord(b, received, sizes[received]); err != nil {
				t.Fatal(err)
			}
			delete(sizes, received)
			received++
		}
		c.Release()
	}
	for received < sent {
		b, err := c.Next(false)
		if err != nil {
			t.Fatalf("draining record %d of %d: %v", received, sent, err)
		}
		if err := checkRecord(b, received, sizes[received]); err != nil {
			t.Fatal(err)
		}
		received++
	}
	c.Release()
	if _, err := c.Next(false); err != ErrEmpty {
		t.Fatalf("Next on a drained ring: %v", err)
	}
	pads := stat(t, c, "ring_rx_pads")
	if wraps < laps/2 || pads != uint64(wraps) {
		t.Errorf("%d padding records written, %d skipped, over %d laps", wraps, pads, laps)
	}
	t.Logf("%d records, %d laps, %d padding records", sent, laps, wraps)
}

// fillUntilBlocked starts a goroutine that pushes count records of n bytes,
// flushing each, and waits until it blocks on a full ring. pushed counts the
// records Push returned for; the error of the first failing Push (or nil) is
// sent on the returned channel.
func fillUntilBlocked(t *testing.T, tr *testRing, n, count int, pushed *atomic.Int64) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	tr.goroutine(func() {
		buf := make([]byte, n)
		for i := range count {
			fillRecord(buf, uint64(i))
			if err := tr.p.Push(buf); err != nil {
				done <- err
				return
			}
			tr.p.Flush()
			pushed.Add(1)
		}
		done <- nil
	})
	if !waitFor(10*time.Second, func() bool { return stat(t, tr.p, "ring_tx_full_waits") >= 1 }) {
		t.Fatalf("producer never waited for space; pushed %d", pushed.Load())
	}
	return done
}

// TestFullRingBlocksProducer checks backpressure: a producer on a full ring
// blocks in Reserve (it neither overwrites nor drops), resumes exactly when
// the consumer releases enough, and every record arrives once, in order.
func TestFullRingBlocksProducer(t *testing.T) {
	tr := newTestRing(t, MinDataSize)
	const n, total = 1000, 300
	perRing := MinDataSize / int(recordSize(n)) // 65 records, 16 bytes left at the end
	var pushed atomic.Int64
	done := fillUntilBlocked(t, tr, n, total, &pushed)
	time.Sleep(20 * time.Millisecond)
	if got := pushed.Load(); got != int64(perRing) {
		t.Fatalf("producer pushed %d records into a ring that holds %d", got, perRing)
	}
	// One released record frees 1008 bytes, and the next record needs
	// 16 bytes of padding + 1008: still blocked.
	b, err := tr.c.Next(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkRecord(b, 0, n); err != nil {
		t.Fatal(err)
	}
	tr.c.Release()
	if !waitFor(10*time.Second, func() bool { return pushed.Load() == int64(perRing)+1 }) {
		t.Fatalf("producer did not resume after a release: pushed %d", pushed.Load())
	}
	if !waitFor(10*time.Second, func() bool { return stat(t, tr.p, "ring_tx_full_waits") >= 2 }) {
		t.Fatal("producer did not block again")
	}
	time.Sleep(20 * time.Millisecond)
	if got := pushed.Load(); got != int64(perRing)+1 {
		t.Fatalf("pushed %d after one release, want %d", got, perRing+1)
	}
	for seq := uint64(1); seq < total; seq++ {
		b, err := tr.c.Next(true)
		if err != nil {
			t.Fatalf("record %d: %v", seq, err)
		}
		if err := checkRecord(b, seq, n); err != nil {
			t.Fatal(err)
		}
		if seq%7 == 0 {
			tr.c.Release()
		}
	}
	tr.c.Release()
	if err, ok := errWithin(done, 10*time.Second); !ok || err != nil {
		t.Fatalf("producer: %v (finished %v)", err, ok)
	}
	tr.p.Close()
	if _, err := tr.c.Next(true); err != ErrClosed {
		t.Fatalf("Next after the producer closed: %v, want ErrClosed", err)
	}
	if got := stat(t, tr.c, "ring_rx_records"); got != total {
		t.Errorf("ring_rx_records = %d, want %d", got, total)
	}
	if got := stat(t, tr.c, "ring_rx_kicks"); got < 2 {
		t.Errorf("ring_rx_kicks = %d: the consumer never woke the waiting producer", got)
	}
}

// closeAndExpect closes closer's side of tr and checks that the call
// blocked in op ends with ErrClosed within bound.
func closeAndExpect(t *testing.T, tr *testRing, closer, op string, done <-chan error, bound time.Duration) {
	t.Helper()
	if closer == "producer" {
		tr.p.Close()
	} else {
		tr.c.Close()
	}
	err, ok := errWithin(done, bound)
	if !ok {
		t.Fatalf("%s still blocked %v after %s.Close", op, bound, closer)
	}
	if err != ErrClosed {
		t.Fatalf("%s: %v, want ErrClosed", op, err)
	}
}

// TestCloseAborts checks that Close, from another goroutine and from
// either side, ends a Reserve blocked on a full ring and a Next blocked on
// an empty one with ErrClosed, promptly.
func TestCloseAborts(t *testing.T) {
	const bound = 5 * time.Second
	for _, closer := range []string{"producer", "consumer"} {
		t.Run("Reserve/"+closer+".Close", func(t *testing.T) {
			tr := newTestRing(t, MinDataSize)
			var pushed atomic.Int64
			done := fillUntilBlocked(t, tr, 3000, 1000, &pushed)
			if err, ok := errWithin(done, 20*time.Millisecond); ok {
				t.Fatalf("Reserve returned %v on a full ring", err)
			}
			start := time.Now()
			closeAndExpect(t, tr, closer, "Reserve", done, bound)
			t.Logf("Reserve returned %v after Close", time.Since(start))
			if _, err := tr.p.Reserve(1); err != ErrClosed {
				t.Errorf("Reserve after Close: %v", err)
			}
		})
		t.Run("Next/"+closer+".Close", func(t *testing.T) {
			tr := newTestRing(t, MinDataSize)
			done := make(chan error, 1)
			tr.goroutine(func() {
				_, err := tr.c.Next(true)
				done <- err
			})
			if !waitFor(bound, func() bool { return stat(t, tr.c, "ring_rx_empty_waits") >= 1 }) {
				t.Fatal("consumer never slept")
			}
			if err, ok := errWithin(done, 20*time.Millisecond); ok {
				t.Fatalf("Next(true) returned %v on an empty ring", err)
			}
			closeAndExpect(t, tr, closer, "Next", done, bound)
		})
	}
	t.Run("drain", func(t *testing.T) {
		// Records flushed before the producer closes are still
		// delivered; a consumer's own Close stops it at once.
		tr := newTestRing(t, MinDataSize)
		for i := range 3 {
			tr.p.Push(pattern[:i+1])
		}
		tr.p.Flush()
		tr.p.Push(pattern[:9]) // committed, never flushed: lost
		tr.p.Close()
		for i := range 3 {
			if b, err := tr.c.Next(true); err != nil || len(b) != i+1 {
				t.Fatalf("record %d after close: %d bytes, %v", i, len(b), err)
			}
		}
		if _, err := tr.c.Next(false); err != ErrClosed {
			t.Fatalf("Next on a drained closed ring: %v, want ErrClosed", err)
		}
		tr2 := newTestRing(t, MinDataSize)
		tr2.p.Push(pattern[:5])
		tr2.p.Flush()
		tr2.c.Close()
		if _, err := tr2.c.Next(false); err != ErrClosed {
			t.Fatalf("Next after the consumer's Close: %v, want ErrClosed", err)
		}
	})
}

// runPair runs producer and consumer on two goroutines: count records of
// sizes from newSizer(seed, maxSize), flushed in random batches of 1..32,
// consumed in random batches and checked in order.
func runPair(t *testing.T, tr *testRing, count int, seed uint64, maxSize int, timeout time.Duration) {
	t.Helper()
	prodErr := make(chan error, 1)
	tr.goroutine(func() {
		sz := newSizer(seed, maxSize)
		rng := rand.New(rand.NewPCG(seed, 1))
		batch := 1 + rng.IntN(32)
		for seq := range uint64(count) {
			n := sz.next()
			dst, err := tr.p.Reserve(n)
			if err != nil {
				prodErr <- fmt.Errorf("Reserve record %d: %w", seq, err)
				return
			}
			fillRecord(dst, seq)
			tr.p.Commit(n)
			if batch--; batch == 0 {
				tr.p.Flush()
				batch = 1 + rng.IntN(32)
			}
		}
		tr.p.Flush()
		prodErr <- nil
	})
	consErr := make(chan error, 1)
	tr.goroutine(func() {
		sz := newSizer(seed, maxSize)
		rng := rand.New(rand.NewPCG(seed, 2))
		seq := uint64(0)
		for seq < uint64(count) {
			b, err := tr.c.Next(true)
			for k := rng.IntN(64); ; k-- {
				if err != nil {
					consErr <- fmt.Errorf("Next record %d: %w", seq, err)
					return
				}
				if err := checkRecord(b, seq, sz.next()); err != nil {
					consErr <- err
					return
				}
				seq++
				if k == 0 || seq == uint64(count) {
					break
				}
				if b, err = tr.c.Next(false); err == ErrEmpty {
					break
				}
			}
			tr.c.Release()
		}
		if b, err := tr.c.Next(false); err != ErrEmpty {
			consErr <- fmt.Errorf("after the last record: %d bytes, %v", len(b), err)
			return
		}
		consErr <- nil
	})
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for range 2 {
		select {
		case err := <-prodErr:
			if err != nil {
				t.Fatalf("producer: %v", err)
			}
		case err := <-consErr:
			if err != nil {
				t.Fatalf("consumer: %v", err)
			}
		case <-timer.C:
			t.Fatalf("hung for %v: producer %v, consumer %v", timeout, tr.p.Stats(), tr.c.Stats())
		}
	}
	if tx, rx := stat(t, tr.p, "ring_tx_bytes"), stat(t, tr.c, "ring_rx_bytes"); tx != rx {
		t.Errorf("ring_tx_bytes %d != ring_rx_bytes %d", tx, rx)
	}
	if got := stat(t, tr.c, "ring_rx_records"); got != uint64(count) {
		t.Errorf("ring_rx_records = %d, want %d", got, count)
	}
}

// TestConcurrent runs 100,000 records of 1..65546 bytes through a ring just
// big enough for the largest, with producer and consumer on two goroutines:
// over a memfd mapped twice, and over Go memory, where the race detector
// checks that every record is published before it is read.
func TestConcurrent(t *testing.T) {
	for _, mem := range []string{"memfd", "heap"} {
		t.Run(mem, func(t *testing.T) {
			var tr *testRing
			if mem == "memfd" {
				tr = newTestRing(t, 256<<10)
			} else {
				tr = newHeapRing(t, 256<<10)
			}
			runPair(t, tr, 100_000, 42, gsoMax, 2*time.Minute)
			t.Logf("producer %v", tr.p.Stats())
			t.Logf("consumer %v", tr.c.Stats())
			if stat(t, tr.p, "ring_tx_full_waits")+stat(t, tr.c, "ring_rx_empty_waits") == 0 {
				t.Error("neither side ever slept; the wait paths were not exercised")
			}
		})
	}
}

// pause returns a hook that waits a random while (busy, or yielding), to
// hold a side inside its lost-wakeup window while the peer publishes.
func pause(seed uint64) func() {
	rng := rand.New(rand.NewPCG(seed, 5))
	return func() {
		if rng.IntN(4) == 0 {
			runtime.Gosched()
			return
		}
		for range rng.IntN(2000) {
			spinSink.Add(1)
		}
	}
}

// TestLostWakeup makes both sides sleep as often as possible, without a
// spin, in schedules where a wakeup lost between the last look at the peer's
// index and sleeping would hang for good (guarded by a timeout):
//   - pingpong: a request/response over two rings, every message wakes a
//     sleeper;
//   - consumer: the producer publishes one record, waits until it is
//     released, then the next, while the consumer pauses inside its window;
//   - producer: the producer fills the ring and pauses inside its window
//     while the consumer drains everything with one Release and sleeps.
func TestLostWakeup(t *testing.T) {
	rounds := 20_000
	if testing.Short() || raceEnabled {
		rounds = 5_000
	}
	const timeout = time.Minute
	wait2 := func(t *testing.T, done <-chan error, tr ...*testRing) {
		t.Helper()
		for range 2 {
			err, ok := errWithin(done, timeout)
			if !ok {
				for _, r := range tr {
					t.Logf("producer %v", r.p.Stats())
					t.Logf("consumer %v", r.c.Stats())
				}
				t.Fatalf("hung for %v: a wakeup was lost", timeout)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("pingpong", func(t *testing.T) {
		a, b := newTestRing(t, MinDataSize), newTestRing(t, MinDataSize)
		for _, tr := range []*testRing{a, b} {
			tr.p.spins, tr.c.spins = 0, 0
		}
		done := make(chan error, 2)
		echo := func(in, out *testRing, first bool) {
			for i := range uint64(rounds) {
				msg := pattern[i%64:][:8]
				if first {
					if err := out.p.Push(msg); err != nil {
						done <- err
						return
					}
					out.p.Flush()
				}
				got, err := in.c.Next(true)
				if err != nil {
					done <- fmt.Errorf("round %d: %w", i, err)
					return
				}
				if string(got) != string(msg) {
					done <- fmt.Errorf("round %d: got %x", i, got)
					return
				}
				in.c.Release()
				if !first {
					out.p.Push(msg)
					out.p.Flush()
				}
			}
			done <- nil
		}
		a.goroutine(func() { echo(b, a, true) })
		b.goroutine(func() { echo(a, b, false) })
		wait2(t, done, a, b)
		sleeps := stat(t, a.c, "ring_rx_empty_waits") + stat(t, b.c, "ring_rx_empty_waits")
		t.Logf("%d rounds, %d sleeps", rounds, sleeps)
		if sleeps < uint64(rounds)/4 {
			t.Errorf("only %d sleeps in %d rounds", sleeps, rounds)
		}
	})
	t.Run("consumer", func(t *testing.T) {
		tr := newTestRing(t, MinDataSize)
		tr.p.spins, tr.c.spins = 0, 0
		tr.c.beforeArm = pause(1)
		done := make(chan error, 2)
		tr.goroutine(func() {
			rng := rand.New(rand.NewPCG(3, 3))
			for i := range uint64(rounds) {
				tr.p.Push(pattern[i%64:][:16])
				tr.p.Flush()
				// Lockstep: a lost wakeup leaves this record unread.
				for tr.pr.h.head.Load() != tr.p.published {
					if tr.p.closing.Load() {
						done <- fmt.Errorf("closed at record %d", i)
						return
					}
					runtime.Gosched()
				}
				for range rng.IntN(1000) {
					spinSink.Add(1)
				}
			}
			done <- nil
		})
		tr.goroutine(func() {
			for i := range uint64(rounds) {
				b, err := tr.c.Next(true)
				if err != nil || string(b) != string(pattern[i%64:][:16]) {
					done <- fmt.Errorf("record %d: %x, %v", i, b, err)
					return
				}
				tr.c.Release()
			}
			done <- nil
		})
		wait2(t, done, tr)
		sleeps, kicks := stat(t, tr.c, "ring_rx_empty_waits"), stat(t, tr.p, "ring_tx_kicks")
		// A kick without a sleep is a publish that landed after arming
		// and was caught by the re-check.
		t.Logf("%d records, %d consumer sleeps, %d kicks", rounds, sleeps, kicks)
		if sleeps < uint64(rounds)/10 {
			t.Errorf("only %d consumer sleeps in %d records", sleeps, rounds)
		}
	})
	t.Run("producer", func(t *testing.T) {
		tr := newTestRing(t, MinDataSize)
		tr.p.spins, tr.c.spins = 0, 0
		tr.p.beforeArm = pause(2)
		const n = 4000
		total := rounds / 2
		done := make(chan error, 2)
		tr.goroutine(func() {
			buf := make([]byte, n)
			for i := range uint64(total) {
				fillRecord(buf, i)
				if err := tr.p.Push(buf); err != nil {
					done <- fmt.Errorf("record %d: %w", i, err)
					return
				}
			}
			tr.p.Flush()
			done <- nil
		})
		tr.goroutine(func() {
			rng := rand.New(rand.NewPCG(4, 4))
			for i := uint64(0); i < uint64(total); {
				// Drain, release once, sleep: a lost wakeup of
				// the producer leaves both asleep.
				b, err := tr.c.Next(true)
				for err == nil {
					if err := checkRecord(b, i, n); err != nil {
						done <- err
						return
					}
					i++
					b, err = tr.c.Next(false)
				}
				if err != ErrEmpty {
					done <- fmt.Errorf("record %d: %w", i, err)
					return
				}
				for range rng.IntN(1000) {
					spinSink.Add(1)
				}
				tr.c.Release()
			}
			done <- nil
		})
		wait2(t, done, tr)
		waits := stat(t, tr.p, "ring_tx_full_waits")
		t.Logf("%d records, %d producer waits, %d consumer kicks", total, waits, stat(t, tr.c, "ring_rx_kicks"))
		if waits < uint64(total)/100 {
			t.Errorf("only %d producer waits for %d records", waits, total)
		}
	})
}

var spinSink atomic.Uint64

// sealedMemfd makes a memfd of size bytes with hdr at offset 0 and the given
// seals, for Map to refuse or accept.
func sealedMemfd(t *testing.T, size int64, hdr []byte, seals int) int {
	t.Helper()
	flags := unix.MFD_CLOEXEC
	if seals != 0 {
		flags |= unix.MFD_ALLOW_SEALING
	}
	fd, err := unix.MemfdCreate("ring-test", flags)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Pwrite(fd, hdr, 0); err != nil {
		t.Fatal(err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

// TestMapRefuses checks that Map accepts only a sealed memfd with a valid
// header whose size matches the file.
func TestMapRefuses(t *testing.T) {
	good := encodeHeader(MinDataSize)
	with := func(off int, v uint64) []byte {
		h := append([]byte(nil), good...)
		binary.NativeEndian.PutUint64(h[off:], v)
		return h
	}
	const size = HeaderSize + MinDataSize
	tmp, err := os.CreateTemp(t.TempDir(), "ring")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	tmp.Write(good)
	tmp.Truncate(size)
	efd, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)

	if r, err := Map(sealedMemfd(t, size, good, requiredSeals)); err != nil {
		t.Fatalf("Map refused a valid ring: %v", err)
	} else {
		r.Unmap()
	}
	cases := []struct {
		name string
		fd   int
	}{
		{"wrong magic", sealedMemfd(t, size, with(offMagic, 0x1234), requiredSeals)},
		{"wrong version", sealedMemfd(t, size, with(offVersion, Version+1), requiredSeals)},
		{"data size not a power of two", sealedMemfd(t, size+8, with(offDataSize, MinDataSize+8), requiredSeals)},
		{"header size differs from file", sealedMemfd(t, 2*size, good, requiredSeals)},
		{"data size too small", sealedMemfd(t, HeaderSize+4096, with(offDataSize, 4096), requiredSeals)},
		{"data size huge", sealedMemfd(t, size, with(offDataSize, 1<<62), requiredSeals)},
		{"file shorter than a header", sealedMemfd(t, 100, good, requiredSeals)},
		{"unsealed memfd", sealedMemfd(t, size, good, 0)},
		{"no F_SEAL_SEAL", sealedMemfd(t, size, good, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)},
		{"no F_SEAL_SHRINK", sealedMemfd(t, size, good, unix.F_SEAL_GROW|unix.F_SEAL_SEAL)},
		{"regular file", int(tmp.Fd())},
		{"eventfd", efd},
	}
	for _, tc := range cases {
		r, err := Map(tc.fd)
		if err == nil {
			r.Unmap()
			t.Errorf("%s: Map succeeded", tc.name)
			continue
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", tc.name, err)
		}
	}
}

// TestHostileProducer corrupts what a producer publishes (indices and
// record headers) and checks that the consumer reports ErrCorrupt, stays
// poisoned, and never panics.
func TestHostileProducer(t *testing.T) {
	size := uint64(MinDataSize)
	max := uint64(MaxPayload(MinDataSize))
	hdr := func(length, flags uint64) uint64 { return length | flags<<32 }
	cases := []struct {
		name       string
		start      uint64            // head and tail when the consumer attaches
		tail       uint64            // tail published afterwards
		words      map[uint64]uint64 // record headers at data offsets
		attachFail bool
	}{
		{name: "tail beyond a lap", tail: size + 8},
		{name: "tail unaligned", tail: 12, words: map[uint64]uint64{0: hdr(4, 0)}},
		{name: "tail behind", start: 64, tail: 56},
		{name: "tail near 2^64", tail: 1 << 63},
		{name: "length above max", tail: size, words: map[uint64]uint64{0: hdr(max+8, 0)}},
		{name: "length 2^32-1", tail: size, words: map[uint64]uint64{0: hdr(1<<32-1, 0)}},
		{name: "length beyond tail", tail: 16, words: map[uint64]uint64{0: hdr(100, 0)}},
		{name: "record crosses the end", start: size - 16, tail: size + 96, words: map[uint64]uint64{size - 16: hdr(100, 0)}},
		{name: "padding short of the end", start: size - 32, tail: size + 8, words: map[uint64]uint64{size - 32: hdr(8, flagPadding)}},
		{name: "padding past the end", start: size - 32, tail: size + 8, words: map[uint64]uint64{size - 32: hdr(40, flagPadding)}},
		{name: "padding at offset 0", tail: size, words: map[uint64]uint64{0: hdr(size-8, flagPadding)}},
		{name: "padding beyond tail", start: size - 32, tail: size - 16, words: map[uint64]uint64{size - 32: hdr(24, flagPadding)}},
		{name: "padding then padding", start: size - 32, tail: size + 16, words: map[uint64]uint64{size - 32: hdr(24, flagPadding), 0: hdr(8, flagPadding)}},
		{name: "unknown flags", tail: 16, words: map[uint64]uint64{0: hdr(4, 2)}},
		{name: "attach: tail-head beyond a lap", start: 0, tail: 0, attachFail: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestRing(t, MinDataSize)
			raw := tr.pr // the hostile producer writes through its mapping
			h := raw.h
			h.tail.Store(tc.start)
			h.head.Store(tc.start)
			if tc.attachFail {
				h.tail.Store(size + 8)
			}
			c, err := NewConsumer(tr.cr, tr.dataReady, tr.spaceReady)
			if tc.attachFail {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("NewConsumer: %v, want ErrCorrupt", err)
				}
				if _, err := NewProducer(tr.cr, tr.dataReady, tr.spaceReady); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("NewProducer: %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for off, w := range tc.words {
				binary.NativeEndian.PutUint64(raw.data[off:], w)
			}
			h.tail.Store(tc.tail)
			for i := range 3 {
				b, err := c.Next(false)
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Next #%d: %d bytes, %v; want ErrCorrupt", i, len(b), err)
				}
			}
			if got := stat(t, c, "ring_rx_corrupt"); got != 1 {
				t.Errorf("ring_rx_corrupt = %d, want 1", got)
			}
			c.Release() // must not publish anything odd or panic
			if got := h.head.Load(); got != tc.start {
				t.Errorf("head moved to %d", got)
			}
		})
	}
}

// TestIndicesWrap2to64 runs records across the point where the free-running
// indices wrap around 2^64: legal, and must work.
func TestIndicesWrap2to64(t *testing.T) {
	tr := newTestRingSides(t, MinDataSize, false, false)
	start := uint64(math.MaxUint64) - 3*MinDataSize/2 + 1 // 1.5 laps before the wrap
	tr.pr.h.tail.Store(start)
	tr.pr.h.head.Store(start)
	tr.attach(t)
	runPair(t, tr, 2000, 5, MaxPayload(MinDataSize), time.Minute)
	if got := tr.pr.h.tail.Load(); got > start {
		t.Errorf("tail %d did not wrap past 2^64", got)
	}
}

// TestHostileConsumer corrupts the head a consumer publishes and checks that
// the producer reports ErrCorrupt instead of overwriting unread records.
func TestHostileConsumer(t *testing.T) {
	cases := []struct {
		name string
		head func(tail, lastHead uint64) uint64
	}{
		{"head beyond tail", func(tail, _ uint64) uint64 { return tail + 8 }},
		{"head unaligned", func(_, last uint64) uint64 { return last + 4 }},
		{"head behind", func(_, last uint64) uint64 { return last - 8 }},
		{"head far ahead", func(tail, _ uint64) uint64 { return tail + 1<<40 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestRing(t, MinDataSize)
			p := tr.p
			// Fill, let the consumer release part, and make the
			// producer see that head.
			const n = 1000
			for range MinDataSize / int(recordSize(n)) {
				if err := p.Push(pattern[:n]); err != nil {
					t.Fatal(err)
				}
			}
			p.Flush()
			for range 10 {
				tr.c.Next(false)
			}
			tr.c.Release()
			for range 10 {
				if err := p.Push(pattern[:n]); err != nil {
					t.Fatal(err)
				}
			}
			p.Flush()
			last := p.head
			if last == 0 {
				t.Fatal("producer never refreshed head")
			}
			tr.cr.h.head.Store(tc.head(p.published, last))
			done := make(chan error, 1)
			tr.goroutine(func() {
				_, err := p.Reserve(n)
				done <- err
			})
			err, ok := errWithin(done, 5*time.Second)
			if !ok {
				t.Fatal("Reserve blocked instead of reporting corruption")
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Reserve: %v, want ErrCorrupt", err)
			}
			if _, err := p.Reserve(1); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("second Reserve: %v, want ErrCorrupt", err)
			}
			if got := stat(t, p, "ring_tx_corrupt"); got != 1 {
				t.Errorf("ring_tx_corrupt = %d", got)
			}
		})
	}
}

func TestReserveLimits(t *testing.T) {
	tr := newTestRing(t, MinDataSize)
	max := tr.p.MaxPayload()
	if max != MinDataSize/2-RecordHeaderSize {
		t.Fatalf("MaxPayload %d", max)
	}
	if _, err := tr.p.Reserve(max + 1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Reserve(max+1): %v", err)
	}
	if _, err := tr.p.Reserve(-1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Reserve(-1): %v", err)
	}
	// The ring is unchanged and still usable; a maximal record fits.
	if err := tr.p.Push(pattern[:max]); err != nil {
		t.Fatal(err)
	}
	tr.p.Flush()
	if b, err := tr.c.Next(false); err != nil || len(b) != max {
		t.Fatalf("Next: %d bytes, %v", len(b), err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Commit beyond the reservation did not panic")
			}
		}()
		tr.p.Reserve(10)
		tr.p.Commit(11)
	}()
}
