// Package transport defines how the WireGuard engine sends and receives
// datagrams; transport/udp is the batched Linux UDP implementation and
// transport/transporttest an in-memory fake.
package transport

import (
	"net/netip"
	"strconv"
)

// MaxDatagramSize is the largest single datagram a transport carries.
const MaxDatagramSize = 65535

// Endpoint is the far end of a datagram and the local address this host
// used for it. A received datagram's Endpoint holds where it came from and
// the local address it was sent to; sending to that Endpoint makes the
// reply leave from that same local address ("sticky source"), as a peer
// behind a NAT or a firewall expects, rather than from the address the
// route would pick on a host with several.
//
// Endpoint is a small comparable value: copy it, compare it with ==.
type Endpoint struct {
	// Remote is the peer's address and port.
	Remote netip.AddrPort
	// Local is this host's address the datagram arrived on, and the
	// source for sends; the zero Addr lets the route pick the source (an
	// endpoint from configuration has none).
	Local netip.Addr
	// IfIndex is the interface the datagram arrived on, 0 when unknown.
	// It scopes a link-local Local address; it does not steer sends.
	IfIndex uint32
}

// EndpointFrom returns an Endpoint for remote with no local address.
func EndpointFrom(remote netip.AddrPort) Endpoint { return Endpoint{Remote: remote} }

// WithoutLocal returns e with the local address and interface cleared, so
// that sends to it leave from the address the route picks.
func (e Endpoint) WithoutLocal() Endpoint { return Endpoint{Remote: e.Remote} }

// String formats e as its remote address, followed by "via" the local
// address (and "%" the interface index) when there is one.
func (e Endpoint) String() string {
	s := e.Remote.String()
	if e.Local.IsValid() {
		s += " via " + e.Local.String()
		if e.IfIndex != 0 {
			s += "%" + strconv.FormatUint(uint64(e.IfIndex), 10)
		}
	}
	return s
}

// ReceiveFunc receives one or more datagrams into bufs. It sets sizes[i] to
// the length of bufs[i]'s datagram and eps[i] to its Endpoint (source, and
// the local address it arrived on when the transport knows it), and
// returns the count. len(bufs), len(sizes) and len(eps) must be >=
// BatchSize(); each bufs[i] must have len >= MaxDatagramSize. A coalesced
// (GRO) read is split back into datagrams here. After Close it returns
// net.ErrClosed.
type ReceiveFunc func(bufs [][]byte, sizes []int, eps []Endpoint) (n int, err error)

// Transport is a bound set of datagram sockets (IPv4 and IPv6).
type Transport interface {
	// Open binds to port (0 picks one) and returns one ReceiveFunc per
	// socket, each meant for its own goroutine, and the port bound.
	// Open on an open Transport returns ErrAlreadyOpen.
	Open(port uint16) (fns []ReceiveFunc, actualPort uint16, err error)

	// Close closes the sockets; ReceiveFuncs return net.ErrClosed. The
	// Transport may be opened again.
	Close() error

	// Send sends every bufs[i] as one datagram to ep.Remote, from
	// ep.Local when it is set. It may coalesce datagrams (GSO) using the
	// bytes between len(bufs[i]) and cap(bufs[i]); it does not retain
	// bufs after returning. It blocks while the socket's send buffer is
	// full (backpressure) rather than dropping. When ep.Local is no
	// longer an address of this host, Send sends from the address the
	// route picks instead and returns ErrSourceCleared, unless another
	// error occurred, which it returns instead.
	Send(bufs [][]byte, ep Endpoint) error

	// SetMark sets SO_MARK on the sockets (0 clears it).
	SetMark(mark uint32) error

	// BatchSize is the most datagrams one ReceiveFunc returns and the
	// batch Send handles best.
	BatchSize() int
}
