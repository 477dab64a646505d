package openconnect

import (
	"net"
	"sync"
	"time"
)

// batchConn sits under a tls.Conn. While its writer is draining a queue
// it collects the TLS records written to it and sends them with one
// write, so that a burst of packets costs one syscall instead of one per
// packet while each frame still has its own record. Outside a batch it
// writes through (the handshake, and writes from other goroutines).
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
	err      error
}

// batchFlushAt is the size at which a batch is sent before it ends.
const batchFlushAt = 64 << 10

// writeTimeout bounds a write to a client that does not read.
const writeTimeout = 10 * time.Second

func newBatchConn(c net.Conn) *batchConn { return &batchConn{Conn: c} }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if !b.batching {
		if len(b.buf) > 0 {
			if err := b.flushLocked(); err != nil {
				return 0, err
			}
		}
		b.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		return b.Conn.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= batchFlushAt {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// end sends what the batch collected.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	return b.flushLocked()
}

func (b *batchConn) flushLocked() error {
	if len(b.buf) == 0 || b.err != nil {
		return b.err
	}
	b.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	if cap(b.buf) > 4*batchFlushAt {
		b.buf = nil
	}
	if err != nil {
		b.err = err
	}
	return err
}
