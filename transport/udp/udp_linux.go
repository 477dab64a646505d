package udp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/transport"
)

func init() {
	errnoName = func(e int) string {
		if name := unix.ErrnoName(unix.Errno(e)); name != "" {
			return strings.ToLower(name)
		}
		return "errno_" + strconv.Itoa(e)
	}
}

// openAttempts bounds how many ports Open(0) tries before giving up when
// the port the kernel picked for IPv4 is taken for IPv6.
const openAttempts = 16

// Send waits this long without progress for room in a full send buffer
// before it drops what is left; ENOBUFS, which the kernel may never follow
// with a writability event, gets the shorter bound.
const (
	defaultStallLimit = time.Second
	enobufsStallLimit = 20 * time.Millisecond
)

// Transport is a transport.Transport over an IPv4 and an IPv6 UDP socket
// bound to the same port. All methods are safe for concurrent use. Sends to
// one socket are serialized (the kernel and Go's poller would serialize them
// anyway); each ReceiveFunc has its own buffers and may run in parallel with
// the others and with Send.
type Transport struct {
	opts  Options
	stats counters

	// gsoBroken is set when the kernel rejects a segmented send; GSO then
	// stays off for the life of the Transport, reopens included.
	gsoBroken atomic.Bool

	// stallLimit bounds a send's wait for buffer room (tests shorten it).
	stallLimit time.Duration
	// sendmmsg is the send syscall; tests replace it to inject errors.
	sendmmsg func(fd uintptr, hdrs []unix.Mmsghdr) (int, unix.Errno)

	mu   sync.Mutex // serializes Open, Close and SetMark; guards mark
	mark uint32

	socks atomic.Pointer[sockets] // nil while closed
}

var _ transport.Transport = (*Transport)(nil)

// sockets is what one Open bound. It is never changed after Open; Close
// swaps it out of the Transport and closes the sockets.
type sockets struct {
	v4, v6 *socket
}

func (p *sockets) each(f func(*socket)) {
	if p.v4 != nil {
		f(p.v4)
	}
	if p.v6 != nil {
		f(p.v6)
	}
}

// socket is one bound UDP socket.
type socket struct {
	t      *Transport
	conn   *net.UDPConn
	rc     syscall.RawConn
	v6     bool
	port   uint16
	gso    bool // the kernel supports UDP_SEGMENT and GSO is not switched off
	gro    bool // UDP_GRO is on
	stamp  bool // SO_TIMESTAMPNS is on, for the receive queue's AQM
	sticky bool // packet info is on (IP_PKTINFO, IPV6_RECVPKTINFO): sources are sticky
	closed atomic.Bool

	sendMu sync.Mutex // guards tx and the connection's write deadline
	tx     *sender
}

// New returns a closed Transport; Open binds it.
func New(opts Options) *Transport {
	return &Transport{opts: opts, stallLimit: defaultStallLimit, sendmmsg: sendmmsg}
}

// BatchSize implements transport.Transport.
func (t *Transport) BatchSize() int { return BatchSize }

// Offloads reports whether the open sockets use GSO on send and GRO on
// receive (both false while closed). GSO can turn off while open, after the
// kernel rejects a segmented send.
func (t *Transport) Offloads() (gso, gro bool) {
	p := t.socks.Load()
	if p == nil {
		return false, false
	}
	gso, gro = true, true
	p.each(func(s *socket) {
		gso = gso && s.gso && !t.gsoBroken.Load()
		gro = gro && s.gro
	})
	return gso, gro
}

