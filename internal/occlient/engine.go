package occlient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/openconnect"
	"github.com/ptun-vpn/ptun/tun"
)

// callTimeout bounds every request the engine makes to its front.
const callTimeout = 10 * time.Second

// connectTimeout bounds one login or CONNECT (dials, handshakes and the
// HTTP exchanges together).
const connectTimeout = 30 * time.Second

// offset is where packets start in the data path's buffers (room for the
// virtio-net header).
const offset = 16

// writeQueue bounds the received packets waiting for the TUN device: a
// full queue holds the session's reader back (TCP's flow control on CSTP,
// the socket buffer on DTLS); it never drops.
const writeQueue = 256

// queuedPacket is the packet size a write queue's pooled buffer holds: a
// session whose MTU is larger reads into buffers of its own.
const queuedPacket = 2048

// Default reconnection waits: the first, and the most between two tries.
const (
	defaultReconnectMin = time.Second
	defaultReconnectMax = 30 * time.Second
)

type engine struct {
	conn    *ctl.Conn
	verbose atomic.Bool

	mu    sync.Mutex // guards setup, dev
	setup *Setup
	dev   tun.Device
	up    chan struct{} // closed once set up

	mtu atomic.Int32 // the tunnel's MTU (the flow asks it)

	// sessMu guards sess and ready: ready is closed while sess is set.
	sessMu sync.Mutex
	sess   *openconnect.ClientSession
	ready  chan struct{}

	reconnects atomic.Uint64
	writeQ     *tun.WriteQueue // set up with the device
	stop       chan struct{}   // closed to end the engine
	stopOnce   sync.Once
	loopDone   chan struct{} // closed when the session loop returned

	dropNoSession, dropTooBig, tunReadErrors atomic.Uint64
}

// Run serves as the OpenConnect client engine on the control channel f
// until the front goes away, the packet flow closes, or the server
// refuses the session for good. Call it only confined.
func Run(f *os.File) error {
	e := &engine{up: make(chan struct{}), ready: make(chan struct{}),
		stop: make(chan struct{}), loopDone: make(chan struct{})}
	conn, err := ctl.FromFile(f, e.handle)
	if err != nil {
		return err
	}
	e.conn = conn
	runErr := make(chan error, 1)
	go func() { runErr <- conn.Run() }()
	select {
	case <-e.up:
	case err := <-runErr:
		return fmt.Errorf("engine: control channel closed before setup: %w", err)
	}
	go func() {
		defer close(e.loopDone)
		e.sessions()
	}()
	var result error
	select {
	case <-e.loopDone:
		// Given up (the front was told why), or the flow closed.
	case err := <-runErr:
		if !errors.Is(err, ctl.ErrClosed) && !errors.Is(err, io.EOF) {
			result = fmt.Errorf("engine: control channel: %w", err)
		}
	}
	e.shutdown()
	<-e.loopDone
	conn.Close()
	return result
}

func (e *engine) shutdown() {
	e.stopOnce.Do(func() { close(e.stop) })
	e.mu.Lock()
	dev, w := e.dev, e.writeQ
	e.mu.Unlock()
	if w != nil {
		w.Stop()
	}
	if dev != nil {
		dev.Close()
	}
}

func (e *engine) logf(format string, args ...any) {
	e.conn.Send(&ctl.Msg{Op: ctl.OpLog, Text: fmt.Sprintf(format, args...)})
}

func (e *engine) verbosef(format string, args ...any) {
	if e.verbose.Load() {
		e.logf(format, args...)
	}
}

func (e *engine) handle(req *ctl.Msg) *ctl.Msg {
	switch req.Op {
	case ctl.OpSetup:
		return e.doSetup(req)
	case ctl.OpPing, ctl.OpMTU:
		return nil
	case OpStats:
		return &ctl.Msg{Body: ctl.Body(e.info())}
	}
	return ctl.Fail(fmt.Errorf("engine: unknown request %q: %w", req.Op, syscall.EOPNOTSUPP))
}

