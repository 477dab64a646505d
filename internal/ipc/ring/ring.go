// Package ring is a single-producer single-consumer packet ring in shared
// memory: the shm IPC mode between the privileged front process and an
// unprivileged engine process. One ring carries one direction; a session
// uses two.
//
// # Shared layout
//
// A ring lives in one sealed memfd of HeaderSize+dataSize bytes:
//
//	offset  field                                     written by
//	0       magic uint64, version uint32, dataSize    Create (once)
//	        uint64 (at 16)
//	128     tail uint64: free-running byte index      producer
//	256     head uint64: free-running byte index      consumer
//	384     consumerWaiting uint32 (need wakeup)      consumer arms, producer clears
//	512     producerWaiting uint32 (waits for space)  producer arms, consumer clears
//	640     closed uint32 (bit 0 producer, bit 1      either side
//	        consumer)
//	4096    data region, dataSize bytes (a power of two)
//
// Each index and flag has a 128-byte block to itself, so the producer's and
// the consumer's lines never share a cache line or an adjacent-line prefetch
// pair. All of them are native-endian and accessed only with sync/atomic.
//
// The data region holds records. A record is an 8-byte header, one
// native-endian uint64 holding length in its low and flags in its high 32 bits
// (so {length uint32, flags uint32} on little-endian hosts), followed by
// length payload bytes, padded to a multiple of 8. A record never wraps: when
// one does not fit before the end of the data region, the producer first
// writes a padding record (flags = 1) that fills exactly to the end, and the
// record starts at offset 0. The largest payload is MaxPayload(dataSize) =
// dataSize/2 - 8, which guarantees that an empty ring always has room for
// the padding plus the record; DefaultDataSize carries a 64 KiB GSO
// super-packet with its 10-byte virtio header (65546 bytes).
//
// # Publishing and wakeups
//
// The producer writes records, then publishes all of them with one atomic
// store of tail (Flush). It writes the dataReady eventfd only when the
// consumer has armed consumerWaiting; the consumer arms it, re-checks tail and
// only then sleeps, which closes the lost-wakeup race (the AF_XDP need_wakeup
// and gVisor sharedmem pattern). Space flows back the same way: the consumer
// publishes head with one store (Release) and writes the spaceReady eventfd
// only when the producer has armed producerWaiting. Both sides sleep in Go's
// netpoller, so a sleeping side parks a goroutine, not an OS thread.
//
// # Hostile peer
//
// The engine is untrusted, so nothing read from the shared region is
// trusted: every index and record header is read once, checked against the
// local view (see ErrCorrupt) and only then used. A violation poisons the
// side, which returns ErrCorrupt from then on; it never panics, never
// indexes outside the region and never loops without bound. A peer that
// merely stops (never releases, never publishes) is backpressure: the owner
// aborts a blocked side with Close from another goroutine.
package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Sizes of the shared region.
const (
	// HeaderSize is the size of the control block before the data region.
	HeaderSize = 4096
	// MinDataSize and MaxDataSize bound the data region size.
	MinDataSize = 64 << 10
	MaxDataSize = 64 << 20
	// DefaultDataSize holds about 60 GSO super-packets of 64 KiB, or
	// about 2,900 packets of 1420 bytes, per direction.
	DefaultDataSize = 4 << 20

	// RecordHeaderSize is the size of a record header; records are padded to
	// RecordAlign bytes.
	RecordHeaderSize = 8
	RecordAlign      = 8
)

// Version is the layout version written by Create and required by Map.
const Version = 1

const (
	magic = 0x676e69726e757470 // "ptunring" read as a little-endian uint64

	offMagic           = 0
	offVersion         = 8
	offDataSize        = 16
	offTail            = 128
	offHead            = 256
	offConsumerWaiting = 384
	offProducerWaiting = 512
	offClosed          = 640

	flagPadding = 1

	closedByProducer = 1
	closedByConsumer = 2
)

