package udp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/transport"
)

// sender holds one socket's pre-allocated sendmmsg state. It is guarded by
// socket.sendMu. Between Sends its iovecs hold no pointers into callers'
// buffers.
type sender struct {
	hdrs    [BatchSize]unix.Mmsghdr
	iovs    [BatchSize]unix.Iovec // one per datagram of the chunk, in order
	oob     [BatchSize][txOOBSize]byte
	first   [BatchSize + 1]int // first[i]: the chunk index of message i's first datagram
	name    [sockaddrSize]byte
	namelen uint32
	dst4    bool // the destination is IPv4 (IPv4-mapped on an IPv6 socket)

	// src is the control message that sets the source of every message,
	// src[:srcLen]; srcLen is 0 when the route picks the source. Set per
	// Send.
	src    [pktinfoCmsgMax]byte
	srcLen int
	// The source's fallback within one Send: srcTrial while messages go
	// out without a source that the kernel refused, to learn whether it
	// was at fault; srcTried once that was tried; srcCleared once it
	// proved gone (Send then returns transport.ErrSourceCleared).
	srcTrial, srcTried, srcCleared bool
	srcSaved                       int        // srcLen during a trial
	srcAddr                        netip.Addr // the source, for the log
	srcErrno                       unix.Errno // what the kernel said to it

	// The arguments and results of write, which is made once so that
	// RawConn.Write needs no new closure per call.
	pending []unix.Mmsghdr
	wait    bool // on EAGAIN/ENOBUFS, let the poller wait for writability
	n       int
	errno   unix.Errno
	write   func(fd uintptr) bool
}

func newSender(s *socket) *sender {
	tx := &sender{}
	tx.write = func(fd uintptr) bool {
		tx.n, tx.errno = s.t.sendmmsg(fd, tx.pending)
		s.t.stats.txSyscalls.Add(1)
		return !tx.wait || (tx.errno != unix.EAGAIN && tx.errno != unix.ENOBUFS)
	}
	return tx
}

// Send implements transport.Transport. Datagrams go out in order. Runs of
// equal-sized datagrams are handed to the kernel as one segmented (GSO)
// message that gathers them from the caller's buffers, so no bytes are
// copied and bufs are not changed. When the send buffer is full Send waits
// for room through Go's poller; if no datagram gets out for a while (about
// a second) it gives up. Datagrams the kernel refuses are counted as
// drop_udp_send_<errno>, and the first such error is returned after the
// rest were tried. An IPv4-mapped ep.Remote goes out of the IPv4 socket.
//
// Datagrams leave from ep.Local when it is set (of ep.Remote's family) and
// sticky sources are on. When the kernel refuses that source (the address
// is gone), Send sends from the route's choice instead, counts
// udp_sticky_source_cleared and, unless another error occurred, returns
// transport.ErrSourceCleared.
func (t *Transport) Send(bufs [][]byte, ep transport.Endpoint) error {
	if len(bufs) == 0 {
		return nil
	}
	p := t.socks.Load()
	if p == nil {
		t.stats.dropSendClosed.Add(uint64(len(bufs)))
		return net.ErrClosed
	}
	addr := ep.Remote.Addr().Unmap()
	if !addr.IsValid() || ep.Remote.Port() == 0 {
		// Refused here: the kernel's EINVAL for port 0 would look like a
		// GSO failure.
		t.stats.dropSend(int(unix.EINVAL), len(bufs))
		return fmt.Errorf("udp: send to invalid endpoint %v", ep)
	}
	s := p.v6
	if addr.Is4() {
		s = p.v4
	}
	if s == nil {
		t.stats.dropSendNoSocket.Add(uint64(len(bufs)))
		return ErrNoSocket
	}
	local := ep.Local.Unmap()
	if !s.sticky || local.Is4() != addr.Is4() || !usableSource(local) {
		local = netip.Addr{}
	}
	return s.send(bufs, netip.AddrPortFrom(addr.WithZone(""), ep.Remote.Port()), local.WithZone(""), ep.IfIndex)
}

// stallError reports a send that got no datagram out within its bound.
type stallError struct{ errno unix.Errno }

func (e stallError) Error() string {
	return "udp: send buffer stayed full, datagrams dropped: " + e.errno.Error()
}