func (e *engine) doSetup(req *ctl.Msg) *ctl.Msg {
	e.mu.Lock()
	defer e.mu.Unlock()
	files := req.Files
	req.Files = nil // ipc.Open takes them
	if e.setup != nil {
		ipc.CloseFiles(files)
		return ctl.Fail(fmt.Errorf("engine: set up twice: %w", syscall.EALREADY))
	}
	var s Setup
	if err := ctl.Decode(req.Body, &s); err != nil {
		ipc.CloseFiles(files)
		return ctl.Fail(fmt.Errorf("engine: setup: %w", err))
	}
	if s.FlowFiles != len(files) || !s.Server.IsValid() || (s.User == "" && s.Cookie == "") {
		ipc.CloseFiles(files)
		return ctl.Fail(fmt.Errorf("engine: a setup with %d files (want %d), server %v: %w", len(files), s.FlowFiles, s.Server, syscall.EINVAL))
	}
	e.verbose.Store(s.Verbose)
	e.mtu.Store(int32(max(s.MTU, 576)))
	dev, err := ipc.Open(s.Flow, files, func() (int, error) { return int(e.mtu.Load()), nil }, e.verbosef)
	if err != nil {
		return ctl.Fail(err)
	}
	e.setup, e.dev = &s, dev
	e.writeQ = tun.NewWriteQueue(dev, offset, writeQueue, queuedPacket)
	go e.readTUN(dev)
	go func() {
		if err := e.writeQ.Run(); err != nil {
			e.shutdown() // the device closed
		}
	}()
	close(e.up)
	e.verbosef("up: %s flow, server %v (%s)", s.Flow.Mode, s.Server, s.ServerName)
	return nil
}

func (e *engine) call(op string, body any) (*ctl.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	rep, err := e.conn.Call(ctx, &ctl.Msg{Op: op, Body: ctl.Body(body)})
	if rep != nil && op != OpDial {
		ipc.CloseFiles(rep.Files)
	}
	return rep, err
}

// dial asks the front for a socket to the server (ClientConfig.Dial).
func (e *engine) dial(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("engine: dial %s: %w", address, err)
	}
	rep, err := e.conn.Call(ctx, &ctl.Msg{Op: OpDial, Body: ctl.Body(DialRequest{Network: network, Address: ap})})
	if err != nil {
		return nil, err
	}
	if len(rep.Files) != 1 {
		ipc.CloseFiles(rep.Files)
		return nil, fmt.Errorf("engine: the front answered a dial with %d descriptors", len(rep.Files))
	}
	c, err := net.FileConn(rep.Files[0])
	rep.Files[0].Close()
	if err != nil {
		return nil, fmt.Errorf("engine: the front's socket: %w", err)
	}
	return c, nil
}

