package uapi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/wgcfg"
)

// Serve accepts connections on ln and answers their requests with h until ln
// is closed; it then closes the connections still open, waits for their
// goroutines and returns nil. Any other accept failure that persists is
// returned the same way.
//
// Each connection carries any number of requests, one after the other:
// get=1, set=1 and ptun's stats=1. A malformed request is answered with an
// errno and the connection goes on with the next one; only a request that
// breaks the framing (over MaxRequestSize, or cut short) closes it. Calls to
// h are serialised: h sees one request at a time across all connections.
// logf (nil for none) receives one line per failed request.
func Serve(ln net.Listener, h Handler, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	s := &server{h: h, logf: logf, conns: map[net.Conn]struct{}{}}
	defer s.closeAll()

	backoff := time.Duration(0)
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Running out of file descriptors and the like pass; retry
			// with a growing pause, and give up only on a closed listener
			// or an error that is not temporary.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				logf("uapi: accept: %v; retrying in %v", err, backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("uapi: accept: %w", err)
		}
		backoff = 0
		ok, full := s.track(c)
		if full {
			logf("uapi: %d connections open already: refusing another", MaxConns)
			c.Close()
			continue
		}
		if !ok {
			c.Close()
			return nil
		}
		go s.serveConn(c)
	}
}

func isTemporaryAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

type server struct {
	h    Handler
	logf func(format string, args ...any)

	handlerMu sync.Mutex // serialises calls to h

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // guarded by mu; open connections
	closed bool                  // guarded by mu; set by closeAll
	wg     sync.WaitGroup        // one per connection goroutine
}

// MaxConns bounds the connections served at once; IdleTimeout is how long
// a connection may wait between requests, and WriteTimeout how long an
// answer may take to be read. Only root can connect, but a stuck client
// must not pin the server's goroutines and descriptors.
const (
	MaxConns     = 64
	IdleTimeout  = time.Minute
	WriteTimeout = 10 * time.Second
)

// track records c; full says MaxConns are open, !ok that the server closed.
func (s *server) track(c net.Conn) (ok, full bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, false
	}
	if len(s.conns) >= MaxConns {
		return false, true
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true, false
}

func (s *server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
	s.wg.Done()
}

func (s *server) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *server) serveConn(c net.Conn) {
	defer s.untrack(c)
	r := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(IdleTimeout))
		out, keep := s.request(r)
		if len(out) > 0 {
			c.SetWriteDeadline(time.Now().Add(WriteTimeout))
			if _, err := c.Write(out); err != nil {
				return
			}
		}
		if !keep {
			return
		}
	}
}

// request reads and serves one request. It returns the answer to write and
// whether the connection can carry another request.
func (s *server) request(r *bufio.Reader) (answer []byte, keep bool) {
	lr := newLineReader(r, requestLimit)
	op, err := lr.next()
	switch {
	case errors.Is(err, io.EOF):
		return nil, false // the client is done
	case errors.Is(err, errLineTooLong):
		return s.reject(lr, "request line", syscall.EINVAL, true, errLineTooLong)
	case err != nil:
		return s.failed("request line", readError(err))
	}
	switch string(op) {
	case "get=1":
		if err := s.expectEnd(lr); err != nil {
			return s.reject(lr, "get", syscall.EINVAL, false, err)
		}
		s.handlerMu.Lock()
		st, err := s.h.Get()
		s.handlerMu.Unlock()
		if err == nil && st == nil {
			err = errors.New("handler returned no state")
		}
		if err != nil {
			s.logf("uapi: get: %v", err)
			return appendErrno(nil, wgcfg.Errno(err, syscall.EIO), false), true
		}
		b, err := appendGet(make([]byte, 0, getSize(st)), st)
		if err != nil {
			s.logf("uapi: get: %v", err)
			return appendErrno(nil, wgcfg.Errno(err, syscall.EIO), false), true
		}
		return appendErrno(b, 0, false), true

	case "set=1":
		cfg, err := ParseSet(r)
		if err != nil {
			return s.failed("set", err)
		}
		s.handlerMu.Lock()
		err = s.h.Set(cfg)
		s.handlerMu.Unlock()
		if err != nil {
			s.logf("uapi: set: %v", err)
			return appendErrno(nil, wgcfg.Errno(err, syscall.EIO), true), true
		}
		return appendErrno(nil, 0, true), true

	case "stats=1":
		if err := s.expectEnd(lr); err != nil {
			return s.reject(lr, "stats", syscall.EINVAL, false, err)
		}
		sh, ok := s.h.(StatsHandler)
		if !ok {
			return appendErrno(nil, syscall.EOPNOTSUPP, false), true
		}
		s.handlerMu.Lock()
		counters := sh.Stats()
		s.handlerMu.Unlock()
		b, skipped := appendStats(nil, counters)
		if len(skipped) > 0 {
			s.logf("uapi: stats: skipped counters with unusable names %q", skipped)
		}
		return appendErrno(b, 0, false), true
	}
	if len(op) == 0 {
		// A lone blank line: an empty request.
		s.logf("uapi: empty request")
		return appendErrno(nil, syscall.EINVAL, true), true
	}
	return s.reject(lr, "request", syscall.EINVAL, true, fmt.Errorf("unknown operation %s", quote(op)))
}

// expectEnd reads the blank line that must follow get=1 or stats=1.
func (s *server) expectEnd(lr *lineReader) error {
	line, err := lr.next()
	if err != nil {
		return err
	}
	if len(line) != 0 {
		return fmt.Errorf("unexpected line %s", quote(line))
	}
	return nil
}

// reject answers a malformed request after reading the rest of it. negative
// picks the errno sign (see appendErrno).
func (s *server) reject(lr *lineReader, what string, errno syscall.Errno, negative bool, err error) ([]byte, bool) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrTooLarge) {
		return s.failed(what, readError(err))
	}
	if serr := lr.skipToEnd(); serr != nil {
		return s.failed(what, readError(serr))
	}
	s.logf("uapi: %s: %v", what, err)
	return appendErrno(nil, errno, negative), true
}

// failed answers a request whose reading failed (ParseSet's errors
// included). The connection closes after the answer if the framing is lost;
// there is no answer if the client has gone.
func (s *server) failed(what string, err error) ([]byte, bool) {
	s.logf("uapi: %s: %v", what, err)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, false
	}
	keep := !errors.Is(err, ErrTooLarge) && wgcfg.Errno(err, syscall.EIO) != syscall.EIO
	return appendErrno(nil, wgcfg.Errno(err, syscall.EIO), true), keep
}
