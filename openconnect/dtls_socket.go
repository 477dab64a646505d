package openconnect

import (
	"net"
	"net/netip"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/transport/udp"
)

// dtlsSocket is the DTLS server's UDP socket, in batches: a udp.Conn
// (recvmmsg, sendmmsg, GRO/GSO) for a *net.UDPConn on Linux, one datagram
// per call for any other net.PacketConn. Receive is called by one
// goroutine; Send by several.
type dtlsSocket interface {
	// Receive reads datagrams into bufs (each MaxDatagramSize long).
	Receive(bufs [][]byte, sizes []int, eps []transport.Endpoint) (int, error)
	// Send sends bufs, in order, to ep.
	Send(bufs [][]byte, ep transport.Endpoint) error
	Stats() []metrics.Counter
	Close() error
}

func newDTLSSocket(pc net.PacketConn, logf func(string, ...any)) dtlsSocket {
	if uc, ok := pc.(*net.UDPConn); ok {
		c, err := udp.NewConn(uc, udp.OptionsFromEnv(udp.Options{Logf: logf}))
		if err == nil {
			return c
		}
		logf("openconnect: DTLS socket without batched I/O: %v", err)
	}
	return &packetSocket{pc: pc}
}

// packetSocket is a net.PacketConn one datagram at a time.
type packetSocket struct{ pc net.PacketConn }

func (s *packetSocket) Receive(bufs [][]byte, sizes []int, eps []transport.Endpoint) (int, error) {
	for {
		n, addr, err := s.pc.ReadFrom(bufs[0])
		if err != nil {
			return 0, err
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			continue // only UDP sources can be told apart and answered
		}
		ap := ua.AddrPort()
		sizes[0], eps[0] = n, transport.EndpointFrom(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		return 1, nil
	}
}

func (s *packetSocket) Send(bufs [][]byte, ep transport.Endpoint) error {
	addr := net.UDPAddrFromAddrPort(ep.Remote)
	var first error
	for _, b := range bufs {
		if _, err := s.pc.WriteTo(b, addr); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (s *packetSocket) Stats() []metrics.Counter { return nil }

func (s *packetSocket) Close() error { return s.pc.Close() }

// newConnSocket is the batched I/O of a client's connected UDP socket: a
// udp.Conn for a *net.UDPConn on Linux, else one datagram per call.
func newConnSocket(c net.Conn, logf func(string, ...any)) dtlsSocket {
	if uc, ok := c.(*net.UDPConn); ok {
		u, err := udp.NewConn(uc, udp.OptionsFromEnv(udp.Options{Logf: logf}))
		if err == nil {
			return u
		}
		logf("openconnect: DTLS socket without batched I/O: %v", err)
	}
	return &connSocket{c: c}
}

// connSocket is a connected net.Conn one datagram at a time.
type connSocket struct{ c net.Conn }

func (s *connSocket) Receive(bufs [][]byte, sizes []int, eps []transport.Endpoint) (int, error) {
	n, err := s.c.Read(bufs[0])
	if err != nil {
		return 0, err
	}
	sizes[0], eps[0] = n, transport.Endpoint{}
	return 1, nil
}

func (s *connSocket) Send(bufs [][]byte, _ transport.Endpoint) error {
	var first error
	for _, b := range bufs {
		if _, err := s.c.Write(b); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (s *connSocket) Stats() []metrics.Counter { return nil }

func (s *connSocket) Close() error { return s.c.Close() }