// sessions logs in, connects, and connects again with the cookie each time
// the session ends, until the engine stops or the server refuses the
// cookie.
func (e *engine) sessions() {
	s := e.setup
	cfg := openconnect.ClientConfig{
		Server: s.Server.String(), ServerName: s.ServerName, Pin: s.Pin,
		Username: s.User, Password: s.Password, Hostname: s.Hostname,
		DisableDTLS: s.DisableDTLS, Dial: e.dial, Logf: e.verbosef,
	}
	s.Password = ""
	if s.Pin == "" {
		cfg.RootCAs = x509.NewCertPool()
		cfg.RootCAs.AppendCertsFromPEM(s.RootsPEM)
	}
	minWait, maxWait := s.ReconnectMin, s.Reconnect
	if minWait <= 0 {
		minWait = defaultReconnectMin
	}
	if maxWait <= 0 {
		maxWait = defaultReconnectMax
	}
	cookie := s.Cookie
	wait := minWait
	// Nothing was ever up: the front reports the failure to whoever ran
	// ptun connect, rather than retry an address or password in vain.
	for first := s.Cookie == ""; ; first = false {
		ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
		go func() {
			select {
			case <-e.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		var sess *openconnect.ClientSession
		var err error
		if cookie == "" {
			sess, err = openconnect.LoginAndConnect(ctx, cfg)
		} else {
			sess, err = openconnect.Connect(ctx, cfg, cookie)
		}
		cancel()
		if e.stopped() {
			if sess != nil {
				sess.Close()
			}
			return
		}
		if err != nil {
			final := first || errors.Is(err, openconnect.ErrCookieRejected) || errors.Is(err, openconnect.ErrAuthFailed) ||
				errors.Is(err, openconnect.ErrUnsupportedForm) || errors.Is(err, openconnect.ErrPinMismatch)
			e.call(OpDown, DownNotice{Reason: err.Error(), Final: final})
			if final {
				return
			}
			e.logf("reconnecting in %v: %v", wait, err)
			select {
			case <-e.stop:
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, maxWait)
			continue
		}
		cfg.Password = "" // from now on the cookie
		cookie = sess.Cookie()
		wait = minWait
		t := sess.Tunnel()
		e.mtu.Store(int32(t.MTU))
		e.setSession(sess)
		go e.readSession(sess)
		if _, err := e.call(OpUp, UpNotice{Tunnel: tunnelOf(t), Cookie: cookie, Path: sess.Path()}); err != nil {
			e.logf("telling the front the session is up: %v", err)
		}
		select {
		case <-sess.Done():
		case <-e.stop:
			e.setSession(nil)
			sess.Close() // logs out
			return
		}
		e.setSession(nil)
		sess.Close()
		e.reconnects.Add(1)
		e.call(OpDown, DownNotice{Reason: sess.Err().Error()})
	}
}

func (e *engine) stopped() bool {
	select {
	case <-e.stop:
		return true
	default:
		return false
	}
}

// tunnelOf is what the front applies of what the server pushed.
func tunnelOf(t openconnect.Tunnel) Tunnel {
	out := Tunnel{Address4: t.Address4, Address6: t.Address6, Include: t.Include, Exclude: t.Exclude,
		DNS: t.DNS, Search: t.DefaultDomain, SplitDNS: t.SplitDNS, MTU: t.MTU, Banner: t.Banner}
	if t.DTLS != nil {
		out.DTLSPort = uint16(t.DTLS.Port)
	}
	return out
}

func (e *engine) setSession(s *openconnect.ClientSession) {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	switch {
	case s != nil && e.sess == nil:
		close(e.ready)
	case s == nil && e.sess != nil:
		e.ready = make(chan struct{})
	}
	e.sess = s
}

// session returns the session in use, waiting for one while there is
// none (a reconnect); nil once the engine stops.
func (e *engine) session() *openconnect.ClientSession {
	for {
		e.sessMu.Lock()
		s, ready := e.sess, e.ready
		e.sessMu.Unlock()
		if s != nil {
			return s
		}
		select {
		case <-ready:
		case <-e.stop:
			return nil
		}
	}
}

func (e *engine) current() *openconnect.ClientSession {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	return e.sess
}

// readTUN sends what the TUN device gives through the session. While there
// is none (reconnecting) it stops reading: packets wait in the kernel's
// queue, which drops (and counts) past its length.
func (e *engine) readTUN(dev tun.Device) {
	n := dev.BatchSize()
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, offset+tun.MaxSegmentSize)
	}
	sizes := make([]int, n)
	pkts := make([][]byte, n)
	for {
		k, err := dev.Read(bufs, sizes, offset)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				e.shutdown()
				return
			}
			e.tunReadErrors.Add(1)
			continue
		}
		s := e.session()
		if s == nil {
			return
		}
		for i := range k {
			pkts[i] = bufs[i][offset : offset+sizes[i]]
		}
		// The batch in one write to the TLS connection over CSTP
		// (BeginBatch … EndBatch), in bursts of one sendmmsg over DTLS.
		s.BeginBatch()
		tooBig, err := s.WritePackets(pkts[:k])
		e.dropTooBig.Add(uint64(tooBig)) // and counted by the session
		if err != nil {
			e.dropNoSession.Add(uint64(k - tooBig)) // the session ended under it (some may have gone out)
		}
		s.EndBatch() // a failure ended the session: the next one takes over
	}
}

// readSession queues the session's packets for the TUN device until it
// ends.
func (e *engine) readSession(s *openconnect.ClientSession) {
	e.mu.Lock()
	w := e.writeQ
	e.mu.Unlock()
	own := s.Tunnel().MTU > w.Size() // a jumbo MTU: buffers of its size
	for {
		var b []byte
		if own {
			b = make([]byte, offset+s.Tunnel().MTU)
		} else {
			b = w.Buffer()
		}
		n, err := s.ReadPacket(b[offset:])
		if err != nil {
			w.Release(b)
			if errors.Is(err, io.ErrShortBuffer) {
				continue
			}
			return
		}
		if !w.Queue(b, n) {
			return
		}
	}
}

func (e *engine) tunWriteErrorsCount() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.writeQ == nil {
		return 0
	}
	return e.writeQ.Errors()
}

func (e *engine) info() Info {
	in := Info{Reconnects: e.reconnects.Load(), Counters: map[string]uint64{
		"drop_no_session":  e.dropNoSession.Load(),
		"drop_tx_too_big":  e.dropTooBig.Load(),
		"tun_write_errors": e.tunWriteErrorsCount(),
		"tun_read_errors":  e.tunReadErrors.Load(),
	}}
	if s := e.current(); s != nil {
		in.Up, in.Path = true, s.Path()
		for _, c := range s.Stats() {
			in.Counters[c.Name] += c.Value
		}
	}
	return in
}
