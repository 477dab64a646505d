// Package transport defines how the WireGuard engine sends and receives
// datagrams; transport/udp is the batched Linux UDP implementation and
// transport/transporttest an in-memory fake.
package transport

import "net/netip"

// MaxDatagramSize is the largest single datagram a transport carries.
const MaxDatagramSize = 65535

// ReceiveFunc receives one or more datagrams into bufs. It sets sizes[i] to
// the length of bufs[i]'s datagram and eps[i] to its source, and returns the
// count. len(bufs), len(sizes) and len(eps) must be >= BatchSize(); each
// bufs[i] must have len >= MaxDatagramSize. A coalesced (GRO) read is split
// back into datagrams here. After Close it returns net.ErrClosed.
type ReceiveFunc func(bufs [][]byte, sizes []int, eps []netip.AddrPort) (n int, err error)

// Transport is a bound set of datagram sockets (IPv4 and IPv6).
type Transport interface {
	// Open binds to port (0 picks one) and returns one ReceiveFunc per
	// socket, each meant for its own goroutine, and the port bound.
	// Open on an open Transport returns ErrAlreadyOpen.
	Open(port uint16) (fns []ReceiveFunc, actualPort uint16, err error)

	// Close closes the sockets; ReceiveFuncs return net.ErrClosed. The
	// Transport may be opened again.
	Close() error

	// Send sends every bufs[i] as one datagram to ep. It may coalesce
	// datagrams (GSO) using the bytes between len(bufs[i]) and
	// cap(bufs[i]); it does not retain bufs after returning. It blocks
	// while the socket's send buffer is full (backpressure) rather than
	// dropping.
	Send(bufs [][]byte, ep netip.AddrPort) error

	// SetMark sets SO_MARK on the sockets (0 clears it).
	SetMark(mark uint32) error

	// BatchSize is the most datagrams one ReceiveFunc returns and the
	// batch Send handles best.
	BatchSize() int
}
