package front

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/transport/udp"
)

// This file is everything the privileged front does for an engine, which
// may be hostile (it parses the network's input): audit it alone. An
// engine may ask for
//
//   - socket: one UDP socket of a family, on the listen port the UAPI
//     configured (or is configuring), with the fwmark and buffer sizes the
//     front chooses; at most socketBudget per engine and per listen-port
//     change;
//   - setmark: the configured (or pending) fwmark on a UDP socket it hands
//     over;
//   - mtu: the interface's MTU;
//   - log: one line for the front's log, escaped, cut to maxLogLine and
//     rate limited.
//
// Every descriptor that comes with a request is closed once it is answered
// (package ctl), requests in flight are bounded (ctl.MaxInFlight) and so is
// their size (maxEngineRequest). Nothing an engine says changes what the
// front replays into the next engine but a roamed endpoint of a known peer
// (see config.go).

const (
	// maxEngineRequest bounds the JSON of one request or notice from an
	// engine; its replies (a get answer with thousands of peers) may be
	// larger.
	maxEngineRequest = 64 << 10
	// socketBudget is how many sockets an engine may be given per listen
	// port: one per family, and retries for Open(0) when a random port is
	// free in one family but not the other.
	socketBudget = 8
	// maxLogLine bounds one engine log line, after escaping.
	maxLogLine = 1024
	// logRate and logBurst limit engine log lines (ctl notices and stderr
	// together): the burst covers a panic's stack trace.
	logRate  = 20 // per second
	logBurst = 400
)

// handleEngine answers an engine's requests.
func (s *supervisor) handleEngine(ep *engineProc, req *ctl.Msg) *ctl.Msg {
	switch req.Op {
	case ctl.OpLog:
		s.engineLog(ep, req.Text)
		return nil
	case ctl.OpMTU:
		mtu, err := s.dev.MTU()
		if err != nil {
			return ctl.Fail(err)
		}
		return &ctl.Msg{Body: ctl.Body(mtu)}
	case ctl.OpSocket:
		var r ctl.SocketRequest
		if err := ctl.Decode(req.Body, &r); err != nil || len(req.Files) != 0 {
			return s.refuse(fmt.Errorf("front: malformed socket request: %w", syscall.EINVAL))
		}
		port, mark, err := s.grantSocket(ep, r)
		if err != nil {
			return s.refuse(err)
		}
		fd, err := udp.OpenSocket(r.V6, port, mark, udp.DefaultSocketBuffer, s.cfg.Verbosef)
		if err != nil {
			return ctl.Fail(err)
		}
		s.socketsGranted.Add(1)
		if r.Port == 0 {
			s.noteBoundPort(fd)
		}
		return &ctl.Msg{Files: []*os.File{os.NewFile(uintptr(fd), "udp")}}
	case ctl.OpSetMark:
		var mark uint32
		if err := ctl.Decode(req.Body, &mark); err != nil || len(req.Files) != 1 {
			return s.refuse(fmt.Errorf("front: malformed setmark request: %w", syscall.EINVAL))
		}
		if err := s.allowedMark(mark); err != nil {
			return s.refuse(err)
		}
		if err := setMark(req.Files[0], mark); err != nil {
			return ctl.Fail(err)
		}
		return nil
	}
	return s.refuse(fmt.Errorf("front: unknown request %q: %w", req.Op, syscall.EOPNOTSUPP))
}

func (s *supervisor) refuse(err error) *ctl.Msg {
	s.grantsRefused.Add(1)
	return ctl.Fail(err)
}

// grantSocket checks a socket request against the configuration and the
// engine's budget, and returns the port and fwmark to open it with.
func (s *supervisor) grantSocket(ep *engineProc, r ctl.SocketRequest) (port uint16, mark uint32, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ok := r.Port == s.port || r.Port == s.pendingPort ||
		(r.Port != 0 && r.Port == s.boundPort && (s.port == 0 || s.pendingPort == 0))
	if !ok {
		return 0, 0, fmt.Errorf("front: the engine asked for port %d, which is not the configured listen port: %w", r.Port, syscall.EPERM)
	}
	if ep.sockets >= ep.budget {
		return 0, 0, fmt.Errorf("front: the engine asked for more than %d sockets for its listen port: %w", socketBudget, syscall.EPERM)
	}
	ep.sockets++
	// The mark in force while a set request is changing it: the pending
	// one (the engine opens sockets for that request).
	return r.Port, s.pendingMark, nil
}

// noteBoundPort records the port a socket opened on "any port" got, so the
// same port is allowed for the other family and replayed after a restart.
func (s *supervisor) noteBoundPort(fd int) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return
	}
	var port int
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		port = a.Port
	case *unix.SockaddrInet6:
		port = a.Port
	}
	s.mu.Lock()
	s.boundPort = uint16(port)
	s.mu.Unlock()
}

// allowedMark checks a setmark request: only the configured fwmark or the
// one a set request in progress sets (or none).
func (s *supervisor) allowedMark(mark uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if mark != 0 && mark != s.mark && mark != s.pendingMark {
		return fmt.Errorf("front: the engine asked for fwmark %#x, which is not the configured one: %w", mark, syscall.EPERM)
	}
	return nil
}

// setMark sets SO_MARK on f after checking that it is a UDP socket.
func setMark(f *os.File, mark uint32) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = sc.Control(func(fd uintptr) {
		typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil || typ != unix.SOCK_DGRAM {
			serr = fmt.Errorf("front: setmark on something that is not a datagram socket: %w", syscall.EINVAL)
			return
		}
		proto, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil || proto != unix.IPPROTO_UDP {
			serr = fmt.Errorf("front: setmark on a socket that is not UDP: %w", syscall.EINVAL)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	})
	if err != nil {
		return err
	}
	return serr
}

// engineLog writes one line an engine sent (a log notice or a line of its
// stderr) to the front's log: escaped, cut, rate limited and always
// prefixed with the engine's pid, so it cannot pass for a line of the
// front's or reach a terminal as an escape sequence.
func (s *supervisor) engineLog(ep *engineProc, text string) {
	if !s.logLimit.allow(time.Now()) {
		s.logDropped.Add(1)
		return
	}
	if n := s.logDropped.Swap(0); n > 0 {
		s.logDroppedTotal.Add(n)
		s.cfg.Logf("front: %d engine log lines dropped (over %d per second)", n, logRate)
	}
	s.cfg.Logf("engine %d: %s", ep.pid(), escapeLine(text, maxLogLine))
}

// escapeLine returns s with every control character, invalid UTF-8 byte
// and Unicode format character (bidi overrides) escaped as \xNN, \n, \t or
// \u{NNNN}, cut to about max bytes.
func escapeLine(s string, max int) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		if b.Len() >= max {
			b.WriteString("…(cut)")
			break
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			b.WriteString(`\u{` + strconv.FormatInt(int64(r), 16) + `}`)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// tokenBucket is a rate limiter: rate tokens a second, at most burst.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate, burst float64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst}
}

func (tb *tokenBucket) allow(now time.Time) bool {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if !tb.last.IsZero() {
		tb.tokens = min(tb.burst, tb.tokens+now.Sub(tb.last).Seconds()*tb.rate)
	}
	tb.last = now
	if tb.tokens < 1 {
		return false
	}
	tb.tokens--
	return true
}

// EscapeLine makes a line from an engine safe to log (as escapeLine does,
// cut at the front's longest log line): for the other engines' fronts.
func EscapeLine(s string) string { return escapeLine(s, maxLogLine) }