// Open implements transport.Transport. It binds an IPv4 and an IPv6
// (IPV6_V6ONLY) socket to port; with port 0 it looks for a port free in
// both families. A family the host lacks is skipped; Open fails only when
// neither socket can be had. It returns one ReceiveFunc per socket.
func (t *Transport) Open(port uint16) ([]transport.ReceiveFunc, uint16, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.socks.Load() != nil {
		return nil, 0, transport.ErrAlreadyOpen
	}
	var (
		p   *sockets
		err error
	)
	for range openAttempts {
		p, err = t.bind(port)
		if err == nil || port != 0 || !errors.Is(err, unix.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		return nil, 0, err
	}
	var fns []transport.ReceiveFunc
	var actual uint16
	p.each(func(s *socket) {
		fns = append(fns, newReceiver(s).receive)
		actual = s.port
	})
	t.socks.Store(p)
	return fns, actual, nil
}

// bind opens the socket pair once.
func (t *Transport) bind(port uint16) (*sockets, error) {
	p := &sockets{}
	var err4, err6 error
	p.v4, err4 = t.listen(false, port)
	if err4 == nil {
		port = p.v4.port
	} else if !familyUnavailable(err4) {
		return nil, err4
	}
	p.v6, err6 = t.listen(true, port)
	switch {
	case err6 == nil:
	case err4 != nil:
		return nil, fmt.Errorf("udp: no socket could be opened: %w", errors.Join(err4, err6))
	case !familyUnavailable(err6):
		p.v4.conn.Close()
		return nil, err6
	default:
		t.opts.logf("udp: IPv6 unavailable, using IPv4 only: %v", err6)
	}
	if err4 != nil {
		t.opts.logf("udp: IPv4 unavailable, using IPv6 only: %v", err4)
	}
	return p, nil
}

// familyUnavailable reports whether err means the host lacks the address
// family, as opposed to the port being taken or a permission problem.
func familyUnavailable(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPROTONOSUPPORT) ||
		errors.Is(err, unix.EADDRNOTAVAIL)
}

// listen opens and configures one socket.
func (t *Transport) listen(v6 bool, port uint16) (*socket, error) {
	var f *os.File
	if t.opts.Sockets != nil {
		var err error
		if f, err = t.opts.Sockets.Open(v6, port, t.mark, t.opts.socketBuffer()); err != nil {
			return nil, err
		}
	} else {
		fd, err := OpenSocket(v6, port, t.mark, t.opts.socketBuffer(), t.opts.Logf)
		if err != nil {
			return nil, err
		}
		f = os.NewFile(uintptr(fd), "udp")
	}
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("udp: %w", err)
	}
	s := &socket{t: t, v6: v6}
	var ok bool
	if s.conn, ok = pc.(*net.UDPConn); !ok {
		pc.Close()
		return nil, fmt.Errorf("udp: the socket handed over is not a UDP socket (%T)", pc)
	}
	if s.rc, err = s.conn.SyscallConn(); err != nil {
		s.conn.Close()
		return nil, err
	}
	if err := s.rc.Control(func(fd uintptr) { t.setup(s, int(fd)) }); err != nil {
		s.conn.Close()
		return nil, err
	}
	s.port = uint16(s.conn.LocalAddr().(*net.UDPAddr).Port)
	s.tx = newSender(s)
	return s, nil
}

// OpenSocket takes the privileged steps of opening a Transport's socket
// (see SocketOpener.Open) and returns its file descriptor, non-blocking and
// close-on-exec. logf hears of buffers smaller than asked for.
func OpenSocket(v6 bool, port uint16, mark uint32, bufSize int, logf func(format string, args ...any)) (fd int, err error) {
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(port)}
	if v6 {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(port)}
	}
	fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("udp: socket: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	if v6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return -1, fmt.Errorf("udp: IPV6_V6ONLY: %w", err)
		}
	}
	if bufSize > 0 {
		setBuffer(fd, "receive", unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, bufSize, logf)
		setBuffer(fd, "send", unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, bufSize, logf)
	}
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			return -1, fmt.Errorf("udp: SO_MARK: %w", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return -1, fmt.Errorf("udp: bind port %d: %w", port, err)
	}
	return fd, nil
}

