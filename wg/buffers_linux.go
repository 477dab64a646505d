package wg

import "golang.org/x/sys/unix"

// bufStride is the distance between two buffers in a mapping: bufSize
// rounded up to a cache line, so no two buffers share one.
const bufStride = (bufSize + 63) &^ 63

// mapBufferSet maps one private anonymous region for n buffers, or
// returns nil if the mapping fails (the caller then uses the heap). The
// kernel gives its pages on first touch, zeroed.
func mapBufferSet(n int) *bufferSet {
	if n <= 0 {
		return nil
	}
	mem, err := unix.Mmap(-1, 0, n*bufStride, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil
	}
	s := &bufferSet{bufs: make([][]byte, n), mem: mem}
	for i := range s.bufs {
		off := i * bufStride
		s.bufs[i] = mem[off : off+bufSize : off+bufSize]
	}
	return s
}

func unmapBufferSet(mem []byte) { unix.Munmap(mem) }
