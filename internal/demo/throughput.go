package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/ptun-vpn/ptun/internal/netns"
)

// writeSize is the size of each write the sender makes.
const writeSize = 128 << 10

// throughputGrace bounds how long the receiver waits, after the sender's
// time is up, for the data still in flight.
const throughputGrace = 15 * time.Second

// TCPThroughput measures one TCP bulk transfer: a sender in from connects
// to dst (a listener the call opens in to, on an ephemeral port), writes
// 128 KiB buffers for d, and closes; a receiver in to counts the bytes. It
// returns the received bits divided by the time from the first write to the
// receiver's end of stream. Sender and receiver run in this process.
func TCPThroughput(from, to *netns.NS, dst netip.Addr, d time.Duration) (bitsPerSec float64, err error) {
	return tcpThroughput(context.Background(), from, to, dst, d)
}

func tcpThroughput(ctx context.Context, from, to *netns.NS, dst netip.Addr, d time.Duration) (float64, error) {
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst.Unmap(), 0).String())
		return err
	}); err != nil {
		return 0, fmt.Errorf("tcp listen on %v: %w", dst, err)
	}
	defer ln.Close()

	type result struct {
		bytes int64
		end   time.Time
		err   error
	}
	rxc := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			rxc <- result{err: err}
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		c.SetReadDeadline(time.Now().Add(d + throughputGrace))
		buf := make([]byte, writeSize)
		var n int64
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err == io.EOF {
				rxc <- result{bytes: n, end: time.Now()}
				return
			}
			if err != nil {
				rxc <- result{bytes: n, err: err}
				return
			}
		}
	}()

	var c net.Conn
	if err := from.Do(func() (err error) {
		dialer := net.Dialer{Timeout: 5 * time.Second}
		c, err = dialer.DialContext(ctx, "tcp", ln.Addr().String())
		return err
	}); err != nil {
		ln.Close()
		<-rxc
		return 0, fmt.Errorf("tcp connect to %v: %w", dst, err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, writeSize)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	c.SetWriteDeadline(start.Add(d))
	var werr error
	for {
		if _, err := c.Write(buf); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				werr = err
			}
			break
		}
	}
	// Close sends what is still buffered, then FIN: the receiver counts
	// everything the sender wrote.
	c.Close()
	r := <-rxc
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	if werr != nil {
		return 0, fmt.Errorf("tcp send to %v: %w", dst, werr)
	}
	if r.err != nil {
		return 0, fmt.Errorf("tcp receive on %v: %w", dst, r.err)
	}
	elapsed := r.end.Sub(start)
	if elapsed <= 0 || r.bytes == 0 {
		return 0, fmt.Errorf("tcp to %v: no data received", dst)
	}
	return float64(r.bytes) * 8 / elapsed.Seconds(), nil
}
