package ring

import (
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
)

// A FuzzConsumer input is what a hostile producer controls:
//
//	[0:8]   tail (native endian)
//	[8:16]  head: where the consumer starts
//	[16]    bit 0 producerWaiting, bit 1 closed, bit 2 consumerWaiting
//	[17]    the consumer releases after every in[17]%8+1 records
//	[18:]   data region bytes, written from head's offset on, wrapping
const fuzzHeaderLen = 18

var fuzzEventFDs = sync.OnceValues(func() ([2]int, error) {
	a, err := NewEventFD()
	if err != nil {
		return [2]int{}, err
	}
	b, err := NewEventFD()
	return [2]int{a, b}, err
})

// fuzzNotifiers are made once per process so a fuzz call costs no
// system calls; consumers made with them are never closed.
var fuzzNotifiers = sync.OnceValues(func() ([2]*notifier, error) {
	efds, err := fuzzEventFDs()
	if err != nil {
		return [2]*notifier{}, err
	}
	dr, err := newNotifier(efds[0], "dataReady")
	if err != nil {
		return [2]*notifier{}, err
	}
	sr, err := newNotifier(efds[1], "spaceReady")
	return [2]*notifier{dr, sr}, err
})

// fuzzMem is the private region a fuzz worker reuses (calls are serial).
var fuzzMem = make([]byte, HeaderSize+MinDataSize)

// loadFuzzRing writes in into fuzzMem, which it resets to a fresh header
// first, and wraps it.
func loadFuzzRing(in []byte) (*Region, error) {
	clear(fuzzMem)
	copy(fuzzMem, encodeHeader(MinDataSize))
	tail := binary.NativeEndian.Uint64(in[0:])
	head := binary.NativeEndian.Uint64(in[8:])
	binary.NativeEndian.PutUint64(fuzzMem[offTail:], tail)
	binary.NativeEndian.PutUint64(fuzzMem[offHead:], head)
	flags := in[16]
	binary.NativeEndian.PutUint32(fuzzMem[offProducerWaiting:], uint32(flags&1))
	binary.NativeEndian.PutUint32(fuzzMem[offClosed:], uint32(flags>>1&1))
	binary.NativeEndian.PutUint32(fuzzMem[offConsumerWaiting:], uint32(flags>>2&1))
	data := fuzzMem[HeaderSize:]
	rest := in[fuzzHeaderLen:min(len(in), fuzzHeaderLen+len(data))]
	n := copy(data[head&uint64(len(data)-1):], rest)
	copy(data, rest[n:])
	return newRegion(fuzzMem)
}

// FuzzConsumer feeds arbitrary shared state to a consumer and checks that
// it never panics, never loops without bound, returns only slices inside the
// data region (by address), and stays poisoned after ErrCorrupt.
func FuzzConsumer(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s.in)
	}
	nfs, err := fuzzNotifiers()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkConsumer(t, nfs, in)
	})
}

// checkConsumer runs a consumer over the ring in the fuzz input in until it
// stops, checking every record, and returns how many records it read and
// the error it stopped with.
func checkConsumer(t *testing.T, nfs [2]*notifier, in []byte) (int, error) {
	if len(in) < fuzzHeaderLen {
		return 0, nil
	}
	r, err := loadFuzzRing(in)
	if err != nil {
		t.Fatal(err)
	}
	c, err := newConsumer(r, nfs[0], nfs[1])
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("NewConsumer: %v", err)
		}
		return 0, err
	}
	releaseEvery := int(in[17]%8) + 1
	max := r.MaxPayload()
	// A lap holds at most size/8 records; more means a loop.
	limit := int(r.size/RecordHeaderSize) + 1
	var records int
	for {
		if records > limit {
			t.Fatalf("%d records from one lap of data", records)
		}
		b, err := c.Next(false)
		if err != nil {
			switch {
			case errors.Is(err, ErrCorrupt):
				if _, again := c.Next(false); !errors.Is(again, ErrCorrupt) {
					t.Fatalf("after %v, Next returned %v", err, again)
				}
			case err == ErrEmpty, err == ErrClosed:
			default:
				t.Fatalf("Next: %v", err)
			}
			c.Release()
			if got := binary.NativeEndian.Uint64(fuzzMem[offHead:]); got != c.published {
				t.Fatalf("shared head %d, consumer published %d", got, c.published)
			}
			return records, err
		}
		if !within(b, r.data) {
			t.Fatalf("record of %d bytes outside the data region", len(b))
		}
		if off := offsetIn(b, r.data); off%RecordAlign != 0 {
			t.Fatalf("payload at unaligned offset %d", off)
		}
		if len(b) > max || cap(b) != len(b) {
			t.Fatalf("record len %d cap %d, max %d", len(b), cap(b), max)
		}
		if c.tail-c.readPos > c.size || c.readPos-c.published > c.size {
			t.Fatalf("indices: published %d, read %d, tail %d", c.published, c.readPos, c.tail)
		}
		records++
		if records%releaseEvery == 0 {
			c.Release()
		}
	}
}

