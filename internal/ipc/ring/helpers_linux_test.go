package ring

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/metrics"
)

// gsoMax is the largest record ptun sends: a 64 KiB GSO super-packet plus
// its 10-byte virtio-net header.
const gsoMax = 65536 + 10

// patternLen bounds where a record's expected content starts in pattern.
const patternLen = 1 << 16

// pattern holds the bytes records are filled from: record seq with n bytes
// carries pattern[off(seq):][:n], with seq in its first 8 bytes when n >= 8.
// A lost, duplicated, reordered or torn record fails checkRecord.
var pattern = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, patternLen+MaxDataSize/2)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

func patternOffset(seq uint64) uint64 { return seq * 7919 % patternLen }

func fillRecord(dst []byte, seq uint64) {
	copy(dst, pattern[patternOffset(seq):])
	if len(dst) >= 8 {
		binary.LittleEndian.PutUint64(dst, seq)
	}
}

func checkRecord(b []byte, seq uint64, n int) error {
	if len(b) != n {
		return fmt.Errorf("record %d: %d bytes, want %d", seq, len(b), n)
	}
	want := pattern[patternOffset(seq):][:n]
	if n >= 8 {
		if got := binary.LittleEndian.Uint64(b); got != seq {
			return fmt.Errorf("record %d: carries sequence number %d", seq, got)
		}
		b, want = b[8:], want[8:]
	}
	if !bytes.Equal(b, want) {
		i := 0
		for i < len(b) && b[i] == want[i] {
			i++
		}
		return fmt.Errorf("record %d (%d bytes): content differs at byte %d", seq, n, i)
	}
	return nil
}

// sizer draws record sizes in 1..max, the same sequence on both sides when
// seeded alike: record 0 has max bytes, record 1 one byte, then one in eight
// is uniform in 1..max and the rest uniform in 1..1500 (MTU-sized traffic).
type sizer struct {
	rng *rand.Rand
	max int
	seq uint64
}

func newSizer(seed uint64, max int) *sizer {
	return &sizer{rng: rand.New(rand.NewPCG(seed, 99)), max: max}
}

func (s *sizer) next() int {
	seq := s.seq
	s.seq++
	switch {
	case seq == 0:
		return s.max
	case seq == 1:
		return 1
	case s.rng.IntN(8) == 0:
		return 1 + s.rng.IntN(s.max)
	default:
		return 1 + s.rng.IntN(min(1500, s.max))
	}
}

// testRing is a ring with the producer and the consumer on two separate
// mappings of one memfd, as they would be in two processes.
type testRing struct {
	fd                    int
	dataReady, spaceReady int
	pr, cr                *Region // the producer's and the consumer's mapping
	p                     *Producer
	c                     *Consumer
	wg                    sync.WaitGroup
}

func newTestRing(tb testing.TB, dataSize int) *testRing {
	tb.Helper()
	tr := newTestRingSides(tb, dataSize, false, false)
	tr.attach(tb)
	return tr
}

// newTestRingSides makes a ring with a producer and a consumer only where
// asked; attach adds the missing ones.
func newTestRingSides(tb testing.TB, dataSize int, producer, consumer bool) *testRing {
	tb.Helper()
	tr := &testRing{}
	var err error
	if tr.fd, err = Create(dataSize); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(tr.fd) })
	if tr.dataReady, err = NewEventFD(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(tr.dataReady) })
	if tr.spaceReady, err = NewEventFD(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(tr.spaceReady) })
	if tr.pr, err = Map(tr.fd); err != nil {
		tb.Fatal(err)
	}
	if tr.cr, err = Map(tr.fd); err != nil {
		tr.pr.Unmap()
		tb.Fatal(err)
	}
	if producer {
		tr.attachProducer(tb)
	}
	if consumer {
		tr.attachConsumer(tb)
	}
	tb.Cleanup(func() {
		if tr.p != nil {
			tr.p.Close()
		}
		if tr.c != nil {
			tr.c.Close()
		}
		// Unmapping under a running goroutine would crash the whole
		// binary; after Close they return promptly, else leak the
		// mappings and let the test report its failure.
		done := make(chan struct{})
		go func() { tr.wg.Wait(); close(done) }()
		select {
		case <-done:
			tr.pr.Unmap()
			tr.cr.Unmap()
		case <-time.After(10 * time.Second):
			tb.Error("goroutines still running 10s after Close; mappings leaked")
		}
	})
	return tr
}

// newHeapRing makes a ring in Go memory, shared by both sides: the race
// detector then sees every access to records and indices (it does not track
// mmap'ed memory), so a publish that is not ordered by the index atomics is
// reported.
func newHeapRing(tb testing.TB, dataSize int) *testRing {
	tb.Helper()
	mem := make([]byte, HeaderSize+dataSize)
	copy(mem, encodeHeader(dataSize))
	r, err := newRegion(mem)
	if err != nil {
		tb.Fatal(err)
	}
	tr := &testRing{fd: -1, pr: r, cr: r}
	if tr.dataReady, err = NewEventFD(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(tr.dataReady) })
	if tr.spaceReady, err = NewEventFD(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(tr.spaceReady) })
	tr.attach(tb)
	tb.Cleanup(func() {
		tr.p.Close()
		tr.c.Close()
		tr.wg.Wait()
	})
	return tr
}

func (tr *testRing) attachProducer(tb testing.TB) {
	tb.Helper()
	p, err := NewProducer(tr.pr, tr.dataReady, tr.spaceReady)
	if err != nil {
		tb.Fatal(err)
	}
	tr.p = p
}

func (tr *testRing) attachConsumer(tb testing.TB) {
	tb.Helper()
	c, err := NewConsumer(tr.cr, tr.dataReady, tr.spaceReady)
	if err != nil {
		tb.Fatal(err)
	}
	tr.c = c
}

// attach adds the missing sides.
func (tr *testRing) attach(tb testing.TB) {
	tb.Helper()
	if tr.p == nil {
		tr.attachProducer(tb)
	}
	if tr.c == nil {
		tr.attachConsumer(tb)
	}
}

// goroutine runs f in a goroutine that cleanup waits for before unmapping.
func (tr *testRing) goroutine(f func()) {
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		f()
	}()
}

// stat returns the named counter of a producer or consumer.
func stat(tb testing.TB, s metrics.Reporter, name string) uint64 {
	tb.Helper()
	for _, c := range s.Stats() {
		if c.Name == name {
			return c.Value
		}
	}
	tb.Fatalf("no counter %q", name)
	return 0
}

// waitFor polls cond every millisecond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return cond()
}

// errWithin returns the error that arrives on ch within d, and false if none
// does.
func errWithin(ch <-chan error, d time.Duration) (error, bool) {
	select {
	case err := <-ch:
		return err, true
	case <-time.After(d):
		return nil, false
	}
}
