package udp

import (
	"math"
	"time"
)

// Active queue management of the receive queue.
//
// When ptun's receiving side is slower than the traffic offered (it is
// CPU-bound), datagrams wait in the socket's receive buffer, which is large
// so that bursts are not dropped. Without management a bulk TCP flow would
// keep that buffer full, and every packet through the tunnel, a ping or a
// keystroke, would wait behind it: bufferbloat. The receiver therefore runs
// CoDel (RFC 8289) on the time datagrams spent in the queue, measured from
// the kernel's receive timestamp: while that time stays above Target for
// longer than Interval, it drops bulk datagrams at a rate that rises until
// the senders slow down. Small datagrams (handshakes, keepalives, TCP ACKs,
// pings: at most aqmMinSize bytes) are never dropped. Every drop is counted
// as drop_udp_aqm.

// Defaults of the CoDel parameters: a tunnel endpoint sits close to its
// traffic's bottleneck, so it can keep the standing queue well under the
// Internet default of 5 ms.
const (
	DefaultAQMTarget   = time.Millisecond
	DefaultAQMInterval = 10 * time.Millisecond
)

// aqmMinSize is the size above which a datagram may be dropped: bigger
// than any handshake message (148 bytes) and than a data message holding a
// TCP ACK or a ping.
const aqmMinSize = 256

// codel is the CoDel state of one receive queue. It is used by one
// receiver, under its lock.
type codel struct {
	target, interval int64 // nanoseconds

	firstAbove int64  // when the sojourn time may count as persistently high; 0: it is not high
	dropNext   int64  // when the next drop is due, while dropping
	count      uint32 // drops since dropping began
	lastCount  uint32
	dropping   bool
}

func newCodel(target, interval time.Duration) *codel {
	return &codel{target: int64(target), interval: int64(interval)}
}

// dequeue is called for each batch read from the queue, with the time now,
// how long the batch's first datagram waited (both in nanoseconds), and
// whether the read emptied the queue. It returns how many datagrams of the
// batch to drop (0 when the queue is fine), following RFC 8289's dequeue
// logic with a batch as the unit of dequeue. A queue that was emptied is
// not standing, however long its head waited (the reader was late, not
// slow), so it resets the state as RFC 8289 does for a near-empty queue.
func (c *codel) dequeue(now, sojourn int64, emptied bool) int {
	okToDrop := false
	switch {
	case sojourn < c.target || emptied:
		c.firstAbove = 0
	case c.firstAbove == 0:
		c.firstAbove = now + c.interval
	case now >= c.firstAbove:
		okToDrop = true
	}
	if c.dropping {
		if !okToDrop {
			c.dropping = false
			return 0
		}
		drops := 0
		for now >= c.dropNext && drops < BatchSize {
			drops++
			c.count++
			c.dropNext = c.controlLaw(c.dropNext)
		}
		return drops
	}
	if !okToDrop {
		return 0
	}
	c.dropping = true
	// Resume near the drop rate that last controlled the queue if it was
	// recent.
	delta := c.count - c.lastCount
	c.count = 1
	if delta > 1 && now-c.dropNext < 16*c.interval {
		c.count = delta
	}
	c.dropNext = c.controlLaw(now)
	c.lastCount = c.count
	return 1
}

// controlLaw is when the next drop is due after one at t: interval /
// sqrt(count) later.
func (c *codel) controlLaw(t int64) int64 {
	return t + int64(float64(c.interval)/math.Sqrt(float64(c.count)))
}

// dropTail removes up to n bulk datagrams from msgs: from each message,
// earliest first, the last datagram if it is bigger than aqmMinSize (a
// message of one datagram is then dropped whole). It returns how many it
// removed.
func dropTail(msgs []rxMsg, n int) int {
	dropped := 0
	for j := range msgs {
		if dropped == n {
			break
		}
		m := &msgs[j]
		k := m.segments()
		if k == 0 {
			continue
		}
		last := m.n
		if k > 1 {
			last = m.n - (k-1)*m.seg
		}
		if last <= aqmMinSize {
			continue
		}
		if k == 1 {
			m.drop = true
		} else {
			m.n -= last
		}
		dropped++
	}
	return dropped
}