// TestFuzzSeeds checks that the seed rings are what their names say: the
// valid ones yield all their records, checked byte for byte, the corrupt
// ones ErrCorrupt.
func TestFuzzSeeds(t *testing.T) {
	nfs, err := fuzzNotifiers()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"valid-empty": 0, "valid-small": 4, "valid-wrap": 3, "valid-closed-waiting": 2, "valid-many-wrap": 300, "valid-max-record": 1}
	for _, s := range fuzzSeeds(t) {
		n, err := checkConsumer(t, nfs, s.in)
		if strings.HasPrefix(s.name, "corrupt") {
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: %d records, %v; want ErrCorrupt", s.name, n, err)
			}
			continue
		}
		wantErr := ErrEmpty
		if s.name == "valid-closed-waiting" {
			wantErr = ErrClosed
		}
		if n != want[s.name] || err != wantErr {
			t.Errorf("%s: %d records, %v; want %d, %v", s.name, n, err, want[s.name], wantErr)
		}
	}
	// The valid seeds carry the records fillRecord wrote.
	var many []byte
	for _, s := range fuzzSeeds(t) {
		if s.name == "valid-many-wrap" {
			many = s.in
		}
	}
	r, err := loadFuzzRing(many)
	if err != nil {
		t.Fatal(err)
	}
	c, err := newConsumer(r, nfs[0], nfs[1])
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		b, err := c.Next(false)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkRecord(b, uint64(i), 1+i*7%40); err != nil {
			t.Fatal(err)
		}
	}
	if got := stat(t, c, "ring_rx_pads") + c.pendingPads; got != 1 {
		t.Errorf("valid-many-wrap: %d padding records, want 1", got)
	}
}

type fuzzSeed struct {
	name string
	in   []byte
}

// encodeFuzzInput serializes a ring for FuzzConsumer: the span from head to
// tail of r's data region.
func encodeFuzzInput(r *Region, flags, release byte) []byte {
	tail, head := r.h.tail.Load(), r.h.head.Load()
	in := make([]byte, fuzzHeaderLen, fuzzHeaderLen+int(min(tail-head, r.size)))
	binary.NativeEndian.PutUint64(in[0:], tail)
	binary.NativeEndian.PutUint64(in[8:], head)
	in[16], in[17] = flags, release
	for i := uint64(0); i < min(tail-head, r.size); i++ {
		in = append(in, r.data[(head+i)&(r.size-1)])
	}
	return in
}

// seedRing makes a ring with the real producer, starting at index start,
// holding records of the given sizes, and returns it as a fuzz input.
func seedRing(tb testing.TB, start uint64, sizes []int, flags byte) []byte {
	tb.Helper()
	mem := make([]byte, HeaderSize+MinDataSize)
	copy(mem, encodeHeader(MinDataSize))
	r, err := newRegion(mem)
	if err != nil {
		tb.Fatal(err)
	}
	r.h.tail.Store(start)
	r.h.head.Store(start)
	efds, err := fuzzEventFDs()
	if err != nil {
		tb.Fatal(err)
	}
	p, err := NewProducer(r, efds[0], efds[1])
	if err != nil {
		tb.Fatal(err)
	}
	defer p.Close()
	for i, n := range sizes {
		dst, err := p.Reserve(n)
		if err != nil {
			tb.Fatal(err)
		}
		fillRecord(dst, uint64(i))
		p.Commit(n)
	}
	p.Flush()
	return encodeFuzzInput(r, flags, 2)
}

// fuzzSeeds returns valid rings made by the producer, and corrupt variants.
func fuzzSeeds(tb testing.TB) []fuzzSeed {
	size := uint64(MinDataSize)
	small := seedRing(tb, 0, []int{0, 1, 13, 100}, 0)
	wrap := seedRing(tb, size-40, []int{20, 100, 7}, 0)
	many := make([]int, 300)
	for i := range many {
		many[i] = 1 + i*7%40
	}
	seeds := []fuzzSeed{
		{"valid-empty", seedRing(tb, 0, nil, 0)},
		{"valid-small", small},
		{"valid-wrap", wrap},
		{"valid-closed-waiting", seedRing(tb, 64, []int{10, 20}, 1|2|4)},
		{"valid-many-wrap", seedRing(tb, size-4096, many, 0)},
		{"valid-max-record", seedRing(tb, 1<<40, []int{MaxPayload(MinDataSize)}, 0)},
	}
	mutate := func(name string, in []byte, f func(in []byte)) {
		in = append([]byte(nil), in...)
		f(in)
		seeds = append(seeds, fuzzSeed{name, in})
	}
	word := func(in []byte, at int, v uint64) { binary.NativeEndian.PutUint64(in[at:], v) }
	mutate("corrupt-tail-unaligned", small, func(in []byte) { word(in, 0, 148) })
	mutate("corrupt-tail-beyond-lap", small, func(in []byte) { word(in, 0, size+8) })
	mutate("corrupt-length-huge", small, func(in []byte) { word(in, fuzzHeaderLen, 0xfffffff0) })
	mutate("corrupt-length-beyond-tail", small, func(in []byte) { word(in, fuzzHeaderLen+8, 200) })
	mutate("corrupt-flags", small, func(in []byte) { word(in, fuzzHeaderLen+8, 1|3<<32) })
	mutate("corrupt-padding-short", wrap, func(in []byte) { word(in, fuzzHeaderLen, 8|flagPadding<<32) })
	mutate("corrupt-padding-at-0", small, func(in []byte) {
		word(in, 0, size)
		word(in, fuzzHeaderLen, (size-8)|flagPadding<<32)
	})
	return seeds
}
