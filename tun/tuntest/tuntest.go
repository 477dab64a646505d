// Package tuntest provides an in-memory tun.Device for unit tests.
package tuntest

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/ptun-vpn/ptun/tun"
)

// BatchSize is the most packets one ChannelTUN.Read returns.
const BatchSize = 128

// ChannelTUN is a tun.Device backed by channels. Tests send packets on
// Inbound for Read to return, and receive from Outbound a copy of every
// packet Written. Write blocks while nobody receives from Outbound
// (backpressure, as with a real device), until Close.
type ChannelTUN struct {
	// Inbound takes packets that Read will return, in order. The device
	// copies each one, so the sender may reuse it once Read returned it.
	// It is never closed.
	Inbound chan<- []byte
	// Outbound yields a fresh copy of every packet written, in order. It
	// is closed by Close.
	Outbound <-chan []byte

	in     chan []byte
	out    chan []byte
	done   chan struct{}
	once   sync.Once
	mu     sync.RWMutex // held for reading by Write while it sends on out; Close takes it to close out
	mtu    atomic.Int32
	closed bool // guarded by mu
}

var _ tun.Device = (*ChannelTUN)(nil)

// NewChannelTUN returns a ChannelTUN whose MTU reports mtu.
func NewChannelTUN(mtu int) *ChannelTUN {
	c := &ChannelTUN{
		in:   make(chan []byte, BatchSize),
		out:  make(chan []byte),
		done: make(chan struct{}),
	}
	c.mtu.Store(int32(mtu))
	c.Inbound, c.Outbound = c.in, c.out
	return c
}

// Read blocks for the first packet on Inbound, then takes whatever else is
// already queued there, up to BatchSize and len(bufs), without blocking.
// A packet longer than len(bufs[i])-offset is an error (the test sent more
// than the caller's buffer holds) and is dropped. After Close it returns
// os.ErrClosed.
func (c *ChannelTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	limit := min(len(bufs), len(sizes), BatchSize)
	if limit == 0 {
		return 0, nil
	}
	var p []byte
	select {
	case <-c.done:
		return 0, os.ErrClosed
	default:
	}
	select {
	case <-c.done:
		return 0, os.ErrClosed
	case p = <-c.in:
	}
	n := 0
	for {
		if len(p) > len(bufs[n])-offset {
			return n, fmt.Errorf("tuntest: packet of %d bytes does not fit the read buffer", len(p))
		}
		sizes[n] = copy(bufs[n][offset:], p)
		n++
		if n == limit {
			return n, nil
		}
		select {
		case p = <-c.in:
		default:
			return n, nil
		}
	}
}

// Write sends a copy of each bufs[i][offset:] on Outbound, blocking until
// it is received. After Close it returns os.ErrClosed with the count sent.
func (c *ChannelTUN) Write(bufs [][]byte, offset int) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0, os.ErrClosed
	}
	for i, b := range bufs {
		p := append([]byte(nil), b[offset:]...)
		select {
		case c.out <- p:
		case <-c.done:
			return i, os.ErrClosed
		}
	}
	return len(bufs), nil
}

// BatchSize implements tun.Device.
func (c *ChannelTUN) BatchSize() int { return BatchSize }

// MTU implements tun.Device.
func (c *ChannelTUN) MTU() (int, error) { return int(c.mtu.Load()), nil }

// SetMTU changes the MTU that MTU reports, as `ip link set … mtu` would.
func (c *ChannelTUN) SetMTU(mtu int) { c.mtu.Store(int32(mtu)) }

// Name implements tun.Device.
func (c *ChannelTUN) Name() string { return "tuntest" }

// Close unblocks Read and Write, which then return os.ErrClosed, and closes
// Outbound. It is safe to call more than once.
func (c *ChannelTUN) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.mu.Lock()
		c.closed = true
		close(c.out)
		c.mu.Unlock()
	})
	return nil
}
