package ipc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/tun"
)

// seqpacketBuffer is each end's socket send buffer: about as many bytes
// in flight as one shm ring holds.
const seqpacketBuffer = 2 << 20

// deadliner is the optional part of a TUN's Frames that lets a relay's
// blocked read be interrupted without closing the device.
type deadliner interface{ SetReadDeadline(time.Time) error }

// msgSocket is one end of a SOCK_SEQPACKET pair: one message per packet,
// blocking (in Go's netpoller) while the other side's queue is full.
type msgSocket struct {
	file *os.File
	rc   syscall.RawConn

	// Syscall state for the RawConn callbacks (made once: no closure
	// allocated per packet). One reader and one writer at a time.
	rbuf   []byte
	rn     int
	rerr   error
	rwait  bool
	readFn func(fd uintptr) bool

	wbuf    []byte
	werr    error
	writeFn func(fd uintptr) bool

	fullWaits atomic.Uint64 // writes that found the other side's queue full and waited
}

func newMsgSocket(f *os.File) (*msgSocket, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("flow: %w", err)
	}
	s := &msgSocket{file: f, rc: rc}
	s.readFn, s.writeFn = s.rawRead, s.rawWrite
	return s, nil
}

func (s *msgSocket) rawRead(fd uintptr) bool {
	s.rn, s.rerr = unix.Read(int(fd), s.rbuf)
	if s.rerr == nil && s.rn == 0 {
		s.rerr = io.EOF
	}
	return !(s.rwait && s.rerr == unix.EAGAIN)
}

func (s *msgSocket) rawWrite(fd uintptr) bool {
	_, s.werr = unix.Write(int(fd), s.wbuf)
	if s.werr == unix.EAGAIN {
		s.fullWaits.Add(1)
		return false
	}
	return true
}

// recv reads one message into b; with wait false it returns
// tun.ErrWouldBlock when none is queued. It returns os.ErrClosed once the
// other end is gone or this one closed.
func (s *msgSocket) recv(b []byte, wait bool) (int, error) {
	s.rbuf, s.rwait = b, wait
	err := s.rc.Read(s.readFn)
	s.rbuf = nil
	if err != nil {
		return 0, closedErr(err)
	}
	if s.rerr == unix.EAGAIN {
		return 0, tun.ErrWouldBlock
	}
	if s.rerr != nil {
		return 0, closedErr(s.rerr)
	}
	return s.rn, nil
}

// send sends b as one message, waiting while the other side's queue is
// full.
func (s *msgSocket) send(b []byte) error {
	s.wbuf = b
	err := s.rc.Write(s.writeFn)
	s.wbuf = nil
	if err == nil {
		err = s.werr
	}
	if err != nil {
		return closedErr(err)
	}
	return nil
}

func closedErr(err error) error {
	if errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, unix.EPIPE) ||
		errors.Is(err, unix.ECONNRESET) {
		return os.ErrClosed
	}
	return err
}

// seqpacketLink is the front's side: it reads packets from the TUN device
// (GSO super-packets split into packets) and sends each as one message, and
// writes each message it receives to the TUN device (coalesced, in
// batches).
type seqpacketLink struct {
	dev    tun.Device
	logf   func(string, ...any)
	front  *msgSocket
	engine *os.File

	stopping atomic.Bool
	wg       sync.WaitGroup
	tunGone

	toEngine, fromEngine atomic.Uint64
	sourceFilter
}

func newSeqpacketLink(dev tun.Device, logf func(string, ...any)) (*seqpacketLink, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("flow: socketpair: %w", err)
	}
	for _, fd := range fds {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, seqpacketBuffer) != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, seqpacketBuffer)
		}
	}
	front, err := newMsgSocket(os.NewFile(uintptr(fds[0]), "seqpacket"))
	if err != nil {
		unix.Close(fds[1])
		return nil, err
	}
	return &seqpacketLink{dev: dev, logf: logf, front: front, engine: os.NewFile(uintptr(fds[1]), "seqpacket"), tunGone: newTUNGone()}, nil
}

func (l *seqpacketLink) Setup() Setup {
	return Setup{Mode: Seqpacket, Format: tun.Format{Name: l.dev.Name()}}
}
func (l *seqpacketLink) Files() []*os.File { return []*os.File{l.engine} }
func (l *seqpacketLink) HandedOver()       { l.engine.Close() }

func (l *seqpacketLink) Start() {
	l.wg.Add(2)
	go l.up()
	go l.down()
}

// up relays the TUN's packets to the engine, one message each.
func (l *seqpacketLink) up() {
	defer l.wg.Done()
	bufs, sizes := packetBufs(l.dev.BatchSize())
	for {
		n, err := l.dev.Read(bufs, sizes, relayOffset)
		for i := range n {
			if err := l.front.send(bufs[i][relayOffset : relayOffset+sizes[i]]); err != nil {
				l.stopped("to engine", err)
				return
			}
		}
		l.toEngine.Add(uint64(n))
		if err != nil && !errors.Is(err, tun.ErrTooManySegments) {
			l.stopped("reading the TUN", err)
			if errors.Is(err, os.ErrClosed) && !l.stopping.Load() {
				l.closedTUN()
			}
			return
		}
	}
}

