package replay

import (
	"math"
	"math/rand/v2"
	"testing"
)

// rejectAfterMessages is the package's limit, tested below against the
// whitepaper's figure rather than copied.
const rejectAfterMessages = RejectAfterMessages

// TestRejectAfterMessages pins the limit to the whitepaper's 2^64 - 2^13 - 1
// (§6), computed here another way, and checks that the filter takes the last
// counter below it and refuses the limit itself.
func TestRejectAfterMessages(t *testing.T) {
	want := uint64(math.MaxUint64) - 1<<13
	if RejectAfterMessages != want {
		t.Fatalf("RejectAfterMessages = %d, want 2^64-2^13-1 = %d", RejectAfterMessages, want)
	}
	var f Filter
	run(t, &f, RejectAfterMessages, []step{
		{RejectAfterMessages - 1, true},
		{RejectAfterMessages, false},
		{math.MaxUint64, false},
	})
}

type step struct {
	counter uint64
	want    bool
}

func run(t *testing.T, f *Filter, limit uint64, steps []step) {
	t.Helper()
	for i, s := range steps {
		if got := f.ValidateCounter(s.counter, limit); got != s.want {
			t.Fatalf("step %d: ValidateCounter(%d) = %v, want %v", i, s.counter, got, s.want)
		}
	}
}

func TestInOrder(t *testing.T) {
	var f Filter
	for c := uint64(0); c < 3*ringWords*wordBits; c++ {
		if !f.ValidateCounter(c, rejectAfterMessages) {
			t.Fatalf("counter %d rejected", c)
		}
	}
}

func TestDuplicates(t *testing.T) {
	var f Filter
	run(t, &f, rejectAfterMessages, []step{
		{0, true}, {0, false}, {1, true}, {1, false}, {0, false},
		{5, true}, {3, true}, {5, false}, {3, false}, {4, true}, {2, true}, {2, false},
	})
}

func TestReorderWithinWindow(t *testing.T) {
	var f Filter
	top := uint64(WindowSize + 1000)
	run(t, &f, rejectAfterMessages, []step{
		{top, true},
		{top - 1, true},
		{top - WindowSize, true},      // the oldest still inside
		{top - WindowSize, false},     // now a duplicate
		{top - WindowSize - 1, false}, // one too old
		{top - 64, true},
		{top - 64, false},
		{0, false}, // far too old
	})
	// Every counter in the window can still arrive once.
	for c := top - WindowSize + 1; c < top; c++ {
		want := c != top-1 && c != top-64
		if got := f.ValidateCounter(c, rejectAfterMessages); got != want {
			t.Fatalf("counter %d: %v want %v", c, got, want)
		}
	}
	for c := top - WindowSize; c <= top; c++ {
		if f.ValidateCounter(c, rejectAfterMessages) {
			t.Fatalf("counter %d accepted twice", c)
		}
	}
}

func TestLimit(t *testing.T) {
	var f Filter
	run(t, &f, 100, []step{{99, true}, {100, false}, {101, false}, {98, true}, {math.MaxUint64, false}})
	f.Reset()
	run(t, &f, rejectAfterMessages, []step{
		{rejectAfterMessages - 1, true},
		{rejectAfterMessages, false},
		{math.MaxUint64, false},
		{rejectAfterMessages - 2, true},
		{rejectAfterMessages - 1, false},
	})
}

func TestLargeJumps(t *testing.T) {
	var f Filter
	run(t, &f, rejectAfterMessages, []step{
		{0, true}, {1, true},
		{1 << 20, true},              // jump far beyond the ring: everything before is out
		{1, false},                   // too old now
		{(1 << 20) - 1, true},        // just behind the new top
		{(1 << 20) - 1, false},       //
		{1<<20 + 63, true},           // same word
		{1<<20 + 64, true},           // next word
		{1<<20 + 64*ringWords, true}, // exactly one ring ahead: the slot of a cleared word
		{1<<20 + 64, false},          // still inside the window, seen
		{1 << 20, false},             // out of the window now (8192 behind)
		{1 << 40, true},
		{1<<40 - WindowSize, true},
		{1<<40 - WindowSize - 1, false},
	})
}

func TestResetAndZeroValue(t *testing.T) {
	var f Filter
	run(t, &f, rejectAfterMessages, []step{{0, true}, {7, true}, {1 << 30, true}})
	f.Reset()
	run(t, &f, rejectAfterMessages, []step{{0, true}, {7, true}, {7, false}, {1 << 30, true}})
}

// model is the obvious specification: a set of seen counters and the
// highest accepted.
type model struct {
	seen    map[uint64]bool
	highest uint64
}

func (m *model) validate(c, limit uint64) bool {
	if c >= limit || m.seen[c] || (c < m.highest && m.highest-c > WindowSize) {
		return false
	}
	m.seen[c] = true
	if c > m.highest {
		m.highest = c
	}
	return true
}

// TestAgainstModel drives the filter and the map model with random
// sequences of several shapes and requires identical answers.
func TestAgainstModel(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 7))
	shapes := []struct {
		name string
		next func(top uint64) uint64
	}{
		{"mostly-in-order", func(top uint64) uint64 { return top + uint64(r.IntN(4)) - 1 }},
		{"reordered", func(top uint64) uint64 { return top + uint64(r.IntN(200)) - uint64(min(top, 150)) }},
		{"around-window-edge", func(top uint64) uint64 {
			d := uint64(WindowSize - 3 + r.IntN(7))
			if r.IntN(3) == 0 || top < d {
				return top + uint64(r.IntN(3*wordBits))
			}
			return top - d
		}},
		{"jumps", func(top uint64) uint64 {
			switch r.IntN(10) {
			case 0:
				return top + uint64(r.IntN(3*ringWords*wordBits))
			case 1:
				return r.Uint64N(top + 1)
			default:
				return top - uint64(min(top, uint64(r.IntN(WindowSize+200)))) + uint64(r.IntN(5))
			}
		}},
	}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			for round := 0; round < 20; round++ {
				var f Filter
				m := model{seen: map[uint64]bool{}}
				limit := uint64(rejectAfterMessages)
				if round%4 == 3 {
					limit = 20000 + r.Uint64N(20000)
				}
				top := uint64(0)
				for i := 0; i < 5000; i++ {
					c := sh.next(top)
					got, want := f.ValidateCounter(c, limit), m.validate(c, limit)
					if got != want {
						t.Fatalf("round %d step %d counter %d (highest %d): filter %v, model %v", round, i, c, m.highest, got, want)
					}
					if want {
						top = m.highest
					}
				}
			}
		})
	}
}

func TestNoAllocs(t *testing.T) {
	var f Filter
	c := uint64(0)
	if a := testing.AllocsPerRun(1000, func() { f.ValidateCounter(c, rejectAfterMessages); c++ }); a != 0 {
		t.Fatalf("%v allocs", a)
	}
}

func BenchmarkValidateInOrder(b *testing.B) {
	var f Filter
	b.ReportAllocs()
	c := uint64(0)
	for b.Loop() {
		f.ValidateCounter(c, rejectAfterMessages)
		c++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkValidateReordered(b *testing.B) {
	var f Filter
	r := rand.New(rand.NewPCG(1, 1))
	const n = 1 << 16
	seq := make([]uint64, n)
	for i := range seq {
		seq[i] = uint64(i) + uint64(r.IntN(256))
	}
	b.ReportAllocs()
	i := 0
	base := uint64(0)
	for b.Loop() {
		f.ValidateCounter(base+seq[i], rejectAfterMessages)
		i++
		if i == n {
			i = 0
			base += n + 256
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}