// setup configures a new socket: the offloads the kernel and the options
// allow, receive timestamps, and the packet info sticky sources need.
// None of it needs a privilege.
func (t *Transport) setup(s *socket, fd int) {
	if !t.opts.DisableSticky {
		var err error
		if s.v6 {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
		if err != nil {
			t.stats.stickyUnavailable.Add(1)
			t.opts.logf("udp: packet info: %v; replies leave from the route's source address", err)
		} else {
			s.sticky = true
		}
	}
	if !t.opts.DisableGSO {
		_, err := unix.GetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT)
		s.gso = err == nil
		if err != nil {
			t.opts.logf("udp: the kernel has no UDP GSO (%v); sending without it", err)
		}
	}
	if !t.opts.DisableGRO {
		// UDP_GRO exists since 4.18 but misbehaved on older kernels; only
		// trust it from 5.12 on.
		if !kernelAtLeast(kernelRelease(), 5, 12) {
			t.stats.groDisabled.Add(1)
			t.opts.logf("udp: kernel %s is older than 5.12; receiving without GRO", kernelRelease())
		} else if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1); err != nil {
			t.stats.groDisabled.Add(1)
			t.opts.logf("udp: UDP_GRO: %v; receiving without GRO", err)
		} else {
			s.gro = true
		}
	}
	if !t.opts.DisableAQM {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			t.stats.aqmUnavailable.Add(1)
			t.opts.logf("udp: SO_TIMESTAMPNS: %v; receiving without queue management", err)
		} else {
			s.stamp = true
		}
	}
}

// SetSocketBuffers sets the receive and send buffers of fd, a UDP socket
// opened elsewhere than OpenSocket, to size bytes (DefaultSocketBuffer
// for 0), as OpenSocket does: beyond the sysctl limits when the process
// may (CAP_NET_ADMIN), and logf hears when the kernel gave less.
func SetSocketBuffers(fd, size int, logf func(format string, args ...any)) {
	if size == 0 {
		size = DefaultSocketBuffer
	}
	setBuffer(fd, "receive", unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, size, logf)
	setBuffer(fd, "send", unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, size, logf)
}

// setBuffer sets a socket buffer to size, beyond the sysctl limit when the
// process may (CAP_NET_ADMIN), and says so when the kernel gave less.
func setBuffer(fd int, what string, force, plain, size int, logf func(format string, args ...any)) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, size)
	}
	// The kernel reports twice the size asked for (it adds bookkeeping room).
	if got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, plain); err == nil && got/2 < size && logf != nil {
		logf("udp: %s buffer is %d bytes, wanted %d (raise net.core.%cmem_max or grant CAP_NET_ADMIN)",
			what, got/2, size, what[0])
	}
}

var kernelRelease = sync.OnceValue(func() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
})

// Close implements transport.Transport. It unblocks every ReceiveFunc
// (they return net.ErrClosed) and every Send waiting for buffer room. Close
// on a closed Transport does nothing.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.socks.Swap(nil)
	if p == nil {
		return nil
	}
	var errs []error
	p.each(func(s *socket) {
		s.closed.Store(true)
		if err := s.conn.Close(); err != nil {
			errs = append(errs, err)
		}
	})
	return errors.Join(errs...)
}

// SetMark implements transport.Transport: SO_MARK on both sockets, kept
// for later Opens. It needs CAP_NET_ADMIN.
func (t *Transport) SetMark(mark uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mark = mark
	p := t.socks.Load()
	if p == nil {
		return nil
	}
	var errs []error
	p.each(func(s *socket) {
		var serr error
		if err := s.rc.Control(func(fd uintptr) {
			if t.opts.Sockets == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
				return
			}
			dup, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				serr = err
				return
			}
			f := os.NewFile(uintptr(dup), "udp")
			serr = t.opts.Sockets.SetMark(f, mark)
			f.Close()
		}); err != nil {
			serr = err
		}
		if serr != nil {
			errs = append(errs, fmt.Errorf("udp: SO_MARK: %w", serr))
		}
	})
	return errors.Join(errs...)
}

// closedErr maps an error from a closed socket to net.ErrClosed.
func closedErr(s *socket, err error) error {
	if s.closed.Load() || errors.Is(err, net.ErrClosed) {
		return net.ErrClosed
	}
	return err
}
