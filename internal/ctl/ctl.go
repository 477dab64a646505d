// Package ctl is the control channel between ptun's front and its engine:
// requests and replies as length-prefixed JSON frames on a unix stream
// socket, with file descriptors passed alongside (SCM_RIGHTS).
//
// Packets never cross it: it carries the engine's setup (and the fds of
// its packet flow), UAPI requests, requests for privileged sockets, and
// MTU queries: a few messages per second at most.
//
// Either side may be hostile to the other (the engine parses untrusted
// network input): a malformed frame, one over MaxFrame, or one with more
// than MaxFiles descriptors ends the connection; nothing in a frame is
// trusted beyond its JSON types.
package ctl

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/ipc"
)

// MaxFrame bounds one frame's JSON, enough for a UAPI answer with
// thousands of peers.
const MaxFrame = 16 << 20

// MaxFiles bounds the descriptors one frame may carry.
const MaxFiles = 8

// MaxInFlight bounds the requests (and notices) of the other side that a
// Conn handles at once. Past it a request is answered EAGAIN and a notice
// dropped (both counted in Refused), so a flooding peer cannot grow the
// receiver's goroutines or memory.
const MaxInFlight = 16

// writeTimeout bounds one frame write: a peer that stops reading is taken
// for a dead one (the connection ends) instead of blocking its writers.
const writeTimeout = 5 * time.Second

// ErrClosed is returned by Call once the connection is closed or broken:
// the other side is gone.
var ErrClosed = errors.New("ctl: connection closed")

// Msg is one frame: a request (Reply false) or the reply to request ID.
type Msg struct {
	Op    string          `json:"op"`
	ID    uint64          `json:"id,omitempty"`
	Reply bool            `json:"reply,omitempty"`
	Errno int             `json:"errno,omitempty"` // a failed request's errno (0: none)
	Err   string          `json:"err,omitempty"`   // a failed request's message
	Text  string          `json:"text,omitempty"`  // UAPI text, log line
	Body  json.RawMessage `json:"body,omitempty"`  // op-specific JSON
	// Files travel with the frame as SCM_RIGHTS. Received files belong
	// to the receiver (close-on-exec).
	Files []*os.File `json:"-"`

	size int // bytes of JSON, for a received frame
}

// Error returns the failure a reply carries, nil for success. An errno is
// kept in the chain so errors.Is(err, syscall.EADDRINUSE) works.
func (m *Msg) Error() error {
	if m.Errno == 0 && m.Err == "" {
		return nil
	}
	if m.Errno != 0 {
		return &RemoteError{Errno: syscall.Errno(m.Errno), Msg: m.Err}
	}
	return errors.New(m.Err)
}

// RemoteError is a failure the other side reported with an errno.
type RemoteError struct {
	Errno syscall.Errno
	Msg   string
}

func (e *RemoteError) Error() string {
	if e.Msg == "" {
		return e.Errno.Error()
	}
	return e.Msg
}

// Unwrap returns the errno.
func (e *RemoteError) Unwrap() error { return e.Errno }

// Fail returns a reply to req carrying err (and its errno if it has one).
func Fail(err error) *Msg {
	m := &Msg{Err: err.Error()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		m.Errno = int(errno)
	}
	return m
}

// Handler answers one request. It runs on its own goroutine, at most
// MaxInFlight at once; the reply's Op, ID and Reply are filled in by Conn. A
// nil reply means success with nothing to say.
//
// The request's Files are closed once the handler returns, unless it takes
// them by setting req.Files to nil (it then owns every one). So no
// descriptor a hostile peer attaches to a request outlives the request.
type Handler func(req *Msg) *Msg

// Conn is one end of a control channel. Call may be used by any number of
// goroutines.
type Conn struct {
	c       *net.UnixConn
	handler Handler

	wmu sync.Mutex // serializes frame writes

	inflight   chan struct{} // one token per request being handled
	refused    atomic.Uint64
	maxRequest int // 0: MaxFrame

	mu      sync.Mutex // guards the fields below
	nextID  uint64
	pending map[uint64]chan *Msg
	closed  bool
	err     error // why the connection ended
	done    chan struct{}
}

