//go:build !linux

package udp

import (
	"errors"

	"github.com/ptun-vpn/ptun/transport"
)

// errUnsupported is returned by Open on systems other than Linux.
var errUnsupported = errors.New("udp: batched UDP transport is only implemented for Linux")

// Transport is a placeholder off Linux: Open fails.
type Transport struct {
	opts  Options
	stats counters
}

var _ transport.Transport = (*Transport)(nil)

// New returns a Transport whose Open fails off Linux.
func New(opts Options) *Transport { return &Transport{opts: opts} }

// Open fails: the transport needs Linux.
func (t *Transport) Open(uint16) ([]transport.ReceiveFunc, uint16, error) {
	return nil, 0, errUnsupported
}

// Close does nothing.
func (t *Transport) Close() error { return nil }

// Send fails: the transport is never open.
func (t *Transport) Send(bufs [][]byte, _ transport.Endpoint) error {
	t.stats.dropSendClosed.Add(uint64(len(bufs)))
	return errUnsupported
}

// SetMark fails: the transport needs Linux.
func (t *Transport) SetMark(uint32) error { return errUnsupported }

// BatchSize implements transport.Transport.
func (t *Transport) BatchSize() int { return BatchSize }

// Offloads reports no offloads.
func (t *Transport) Offloads() (gso, gro bool) { return false, false }

// SetSocketBuffers does nothing off Linux.
func SetSocketBuffers(fd, size int, logf func(format string, args ...any)) {}
