package udp

import (
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport"
)

// Conn is the batched I/O of one UDP socket that someone else opened and
// bound: an engine handed a socket by its front, say. It reads with
// recvmmsg (and GRO) and writes with sendmmsg (and GSO), with sticky
// sources and the kill switches of Options, exactly as a Transport's
// socket; unlike a Transport it has one socket, of whatever family it
// was made in. An IPv6 socket that is not IPV6_V6ONLY carries IPv4 too:
// IPv4 endpoints come and go unmapped. Options.SocketBuffer and Sockets
// do not apply (the socket's owner set its buffers and mark).
//
// Receive is meant for one goroutine; Send may be called from several
// (sends are serialized on the socket). Close closes the UDPConn.
type Conn struct {
	t  *Transport
	s  *socket
	rx *receiver
}

// NewConn takes over c's I/O. c must stay unused by others, except to be
// closed (which Close does).
func NewConn(c *net.UDPConn, opts Options) (*Conn, error) {
	t := New(opts)
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &socket{t: t, conn: c, rc: rc}
	var domain int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); serr != nil {
			return
		}
		s.v6 = domain == unix.AF_INET6
		t.setup(s, int(fd))
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("udp: SO_DOMAIN: %w", serr)
	}
	if domain != unix.AF_INET && domain != unix.AF_INET6 {
		return nil, fmt.Errorf("udp: not an IP socket (domain %d)", domain)
	}
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		s.port = uint16(a.Port)
	}
	s.tx = newSender(s)
	p := &sockets{}
	if s.v6 {
		p.v6 = s
	} else {
		p.v4 = s
	}
	t.socks.Store(p)
	return &Conn{t: t, s: s, rx: newReceiver(s)}, nil
}

// Receive is the socket's transport.ReceiveFunc (see there: every bufs[i]
// must hold MaxDatagramSize bytes). After Close it returns net.ErrClosed.
func (c *Conn) Receive(bufs [][]byte, sizes []int, eps []transport.Endpoint) (int, error) {
	return c.rx.receive(bufs, sizes, eps)
}

// Send sends bufs to ep as Transport.Send does, on the one socket: an IPv4
// endpoint on an IPv6 socket goes out IPv4-mapped (and from the route's
// source address).
func (c *Conn) Send(bufs [][]byte, ep transport.Endpoint) error {
	if len(bufs) == 0 {
		return nil
	}
	if c.s.closed.Load() {
		c.t.stats.dropSendClosed.Add(uint64(len(bufs)))
		return net.ErrClosed
	}
	addr := ep.Remote.Addr().Unmap()
	if !addr.IsValid() || ep.Remote.Port() == 0 {
		c.t.stats.dropSend(int(unix.EINVAL), len(bufs))
		return fmt.Errorf("udp: send to invalid endpoint %v", ep)
	}
	if addr.Is6() && !c.s.v6 {
		c.t.stats.dropSendNoSocket.Add(uint64(len(bufs)))
		return ErrNoSocket
	}
	local := ep.Local.Unmap()
	if !c.s.sticky || local.Is4() != addr.Is4() || (c.s.v6 && local.Is4()) || !usableSource(local) {
		local = netip.Addr{}
	}
	return c.s.send(bufs, netip.AddrPortFrom(addr.WithZone(""), ep.Remote.Port()), local.WithZone(""), ep.IfIndex)
}

// LocalAddr is the socket's address.
func (c *Conn) LocalAddr() net.Addr { return c.s.conn.LocalAddr() }

// Offloads reports whether the socket uses GSO on send and GRO on receive.
func (c *Conn) Offloads() (gso, gro bool) {
	return c.s.gso && !c.t.gsoBroken.Load(), c.s.gro
}

// Stats returns the socket's counters, named as a Transport's.
func (c *Conn) Stats() []metrics.Counter { return c.t.Stats() }

var _ metrics.Reporter = (*Conn)(nil)

// Close closes the socket; Receive and waiting Sends return net.ErrClosed.
// Close on a closed Conn does nothing.
func (c *Conn) Close() error {
	if c.s.closed.Swap(true) {
		return nil
	}
	c.t.socks.Store(nil)
	return c.s.conn.Close()
}
