package wg

// bufferSet is a batch of data-path buffers, bufSize bytes each. On Linux
// they are carved out of one anonymous mapping outside the Go heap (see
// buffers_linux.go); elsewhere they are ordinary slices.
//
// Why outside the heap: the collector sets its next goal at twice the
// live heap (GOGC=100), and an engine's three sets of 64 buffers (the
// TUN reader's and one per socket's receiver, 12.6 MiB) count as live
// heap whether or not a packet ever touched them. With them in the heap,
// an idle engine let 12 MiB of control-plane garbage (UAPI answers, set
// requests: about 1.5 KiB per peer for each read of the peers) become
// resident before it collected; outside it, the goal follows the control
// plane's own live memory. A buffer's pages are resident once a packet
// touches them, as before, and nothing changes per packet.
//
// The owner calls free once no goroutine can use the buffers any more;
// after free every buffer is invalid (on Linux, unmapped).
type bufferSet struct {
	bufs [][]byte
	mem  []byte // the mapping, nil once freed or when the buffers are heap slices
}

// newBufferSet returns n buffers of bufSize bytes, zeroed.
func newBufferSet(n int) *bufferSet {
	if s := mapBufferSet(n); s != nil {
		return s
	}
	s := &bufferSet{bufs: make([][]byte, n)}
	for i := range s.bufs {
		s.bufs[i] = make([]byte, bufSize)
	}
	return s
}

// free releases the buffers. It may be called more than once.
func (s *bufferSet) free() {
	if s.mem != nil {
		unmapBufferSet(s.mem)
		s.mem = nil
	}
	s.bufs = nil
}