func (e stallError) Unwrap() error { return e.errno }

// send sends bufs to ep from local (the zero Addr: the route's choice).
func (s *socket) send(bufs [][]byte, ep netip.AddrPort, local netip.Addr, ifindex uint32) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	tx := s.tx
	tx.namelen = putSockaddr(&tx.name, ep, s.v6)
	tx.dst4 = ep.Addr().Is4()
	tx.srcLen, tx.srcTrial, tx.srcTried, tx.srcCleared = 0, false, false, false
	if local.IsValid() {
		tx.srcLen = putPktinfo(tx.src[:], local, ifindex, s.v6)
	}
	tx.srcAddr = local
	var firstErr error
	for off := 0; off < len(bufs); off += BatchSize {
		chunk := bufs[off:min(off+BatchSize, len(bufs))]
		stop, err := s.sendChunk(tx, chunk)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if stop {
			// Closed or stalled: the rest cannot go out either.
			rest := len(bufs) - off - len(chunk)
			var se stallError
			if errors.As(err, &se) {
				s.t.stats.dropSend(int(se.errno), rest)
			} else {
				s.t.stats.dropSendClosed.Add(uint64(rest))
			}
			break
		}
	}
	if firstErr == nil && tx.srcCleared {
		return transport.ErrSourceCleared
	}
	return firstErr
}

// sendChunk sends up to BatchSize datagrams. stop means the socket closed
// or stalled and the caller should not try further chunks; every datagram
// of chunk is sent or counted as dropped either way.
func (s *socket) sendChunk(tx *sender, chunk [][]byte) (stop bool, err error) {
	t := s.t
	maxBytes := maxGSOBytes4
	if s.v6 && !tx.dst4 {
		maxBytes = maxGSOBytes6
	}
	gso := s.gso && !t.gsoBroken.Load()
	m := tx.build(chunk, 0, 0, gso, maxBytes)
	defer tx.release(len(chunk))

	var (
		waitErrno   unix.Errno
		deadlineSet bool
	)
	setDeadline := func() {
		limit := t.stallLimit
		if waitErrno == unix.ENOBUFS {
			limit = min(limit, enobufsStallLimit)
		}
		s.conn.SetWriteDeadline(time.Now().Add(limit))
		deadlineSet = true
	}
	defer func() {
		if deadlineSet {
			s.conn.SetWriteDeadline(time.Time{})
		}
	}()

	tx.wait = false
	for start := 0; start < m; {
		tx.pending = tx.hdrs[start:m]
		if werr := s.rc.Write(tx.write); werr != nil {
			dropped := len(chunk) - tx.first[start]
			if errors.Is(werr, os.ErrDeadlineExceeded) && !s.closed.Load() {
				t.stats.dropSend(int(waitErrno), dropped)
				return true, stallError{waitErrno}
			}
			t.stats.dropSendClosed.Add(uint64(dropped))
			return true, net.ErrClosed
		}
		if n := tx.n; n > 0 {
			if tx.srcTrial {
				// Without the source it goes: the source was at fault.
				tx.srcTrial, tx.srcCleared = false, true
				t.stats.stickySourceCleared.Add(1)
				t.opts.logf("udp: the kernel refused source address %v (%v); sending from the route's source", tx.srcAddr, tx.srcErrno)
			}
			t.stats.txDatagrams.Add(uint64(tx.first[start+n] - tx.first[start]))
			segmented := 0
			for i := start; i < start+n; i++ {
				if tx.first[i+1]-tx.first[i] > 1 {
					segmented++
				}
			}
			if segmented > 0 {
				t.stats.txGSO.Add(uint64(segmented))
			}
			start += n
			if tx.wait {
				setDeadline() // progress: the stall bound starts again
			}
			continue
		}
		errno := tx.errno
		segmented := tx.first[start+1]-tx.first[start] > 1
		if tx.srcTrial && errno != unix.EAGAIN && errno != unix.ENOBUFS {
			// It fails without the source too: something else is at
			// fault. Put the source back and handle the error as usual.
			tx.srcTrial, tx.srcLen = false, tx.srcSaved
			m = tx.build(chunk, start, tx.first[start], gso, maxBytes)
		}
		switch {
		case tx.srcLen > 0 && !tx.srcTried && sourceRefused(errno):
			// The source address may be gone. Try once without it;
			// success (above) proves it and clears it for this Send.
			tx.srcTrial, tx.srcTried, tx.srcSaved, tx.srcLen = true, true, tx.srcLen, 0
			tx.srcErrno = errno
			m = tx.build(chunk, start, tx.first[start], gso, maxBytes)
		case errno == unix.EAGAIN || errno == unix.ENOBUFS:
			t.stats.txWaits.Add(1)
			tx.wait, waitErrno = true, errno
			setDeadline()
		case segmented && (errno == unix.EIO || errno == unix.EINVAL):
			// EIO: the egress device cannot checksum segments; EINVAL: the
			// kernel refuses this segmentation. Either way, stop using GSO
			// and resend these datagrams one by one.
			if t.gsoBroken.CompareAndSwap(false, true) {
				t.stats.gsoDisabled.Add(1)
				t.opts.logf("udp: segmented send failed (%v); UDP GSO is off from now on", errno)
			}
			gso = false
			m = tx.build(chunk, start, tx.first[start], gso, maxBytes)
		case segmented && errno == unix.EMSGSIZE:
			// Too big together (a path MTU below the segment size, say);
			// try the rest of this chunk one by one.
			gso = false
			m = tx.build(chunk, start, tx.first[start], gso, maxBytes)
		case errno == unix.EMSGSIZE:
			// Only this datagram is at fault.
			t.stats.dropSend(int(errno), 1)
			if err == nil {
				err = os.NewSyscallError("sendmmsg", errno)
			}
			start++
		default:
			// The destination or the socket is at fault: the rest of the
			// chunk would fail the same way.
			t.stats.dropSend(int(errno), len(chunk)-tx.first[start])
			if err == nil {
				err = os.NewSyscallError("sendmmsg", errno)
			}
			return false, err
		}
	}
	return false, err
}