// New returns a Conn over c; handler answers the other side's requests
// (nil answers every request with EOPNOTSUPP). Run must be called to read.
func New(c *net.UnixConn, handler Handler) *Conn {
	return &Conn{c: c, handler: handler, pending: map[uint64]chan *Msg{}, done: make(chan struct{}),
		inflight: make(chan struct{}, MaxInFlight)}
}

// FromFile returns a Conn over the unix stream socket f (which it takes).
func FromFile(f *os.File, handler Handler) (*Conn, error) {
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("ctl: %w", err)
	}
	uc, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return nil, fmt.Errorf("ctl: fd is a %T, not a unix socket", fc)
	}
	return New(uc, handler), nil
}

// Pair returns the two ends of a new channel as files, for one end to be
// handed to a child process.
func Pair() (a, b *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("ctl: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "ctl"), os.NewFile(uintptr(fds[1]), "ctl"), nil
}

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err says why the connection ended (io.EOF: the other side closed it).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection; pending Calls return ErrClosed.
func (c *Conn) Close() error {
	c.shut(ErrClosed)
	return nil
}

func (c *Conn) shut(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.err = err
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	c.c.Close()
	for _, ch := range pending {
		close(ch)
	}
	close(c.done)
}

// Run reads frames until the connection ends and returns why (io.EOF when
// the other side closed it). Replies go to their Calls; requests go to the
// handler, each on its own goroutine, at most MaxInFlight at once.
func (c *Conn) Run() error {
	for {
		m, err := c.read()
		if err != nil {
			c.shut(err)
			return err
		}
		if !m.Reply && c.maxRequest > 0 && m.size > c.maxRequest {
			ipc.CloseFiles(m.Files)
			err := fmt.Errorf("ctl: %q request of %d bytes is over this side's limit of %d", m.Op, m.size, c.maxRequest)
			c.shut(err)
			return err
		}
		if m.Reply {
			c.mu.Lock()
			ch := c.pending[m.ID]
			delete(c.pending, m.ID)
			c.mu.Unlock()
			if ch == nil {
				ipc.CloseFiles(m.Files)
				continue
			}
			ch <- m
			continue
		}
		select {
		case c.inflight <- struct{}{}:
			go c.serve(m)
			continue
		default:
		}
		// Too many at once: refuse at once rather than stop reading, since
		// the replies that would free a slot arrive on this same stream.
		ipc.CloseFiles(m.Files)
		c.refused.Add(1)
		if m.ID != 0 {
			rep := Fail(fmt.Errorf("ctl: %q: %d requests in flight already: %w", m.Op, MaxInFlight, syscall.EAGAIN))
			rep.Op, rep.ID, rep.Reply = m.Op, m.ID, true
			if err := c.write(rep); err != nil {
				c.shut(err)
				return err
			}
		}
	}
}

// LimitRequests bounds the size of the other side's requests and notices
// (not of its replies) to n bytes of JSON; a larger one ends the connection.
// Call it before Run. The front uses it so that MaxInFlight requests of an
// engine hold little memory.
func (c *Conn) LimitRequests(n int) { c.maxRequest = n }

// Refused counts the requests and notices refused (EAGAIN) or dropped
// because MaxInFlight were being handled.
func (c *Conn) Refused() uint64 { return c.refused.Load() }

func (c *Conn) serve(req *Msg) {
	defer func() { <-c.inflight }()
	// Whatever the handler did not take is closed, also when it panics.
	defer func() { ipc.CloseFiles(req.Files) }()
	if req.ID == 0 {
		// A notice (Send): handled, never answered.
		if c.handler != nil {
			c.handler(req)
		}
		return
	}
	var rep *Msg
	if c.handler == nil {
		rep = Fail(fmt.Errorf("ctl: %q: %w", req.Op, syscall.EOPNOTSUPP))
	} else {
		rep = c.handler(req)
	}
	if rep == nil {
		rep = &Msg{}
	}
	rep.Op, rep.ID, rep.Reply = req.Op, req.ID, true
	if err := c.write(rep); err != nil {
		c.shut(err)
	}
	ipc.CloseFiles(rep.Files)
}

// Call sends req and waits for its reply, or until ctx ends or the
// connection does. The request's files are sent, not closed. A reply that
// reports a failure is returned with that failure as the error.
func (c *Conn) Call(ctx context.Context, req *Msg) (*Msg, error) {
	ch := make(chan *Msg, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	out := *req
	out.ID, out.Reply = id, false
	if err := c.write(&out); err != nil {
		c.shut(err)
		return nil, ErrClosed
	}
	select {
	case rep, ok := <-ch:
		if !ok {
			return nil, ErrClosed
		}
		return rep, rep.Error()
	case <-ctx.Done():
		c.mu.Lock()
		if c.pending != nil {
			delete(c.pending, id)
		}
		c.mu.Unlock()
		select {
		case rep, ok := <-ch: // it came as we gave up: nobody will use it
			if ok {
				ipc.CloseFiles(rep.Files)
			}
		default:
		}
		return nil, ctx.Err()
	}
}

// Send sends a notice: a request that gets no reply.
func (c *Conn) Send(m *Msg) error {
	out := *m
	out.ID, out.Reply = 0, false
	if err := c.write(&out); err != nil {
		c.shut(err)
		return ErrClosed
	}
	return nil
}

func (c *Conn) write(m *Msg) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(body) > MaxFrame {
		return fmt.Errorf("ctl: %s frame of %d bytes is over %d", m.Op, len(body), MaxFrame)
	}
	if len(m.Files) > MaxFiles {
		return fmt.Errorf("ctl: %s frame with %d files is over %d", m.Op, len(m.Files), MaxFiles)
	}
	frame := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	copy(frame[4:], body)
	var oob []byte
	if len(m.Files) > 0 {
		fds := make([]int, len(m.Files))
		for i, f := range m.Files {
			fds[i] = int(f.Fd())
		}
		oob = syscall.UnixRights(fds...)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	n, _, err := c.c.WriteMsgUnix(frame, oob, nil)
	if err == nil && n < len(frame) {
		_, err = c.c.Write(frame[n:])
	}
	return err
}

// read reads one frame. The descriptors come with the frame's first bytes.
func (c *Conn) read() (*Msg, error) {
	var hdr [4]byte
	oob := make([]byte, syscall.CmsgSpace(4*MaxFiles))
	n, oobn, flags, _, err := c.c.ReadMsgUnix(hdr[:], oob)
	if errors.Is(err, io.EOF) {
		return nil, io.EOF
	}
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, io.EOF
	}
	files, ferr := parseRights(oob[:oobn])
	if ferr == nil && flags&syscall.MSG_CTRUNC != 0 {
		ferr = fmt.Errorf("ctl: more than %d descriptors in one frame", MaxFiles)
	}
	if ferr != nil {
		ipc.CloseFiles(files)
		return nil, ferr
	}
	if n < 4 {
		if _, err := io.ReadFull(c.c, hdr[n:]); err != nil {
			ipc.CloseFiles(files)
			return nil, err
		}
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > MaxFrame {
		ipc.CloseFiles(files)
		return nil, fmt.Errorf("ctl: frame of %d bytes is over %d", size, MaxFrame)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c.c, body); err != nil {
		ipc.CloseFiles(files)
		return nil, fmt.Errorf("ctl: frame cut short: %w", err)
	}
	m := &Msg{}
	if err := json.Unmarshal(body, m); err != nil {
		ipc.CloseFiles(files)
		return nil, fmt.Errorf("ctl: malformed frame: %w", err)
	}
	m.Files, m.size = files, len(body)
	return m, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("ctl: control message: %w", err)
	}
	var files []*os.File
	for _, cm := range msgs {
		fds, err := syscall.ParseUnixRights(&cm)
		if err != nil {
			continue // credentials and the like: not for us
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "ctl-fd"))
		}
	}
	if len(files) > MaxFiles {
		return files, fmt.Errorf("ctl: %d descriptors in one frame, over %d", len(files), MaxFiles)
	}
	return files, nil
}
