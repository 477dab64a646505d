package udp

import "github.com/ptun-vpn/ptun/transport"

// maxGSOSegments is the most datagrams the kernel accepts in one segmented
// (UDP_SEGMENT) send, and the most GRO puts in one received message.
const maxGSOSegments = 64

// The largest UDP payload one segmented send may carry: what the IP length
// field leaves after the IP (IPv4 only) and UDP headers.
const (
	maxGSOBytes4 = 65535 - 20 - 8
	maxGSOBytes6 = 65535 - 8
)

// gsoRunEnd returns the end (exclusive) of the run of datagrams, starting at
// bufs[start], that one segmented send carries: datagrams of the first one's
// size, possibly ended by one shorter datagram, at most maxGSOSegments of
// them and maxBytes in all. The kernel cuts the run's bytes back into the
// same datagrams at the first one's size. Empty datagrams never join a run
// (a zero-length tail would vanish in the cut), so a run of one is a plain
// send.
func gsoRunEnd(bufs [][]byte, start, maxBytes int) int {
	size := len(bufs[start])
	end := start + 1
	if size == 0 {
		return end
	}
	total := size
	for end < len(bufs) && end-start < maxGSOSegments {
		n := len(bufs[end])
		if n == 0 || n > size || total+n > maxBytes {
			break
		}
		total += n
		end++
		if n < size {
			break
		}
	}
	return end
}

// rxMsg is one received message before it is split: n bytes from ep (the
// sender, and the local address it arrived on) that
// GRO may have coalesced from datagrams of seg bytes each (the last may be
// shorter; seg 0 means one datagram). A dropped message yields nothing.
type rxMsg struct {
	n, seg int
	ep     transport.Endpoint
	drop   bool
}

// segments is how many datagrams m holds.
func (m rxMsg) segments() int {
	switch {
	case m.drop:
		return 0
	case m.seg <= 0 || m.n <= m.seg:
		return 1
	default:
		return (m.n + m.seg - 1) / m.seg
	}
}

// split spreads received messages over the caller's buffers, one datagram
// per buffer, and returns how many it filled. On entry msgs[j]'s bytes are
// bufs[j][:msgs[j].n]; len(bufs), len(sizes) and len(eps) are the room, and
// len(msgs) <= len(bufs). Datagrams that do not fit go, in order, to stash
// (which must be empty), to be handed out by the next calls.
//
// Dropped messages are squeezed out first (a rare copy), so that each
// message holds at least one datagram. Then it works from the last message
// back: message j's datagrams land at or after index j, in buffers whose
// messages have already moved, so no bytes are overwritten before they are
// copied. msgs is reordered in the process.
func split(bufs [][]byte, sizes []int, eps []transport.Endpoint, msgs []rxMsg, stash *pending) int {
	room := min(len(bufs), len(sizes), len(eps))
	kept := 0
	for j, m := range msgs {
		if m.drop {
			continue
		}
		if kept != j {
			copy(bufs[kept], bufs[j][:m.n])
			msgs[kept] = m
		}
		kept++
	}
	msgs = msgs[:kept]
	total, last, keep := 0, len(msgs), 0
	for j, m := range msgs {
		k := m.segments()
		if total+k > room {
			last, keep = j, room-total
			break
		}
		total += k
	}
	if last < len(msgs) {
		// Save what does not fit before any buffer is overwritten.
		m := msgs[last]
		stash.push(bufs[last][keep*m.seg:m.n], m.seg, m.ep)
		for j := last + 1; j < len(msgs); j++ {
			stash.push(bufs[j][:msgs[j].n], msgs[j].seg, msgs[j].ep)
		}
		total += keep
	}
	out := total
	for j := min(last, len(msgs)-1); j >= 0; j-- {
		m := msgs[j]
		k := m.segments()
		if j == last {
			k = keep
		}
		out -= k
		for s := k - 1; s >= 0; s-- {
			lo, hi := s*m.seg, m.n
			if m.seg > 0 {
				hi = min(lo+m.seg, m.n)
			}
			dst := out + s
			n := hi - lo
			if dst != j {
				n = copy(bufs[dst], bufs[j][lo:hi])
			}
			sizes[dst], eps[dst] = n, m.ep
		}
	}
	return total
}

// pending holds received datagrams that did not fit in the caller's
// buffers: whole or partial (GRO) messages, copied in arrival order. It
// belongs to one receiver and is guarded by the receiver's lock. Its buffer
// grows to the largest overflow seen and is then reused.
type pending struct {
	buf  []byte
	ents []pendingMsg
	head int // ents[head:] are still to be handed out
}

type pendingMsg struct {
	off, n, seg int // bytes buf[off:off+n], datagrams of seg bytes (0: one)
	ep          transport.Endpoint
}

func (p *pending) empty() bool { return p.head == len(p.ents) }

func (p *pending) push(b []byte, seg int, ep transport.Endpoint) {
	p.ents = append(p.ents, pendingMsg{off: len(p.buf), n: len(b), seg: seg, ep: ep})
	p.buf = append(p.buf, b...)
}

// drain hands out stashed datagrams in order, one per buffer, and returns
// how many.
func (p *pending) drain(bufs [][]byte, sizes []int, eps []transport.Endpoint) int {
	room := min(len(bufs), len(sizes), len(eps))
	out := 0
	for out < room && p.head < len(p.ents) {
		e := &p.ents[p.head]
		n := e.n
		if e.seg > 0 && n > e.seg {
			n = e.seg
		}
		sizes[out] = copy(bufs[out], p.buf[e.off:e.off+n])
		eps[out] = e.ep
		out++
		e.off += n
		e.n -= n
		if e.n == 0 {
			p.head++
		}
	}
	if p.empty() {
		p.buf, p.ents, p.head = p.buf[:0], p.ents[:0], 0
	}
	return out
}

// kernelAtLeast reports whether a Linux release string such as
// "6.1.0-18-amd64" is version major.minor or later. A release it cannot
// read counts as older.
func kernelAtLeast(release string, major, minor int) bool {
	maj, rest, ok := leadingInt(release)
	if !ok {
		return false
	}
	if maj != major {
		return maj > major
	}
	if len(rest) == 0 || rest[0] != '.' {
		return false
	}
	mnr, _, ok := leadingInt(rest[1:])
	return ok && mnr >= minor
}

// leadingInt parses the decimal digits at the start of s (at most 6).
func leadingInt(s string) (v int, rest string, ok bool) {
	i := 0
	for i < len(s) && i < 6 && s[i] >= '0' && s[i] <= '9' {
		v = v*10 + int(s[i]-'0')
		i++
	}
	return v, s[i:], i > 0
}