// build lays out datagrams chunk[d:] as messages from hdrs[m] on, one per
// GSO run when gso is set and one per datagram otherwise, and returns the
// message count. The socket address must already be in tx.name, and the
// source's control message, if any, in tx.src[:tx.srcLen].
func (tx *sender) build(chunk [][]byte, m, d int, gso bool, maxBytes int) int {
	for d < len(chunk) {
		end := d + 1
		if gso {
			end = gsoRunEnd(chunk, d, maxBytes)
		}
		for i := d; i < end; i++ {
			setIovec(&tx.iovs[i], chunk[i])
		}
		h := &tx.hdrs[m]
		h.Len = 0
		h.Hdr.Name = &tx.name[0]
		h.Hdr.Namelen = tx.namelen
		h.Hdr.Iov = &tx.iovs[d]
		h.Hdr.SetIovlen(end - d)
		h.Hdr.Flags = 0
		oob := copy(tx.oob[m][:], tx.src[:tx.srcLen])
		if end-d > 1 {
			oob += putGSOSize(tx.oob[m][oob:], len(chunk[d]))
		}
		if oob > 0 {
			h.Hdr.Control = &tx.oob[m][0]
			h.Hdr.SetControllen(oob)
		} else {
			h.Hdr.Control = nil
			h.Hdr.SetControllen(0)
		}
		tx.first[m] = d
		m++
		d = end
	}
	tx.first[m] = len(chunk)
	return m
}

// sourceRefused reports whether errno from a send with a source address
// may mean the host no longer has that address: EINVAL (IPv6, and IPv4 on
// some kernels), ENETUNREACH (IPv4's route lookup), EADDRNOTAVAIL, and
// ENODEV (the interface of a link-local source is gone).
func sourceRefused(errno unix.Errno) bool {
	switch errno {
	case unix.EINVAL, unix.EADDRNOTAVAIL, unix.ENETUNREACH, unix.ENODEV:
		return true
	}
	return false
}

// release drops the pointers into the caller's buffers.
func (tx *sender) release(n int) {
	for i := range tx.iovs[:n] {
		tx.iovs[i] = unix.Iovec{}
	}
	tx.pending = nil
}

func setIovec(v *unix.Iovec, b []byte) {
	if len(b) == 0 {
		*v = unix.Iovec{}
		return
	}
	v.Base = &b[0]
	v.SetLen(len(b))
}
