package ring

import (
	"sync/atomic"
	"unsafe"
)

// header holds typed pointers into the shared control block. The memory may
// belong to another process and change at any time: every value loaded
// through these pointers is untrusted and must be checked before use.
type header struct {
	tail            *atomic.Uint64
	head            *atomic.Uint64
	consumerWaiting *atomic.Uint32
	producerWaiting *atomic.Uint32
	closed          *atomic.Uint32
}

// bind points r.h into r.mem. newRegion has checked that mem is 8-byte
// aligned and longer than the control block.
func (r *Region) bind() {
	r.h = header{
		tail:            (*atomic.Uint64)(unsafe.Pointer(&r.mem[offTail:][:8][0])),
		head:            (*atomic.Uint64)(unsafe.Pointer(&r.mem[offHead:][:8][0])),
		consumerWaiting: (*atomic.Uint32)(unsafe.Pointer(&r.mem[offConsumerWaiting:][:4][0])),
		producerWaiting: (*atomic.Uint32)(unsafe.Pointer(&r.mem[offProducerWaiting:][:4][0])),
		closed:          (*atomic.Uint32)(unsafe.Pointer(&r.mem[offClosed:][:4][0])),
	}
}

func aligned8(b []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%8 == 0
}

// loadUint64 atomically loads the 8-byte aligned word at b[off:]. One load
// means the value checked is the value used, whatever the peer does.
func loadUint64(b []byte, off uint64) uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&b[off:][:8][0])).Load()
}

func loadUint32(b []byte, off uint64) uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&b[off:][:4][0])).Load()
}

// storeUint64 stores to the 8-byte aligned word at b[off:] without a
// barrier: record headers become visible to the consumer through the atomic
// store of tail that follows (Flush).
func storeUint64(b []byte, off uint64, v uint64) {
	*(*uint64)(unsafe.Pointer(&b[off:][:8][0])) = v
}