// Sentinel errors. Errors that wrap them carry detail; test with errors.Is.
var (
	// ErrClosed means a side closed the ring. For a consumer it is returned
	// only once every record published before the close was read. The
	// caller must stop, Close its own side and Unmap the region.
	ErrClosed = errors.New("ring: closed")
	// ErrEmpty means Next(false) found no record. Call Next(true) to wait.
	ErrEmpty = errors.New("ring: empty")
	// ErrTooLarge means a record is larger than MaxPayload. The caller must
	// split the packet or drop and count it; the ring is unchanged.
	ErrTooLarge = errors.New("ring: record too large")
	// ErrCorrupt means the shared region breaks the layout: Map found a
	// wrong magic, version, size or missing seals, or a side read an
	// impossible index or record header. The side is poisoned and returns
	// ErrCorrupt from then on; the caller must tear the session down (the
	// peer is broken or hostile).
	ErrCorrupt = errors.New("ring: corrupt shared region")
)

// MaxPayload returns the largest record payload a ring with a data region of
// dataSize bytes carries: half the data region minus a record header.
func MaxPayload(dataSize int) int {
	return dataSize/2 - RecordHeaderSize
}

// ValidDataSize reports whether n is a power of two in
// [MinDataSize, MaxDataSize].
func ValidDataSize(n int) bool {
	return n >= MinDataSize && n <= MaxDataSize && bits.OnesCount(uint(n)) == 1
}

// recordSize is the space a record with an n-byte payload takes.
func recordSize(n uint64) uint64 {
	return (RecordHeaderSize + n + RecordAlign - 1) &^ (RecordAlign - 1)
}

// encodeHeader returns the constant part of the control block (magic,
// version, dataSize), as Create writes it.
func encodeHeader(dataSize int) []byte {
	b := make([]byte, offDataSize+8)
	binary.NativeEndian.PutUint64(b[offMagic:], magic)
	binary.NativeEndian.PutUint32(b[offVersion:], Version)
	binary.NativeEndian.PutUint64(b[offDataSize:], uint64(dataSize))
	return b
}

// Region is one ring's shared memory: the control block and the data region.
// Map makes one from a memfd. A Region is used by at most one Producer and one
// Consumer (normally one of them, the peer process has the other) and must
// outlive them: Unmap only after every method call on them has returned.
type Region struct {
	mem  []byte // control block + data region
	data []byte // mem[HeaderSize:], exactly size bytes
	size uint64
	// mapped is set when mem came from mmap and Unmap must release it.
	mapped bool

	h header // typed pointers into the control block, set by bind
}

// newRegion wraps mem, which must hold a control block written by Create (or
// encodeHeader) followed by the data region, and validates the header. The
// returned Region reads dataSize once, here; later changes by the peer are
// ignored.
func newRegion(mem []byte) (*Region, error) {
	if len(mem) < HeaderSize+MinDataSize {
		return nil, fmt.Errorf("%w: region of %d bytes is smaller than %d", ErrCorrupt, len(mem), HeaderSize+MinDataSize)
	}
	if !aligned8(mem) {
		return nil, fmt.Errorf("%w: region not 8-byte aligned", ErrCorrupt)
	}
	if m := loadUint64(mem, offMagic); m != magic {
		return nil, fmt.Errorf("%w: magic %#x, want %#x", ErrCorrupt, m, uint64(magic))
	}
	if v := loadUint32(mem, offVersion); v != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCorrupt, v, Version)
	}
	size := loadUint64(mem, offDataSize)
	if size > MaxDataSize || !ValidDataSize(int(size)) {
		return nil, fmt.Errorf("%w: data size %d is not a power of two in [%d, %d]", ErrCorrupt, size, MinDataSize, MaxDataSize)
	}
	if uint64(len(mem)) != HeaderSize+size {
		return nil, fmt.Errorf("%w: region is %d bytes, header says %d+%d", ErrCorrupt, len(mem), HeaderSize, size)
	}
	r := &Region{mem: mem, data: mem[HeaderSize:], size: size}
	r.bind()
	return r, nil
}

// DataSize returns the size of the data region in bytes.
func (r *Region) DataSize() int { return int(r.size) }

// MaxPayload returns the largest payload one record can carry.
func (r *Region) MaxPayload() int { return MaxPayload(int(r.size)) }

// Unmap releases a region made by Map. It must not be called while a
// Producer or Consumer method using r runs, and r must not be used after.
func (r *Region) Unmap() error {
	if r.mem == nil {
		return errors.New("ring: region already unmapped")
	}
	var err error
	if r.mapped {
		err = munmap(r.mem)
	}
	r.mem, r.data, r.h = nil, nil, header{}
	return err
}
