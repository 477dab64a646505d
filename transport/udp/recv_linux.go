package udp

import (
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/transport"
)

// receiver is one socket's ReceiveFunc with its pre-allocated recvmmsg
// state. mu guards everything below it; a ReceiveFunc is meant for one
// goroutine, the lock only makes misuse safe.
type receiver struct {
	s  *socket
	mu sync.Mutex

	hdrs  [BatchSize]unix.Mmsghdr
	iovs  [BatchSize]unix.Iovec
	names [BatchSize][sockaddrSize]byte
	oob   [BatchSize][oobSize]byte
	msgs  [BatchSize]rxMsg
	stash pending // datagrams of the last read that did not fit
	aqm   *codel  // nil without receive timestamps

	// vlen is how many messages the next read asks for. With GRO one
	// message may hold up to 64 datagrams, so it follows the recent
	// datagrams-per-message ratio to keep the overflow (stash) small.
	vlen int

	// The argument and results of read, made once so that RawConn.Read
	// needs no new closure per call.
	batch []unix.Mmsghdr
	n     int
	errno unix.Errno
	read  func(fd uintptr) bool
}

func newReceiver(s *socket) *receiver {
	r := &receiver{s: s, vlen: BatchSize}
	r.stash.ents = make([]pendingMsg, 0, BatchSize)
	if s.stamp {
		r.aqm = newCodel(s.t.opts.aqm())
	}
	for i := range r.hdrs {
		h := &r.hdrs[i].Hdr
		h.Name = &r.names[i][0]
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		if s.gro || s.stamp || s.sticky {
			h.Control = &r.oob[i][0]
		}
	}
	r.read = func(fd uintptr) bool {
		r.n, r.errno = recvmmsg(fd, r.batch)
		return r.errno != unix.EAGAIN
	}
	return r
}

// receive is the socket's transport.ReceiveFunc. It blocks in Go's poller
// until at least one datagram is there, reads up to a batch with one
// recvmmsg and splits GRO messages back into datagrams, one per buffer.
// Datagrams that do not fit are kept, in order, for the next call, which
// then makes no syscall. With sticky sources each endpoint carries the
// local address and interface the datagram arrived on. After Close it
// returns net.ErrClosed.
func (r *receiver) receive(bufs [][]byte, sizes []int, eps []transport.Endpoint) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := &r.s.t.stats
	if r.s.closed.Load() {
		return 0, net.ErrClosed
	}
	room := min(len(bufs), len(sizes), len(eps), BatchSize)
	if room == 0 {
		return 0, io.ErrShortBuffer
	}
	bufs, sizes, eps = bufs[:room], sizes[:room], eps[:room]
	if !r.stash.empty() {
		n := r.stash.drain(bufs, sizes, eps)
		st.rxDatagrams.Add(uint64(n))
		return n, nil
	}
	gro, sticky := r.s.gro, r.s.sticky
	cmsgs := gro || sticky || r.s.stamp
	for {
		vlen := room
		if gro {
			vlen = min(room, r.vlen)
		}
		for i, b := range bufs[:vlen] {
			setIovec(&r.iovs[i], b)
			h := &r.hdrs[i]
			h.Len = 0
			h.Hdr.Namelen = sockaddrSize
			h.Hdr.Flags = 0
			if cmsgs {
				h.Hdr.SetControllen(oobSize)
			}
		}
		r.batch = r.hdrs[:vlen]
		if err := r.s.rc.Read(r.read); err != nil {
			return 0, closedErr(r.s, err)
		}
		if r.errno != 0 {
			return 0, closedErr(r.s, os.NewSyscallError("recvmmsg", r.errno))
		}
		st.rxSyscalls.Add(1)
		m, segs, coalesced := r.n, 0, 0
		for j := range m {
			h := &r.hdrs[j]
			msg := rxMsg{n: int(h.Len)}
			msg.ep.Remote, _ = parseSockaddr(r.names[j][:min(int(h.Hdr.Namelen), sockaddrSize)])
			oob := r.oob[j][:min(int(h.Hdr.Controllen), oobSize)]
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
				msg.drop = true
				st.dropRecvTruncated.Add(1)
			} else if gro {
				msg.seg = groSize(oob)
			}
			if sticky {
				msg.ep.Local, msg.ep.IfIndex = pktinfo(oob, r.s.v6)
			}
			k := msg.segments()
			if k > 1 {
				coalesced++
			}
			segs += k
			r.msgs[j] = msg
		}
		if coalesced > 0 {
			st.rxGRO.Add(uint64(coalesced))
		}
		if r.aqm != nil && m > 0 {
			if stamp, ok := rxTimestamp(r.oob[0][:min(int(r.hdrs[0].Hdr.Controllen), oobSize)]); ok {
				now := time.Now().UnixNano()
				if drops := r.aqm.dequeue(now, max(0, now-stamp), m < vlen); drops > 0 {
					st.dropAQM.Add(uint64(dropTail(r.msgs[:m], drops)))
				}
			}
		}
		n := split(bufs, sizes, eps, r.msgs[:m], &r.stash)
		if gro && segs > 0 {
			r.vlen = max(1, min(room, room*m/segs))
		}
		if n > 0 {
			st.rxDatagrams.Add(uint64(n))
			return n, nil
		}
		// Only truncated datagrams: read again.
	}
}