// down writes the engine's messages to the TUN, a burst at a time.
func (l *seqpacketLink) down() {
	defer l.wg.Done()
	bufs, _ := packetBufs(l.dev.BatchSize())
	batch := make([][]byte, 0, len(bufs))
	for {
		batch = batch[:0]
		for len(batch) < len(bufs) {
			b := bufs[len(batch)]
			n, err := l.front.recv(b[relayOffset:cap(b)], len(batch) == 0)
			if err == tun.ErrWouldBlock {
				break
			}
			if err != nil {
				l.stopped("from engine", err)
				return
			}
			if !l.allow(b[relayOffset:relayOffset+n], 0) {
				l.fromEngine.Add(1)
				continue
			}
			batch = append(batch, b[:relayOffset+n])
		}
		l.fromEngine.Add(uint64(len(batch)))
		if _, err := l.dev.Write(batch, relayOffset); errors.Is(err, os.ErrClosed) {
			l.stopped("writing the TUN", err)
			if errors.Is(err, os.ErrClosed) && !l.stopping.Load() {
				l.closedTUN()
			}
			return
		}
		// Other write errors are drops the device counted by reason.
	}
}

func (l *seqpacketLink) stopped(where string, err error) {
	if !l.stopping.Load() && !errors.Is(err, os.ErrClosed) {
		l.logf("flow: seqpacket relay stopped %s: %v", where, err)
	}
}

func (l *seqpacketLink) Close() error {
	l.stopping.Store(true)
	d := tunDeadliner(l.dev)
	if d != nil {
		d.SetReadDeadline(time.Now())
	}
	l.front.file.Close()
	l.engine.Close()
	l.wg.Wait()
	if d != nil {
		d.SetReadDeadline(time.Time{})
	}
	return nil
}

func (l *seqpacketLink) Stats() []metrics.Counter {
	return append([]metrics.Counter{
		{Name: "flow_packets_to_engine", Value: l.toEngine.Load()},
		{Name: "flow_packets_from_engine", Value: l.fromEngine.Load()},
		{Name: "flow_to_engine_full_waits", Value: l.front.fullWaits.Load()},
	}, l.sourceFilter.stats()...)
}

func tunDeadliner(dev tun.Device) deadliner {
	if fr, ok := dev.(tun.Framed); ok {
		if d, ok := fr.Frames().(deadliner); ok {
			return d
		}
	}
	return nil
}

// relayOffset is the headroom the relays keep before each packet, for the
// virtio-net header.
const relayOffset = tun.MinOffset

func packetBufs(n int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, relayOffset+tun.MaxSegmentSize)
	}
	return bufs, make([]int, n)
}

// seqpacketDevice is the engine's tun.Device in seqpacket mode: every
// packet is one message to or from the front.
type seqpacketDevice struct {
	name   string
	mtu    func() (int, error)
	sock   *msgSocket
	closed atomic.Bool
	rmu    sync.Mutex
	wmu    sync.Mutex

	reads, msgsIn, msgsOut atomic.Uint64
}

func openSeqpacket(s Setup, files []*os.File, mtu func() (int, error)) (tun.Device, error) {
	if err := wantFiles(Seqpacket, files, 1); err != nil {
		return nil, err
	}
	fd, err := dupAndClose(files[0])
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("flow: %w", err)
	}
	sock, err := newMsgSocket(os.NewFile(uintptr(fd), "seqpacket"))
	if err != nil {
		return nil, err
	}
	return &seqpacketDevice{name: s.Format.Name, mtu: mtu, sock: sock}, nil
}

func (d *seqpacketDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if offset < tun.MinOffset || len(bufs) == 0 || len(sizes) == 0 || len(bufs[0]) <= offset {
		return 0, errors.New("flow: offset smaller than tun.MinOffset or buffer shorter than offset")
	}
	d.rmu.Lock()
	defer d.rmu.Unlock()
	limit := min(len(bufs), len(sizes))
	n := 0
	for n < limit {
		m, err := d.sock.recv(bufs[n][offset:], n == 0)
		if err != nil {
			if n > 0 {
				break
			}
			if d.closed.Load() {
				err = os.ErrClosed
			}
			return 0, err
		}
		sizes[n] = m
		n++
	}
	d.reads.Add(1)
	d.msgsIn.Add(uint64(n))
	return n, nil
}

func (d *seqpacketDevice) Write(bufs [][]byte, offset int) (int, error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	for i, b := range bufs {
		if err := d.sock.send(b[offset:]); err != nil {
			d.msgsOut.Add(uint64(i))
			return i, err
		}
	}
	d.msgsOut.Add(uint64(len(bufs)))
	return len(bufs), nil
}

func (d *seqpacketDevice) BatchSize() int    { return 64 }
func (d *seqpacketDevice) MTU() (int, error) { return d.mtu() }
func (d *seqpacketDevice) Name() string      { return d.name }

func (d *seqpacketDevice) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	return d.sock.file.Close()
}

func (d *seqpacketDevice) Stats() []metrics.Counter {
	return []metrics.Counter{
		{Name: "flow_seqpacket_reads", Value: d.reads.Load()},
		{Name: "flow_seqpacket_messages_in", Value: d.msgsIn.Load()},
		{Name: "flow_seqpacket_messages_out", Value: d.msgsOut.Load()},
	}
}
