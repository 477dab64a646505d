// Package replay is the sliding-window filter that rejects replayed or too
// old transport counters, in the style of RFC 6479: a ring of 64-bit words
// where whole words are cleared as the window slides, so advancing costs
// O(words skipped), never a bit-by-bit shift.
package replay

const (
	wordBits  = 64
	ringWords = 128 // 8192 bits of ring
	ringMask  = ringWords - 1

	// WindowSize is how far behind the highest counter seen a counter may
	// be and still be accepted (if not seen before). One word of the ring
	// is always the partly filled current one, so the window is one word
	// short of the ring.
	WindowSize = (ringWords - 1) * wordBits // 8128

	// RejectAfterMessages is WireGuard's per-session message limit
	// (whitepaper §6, 2^64 - 2^13 - 1): a counter at or above it is never
	// accepted, and a sender never uses it. It is the limit to pass to
	// ValidateCounter for a WireGuard session.
	RejectAfterMessages uint64 = 1<<64 - 1<<13 - 1
)

// Filter remembers which counters of one session were seen. The zero value
// is ready to use (as if Reset). Not safe for concurrent use: the caller
// serialises calls, for example with a per-session mutex.
type Filter struct {
	highest uint64 // highest counter accepted (0 before any)
	ring    [ringWords]uint64
}

// Reset forgets every counter, for a new session.
func (f *Filter) Reset() {
	*f = Filter{}
}

// ValidateCounter reports whether counter is below limit, not seen before
// and not more than WindowSize behind the highest counter accepted; if so it
// marks counter as seen. Call it only after the packet authenticated,
// otherwise a forged counter would slide the window.
func (f *Filter) ValidateCounter(counter, limit uint64) bool {
	if counter >= limit {
		return false
	}
	word := counter / wordBits
	if counter > f.highest {
		// Clear the words the window slides over, at most the whole ring.
		current := f.highest / wordBits
		skip := word - current
		if skip > ringWords {
			skip = ringWords
		}
		for i := uint64(1); i <= skip; i++ {
			f.ring[(current+i)&ringMask] = 0
		}
		f.highest = counter
	} else if f.highest-counter > WindowSize {
		return false
	}
	bit := uint64(1) << (counter % wordBits)
	w := &f.ring[word&ringMask]
	if *w&bit != 0 {
		return false
	}
	*w |= bit
	return true
}
