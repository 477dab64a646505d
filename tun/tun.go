// Package tun is the layer-3 packet device at the top of ptun's data path:
// the kernel's TUN interface on Linux (with virtio-net offloads), and an
// in-memory fake in tuntest for unit tests.
package tun

import "errors"

// MaxSegmentSize is the largest packet (or GSO super-packet) that may sit in
// one buffer handed to a Device.
const MaxSegmentSize = 65535

// MinOffset is the least headroom callers must leave before each packet in
// Read and Write: room for the virtio-net header on Linux.
const MinOffset = 10

// ErrTooManySegments is returned by Read when a super-packet splits into more
// packets than the caller gave buffers for. The packet is dropped and counted;
// the caller should go on reading.
var ErrTooManySegments = errors.New("tun: too many segments for the read batch")

// Device moves batches of IP packets between the kernel and ptun.
//
// Buffer contract: the caller owns every buffer. Packets sit at
// bufs[i][offset:], with offset >= MinOffset bytes of headroom the device may
// use. Neither Read nor Write retains a buffer after returning.
type Device interface {
	// Read reads one or more packets into bufs[i][offset:] and sets
	// sizes[i] to each packet's length; it returns how many it read.
	// len(bufs) and len(sizes) must be >= BatchSize(), and each
	// bufs[i] must have len >= offset+MaxSegmentSize. A super-packet read
	// from the kernel is split into MTU-sized packets here. After Close
	// (or when the interface is deleted) Read returns os.ErrClosed.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)

	// Write writes every packet bufs[i][offset:] to the kernel. It may
	// coalesce packets of one flow into the first one's buffer (GRO), so
	// each bufs[i] must have cap >= offset+MaxSegmentSize, and the
	// contents of bufs may be changed. It never drops a packet silently:
	// packets the kernel rejects are counted by reason and reported in the
	// returned error; it returns the number of packets the caller passed
	// that are now with the kernel (coalesced ones included).
	Write(bufs [][]byte, offset int) (int, error)

	// BatchSize is the most packets one Read returns. It does not change
	// over the life of the Device.
	BatchSize() int

	// MTU is the interface's current MTU.
	MTU() (int, error)

	// Name is the interface's name.
	Name() string

	// Close closes the device; Read and Write then return os.ErrClosed.
	Close() error
}
