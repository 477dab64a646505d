package ocengine

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/openconnect"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/wg/acl"
)

// callTimeout bounds every request the engine makes to its front.
const callTimeout = 10 * time.Second

// offset is where packets start in the data path's buffers.
const offset = 16

// writeQueue bounds the packets waiting for the TUN device: a full queue
// holds the session readers back (TCP's flow control on CSTP), it never
// drops.
const writeQueue = 256

// minQueuedPacket is the least a write queue's buffer holds: packets up
// to the sessions' MTU take a pooled buffer, larger ones (none should
// pass a session) one of their own.
const minQueuedPacket = 1500

type engine struct {
	conn    *ctl.Conn
	verbose atomic.Bool

	mu  sync.Mutex // guards srv, dev
	srv *openconnect.Server
	dev tun.Device
	up  chan struct{} // closed once set up

	sessMu   sync.Mutex
	sessions map[*session]struct{}
	byAddr   atomic.Pointer[map[netip.Addr]*session]

	writeQ *tun.WriteQueue // set up with the device
	done   chan struct{}

	dropNoSession, dropSource, dropACL atomic.Uint64
}

// session is the engine's side of one openconnect.Session: its grant and
// its compiled access.
type session struct {
	oc      atomic.Pointer[openconnect.Session]
	grant   Grant
	addrs   []netip.Addr
	access  atomic.Pointer[compiled]
	dropACL atomic.Uint64
}

type compiled struct {
	all  bool
	list *acl.List
}

func compile(a Access) (*compiled, error) {
	if a.All {
		return &compiled{all: true}, nil
	}
	l, err := acl.Compile(a.Rules)
	if err != nil {
		return nil, err
	}
	return &compiled{list: l}, nil
}

// Run serves as the OpenConnect engine on the control channel f until the
// front goes away or the packet flow closes. Call it only confined.
func Run(f *os.File) error {
	e := &engine{up: make(chan struct{}), sessions: map[*session]struct{}{}, done: make(chan struct{})}
	e.byAddr.Store(&map[netip.Addr]*session{})
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
	select {
	case <-e.done:
		e.shutdown()
		conn.Close()
		return errors.New("engine: the packet flow closed")
	case err := <-runErr:
		e.shutdown()
		if errors.Is(err, ctl.ErrClosed) || errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("engine: control channel: %w", err)
	}
}

func (e *engine) shutdown() {
	e.mu.Lock()
	srv, dev := e.srv, e.dev
	e.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
	if e.writeQ != nil {
		e.writeQ.Stop()
	}
	if dev != nil {
		dev.Close()
	}
}

func (e *engine) logf(format string, args ...any) {
	e.conn.Send(&ctl.Msg{Op: ctl.OpLog, Text: fmt.Sprintf(format, args...)})
}

func (e *engine) handle(req *ctl.Msg) *ctl.Msg {
	switch req.Op {
	case ctl.OpSetup:
		return e.setup(req)
	case ctl.OpPing, ctl.OpMTU:
		return nil
	}
	e.mu.Lock()
	srv := e.srv
	e.mu.Unlock()
	if srv == nil {
		return ctl.Fail(fmt.Errorf("engine: %s before setup: %w", req.Op, syscall.EAGAIN))
	}
	switch req.Op {
	case OpRevoke:
		var r RevokeRequest
		if err := ctl.Decode(req.Body, &r); err != nil {
			return ctl.Fail(err)
		}
		for _, s := range e.sessionsOf(r.DeviceID) {
			if oc := s.oc.Load(); oc != nil {
				srv.Revoke(oc.Device())
			}
		}
		return nil
	case OpRules:
		var r RulesRequest
		if err := ctl.Decode(req.Body, &r); err != nil {
			return ctl.Fail(err)
		}
		c, err := compile(r.Access)
		if err != nil {
			return ctl.Fail(fmt.Errorf("engine: rules: %w", syscall.EINVAL))
		}
		for _, s := range e.sessionsOf(r.DeviceID) {
			s.access.Store(c)
		}
		return nil
	case OpSessions:
		return &ctl.Msg{Body: ctl.Body(e.sessionInfos())}
	case ctl.OpStats:
		body, err := json.Marshal(e.stats(srv))
		if err != nil {
			return ctl.Fail(err)
		}
		return &ctl.Msg{Body: body}
	}
	return ctl.Fail(fmt.Errorf("engine: unknown request %q: %w", req.Op, syscall.EOPNOTSUPP))
}

func (e *engine) setup(req *ctl.Msg) *ctl.Msg {
	e.mu.Lock()
	defer e.mu.Unlock()
	files := req.Files
	req.Files = nil
	fail := func(err error) *ctl.Msg {
		ipc.CloseFiles(files)
		return ctl.Fail(err)
	}
	if e.srv != nil {
		return fail(fmt.Errorf("engine: set up twice: %w", syscall.EALREADY))
	}
	var s Setup
	if err := ctl.Decode(req.Body, &s); err != nil {
		return fail(fmt.Errorf("engine: setup: %w", err))
	}
	want := s.FlowFiles + 1
	if s.DTLS {
		want++
	}
	if s.FlowFiles < 0 || len(files) != want {
		return fail(fmt.Errorf("engine: setup with %d files, want %d: %w", len(files), want, syscall.EINVAL))
	}
	e.verbose.Store(s.Verbose)
	cert, err := tls.X509KeyPair(s.CertPEM, s.KeyPEM)
	if err != nil {
		return fail(fmt.Errorf("engine: the certificate: %w", err))
	}
	ln, err := net.FileListener(files[s.FlowFiles])
	if err != nil {
		return fail(fmt.Errorf("engine: the TLS listener: %w", err))
	}
	var pc net.PacketConn
	if s.DTLS {
		if pc, err = net.FilePacketConn(files[s.FlowFiles+1]); err != nil {
			ln.Close()
			return fail(fmt.Errorf("engine: the DTLS socket: %w", err))
		}
	}
	for _, f := range files[s.FlowFiles:] {
		f.Close() // the listener and the socket hold their own descriptors
	}
	dev, err := ipc.Open(s.Flow, files[:s.FlowFiles], func() (int, error) { return s.MTU, nil }, e.verbosef)
	if err != nil {
		ln.Close()
		if pc != nil {
			pc.Close()
		}
		return ctl.Fail(err)
	}
	srv, err := openconnect.NewServer(openconnect.ServerConfig{
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Auth: e, Handler: e, Name: s.Name,
		DTLS: pc, MTU: s.MTU, DPD: s.DPD, DTLSDPD: s.DTLSDPD, Keepalive: s.Keepalive,
		IdleTimeout: s.IdleTimeout, CookieTTL: s.CookieTTL, Resume: e.resume, Logf: e.verbosef,
	})
	if err != nil {
		dev.Close()
		ln.Close()
		return ctl.Fail(err)
	}
	e.srv, e.dev = srv, dev
	e.writeQ = tun.NewWriteQueue(dev, offset, writeQueue, max(s.MTU, minQueuedPacket))
	go srv.Serve(ln)
	go e.readTUN(dev)
	go func() {
		if err := e.writeQ.Run(); err != nil {
			e.closeDone()
		}
	}()
	close(e.up)
	e.verbosef("up: %s flow, TLS on %v, DTLS %v", s.Flow.Mode, ln.Addr(), s.DTLS)
	return nil
}

func (e *engine) verbosef(format string, args ...any) {
	if e.verbose.Load() {
		e.logf(format, args...)
	}
}

func (e *engine) call(m *ctl.Msg) (*ctl.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return e.conn.Call(ctx, m)
}

// Authenticate asks the front.
func (e *engine) Authenticate(_ context.Context, user, password string, from netip.AddrPort) (*openconnect.Grant, error) {
	rep, err := e.call(&ctl.Msg{Op: OpLogin, Body: ctl.Body(LoginRequest{Login: user, Password: password, From: from.String()})})
	if err != nil {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EAGAIN) {
			return nil, fmt.Errorf("%w: %v", openconnect.ErrLoginFailed, err)
		}
		return nil, err
	}
	return e.grantOf(rep)
}

// resume asks the front for the grant of a cookie this engine does not know.
func (e *engine) resume(_ context.Context, cookie string) (*openconnect.Grant, error) {
	rep, err := e.call(&ctl.Msg{Op: OpResume, Body: ctl.Body(ResumeRequest{Cookie: cookie})})
	if err != nil {
		return nil, err
	}
	return e.grantOf(rep)
}

func (e *engine) grantOf(rep *ctl.Msg) (*openconnect.Grant, error) {
	var g Grant
	if err := ctl.Decode(rep.Body, &g); err != nil {
		return nil, err
	}
	c, err := compile(g.Access)
	if err != nil {
		return nil, err
	}
	s := &session{grant: g}
	s.access.Store(c)
	t := openconnect.Tunnel{DNS: g.DNS, DefaultDomain: g.Search, Include: g.Routes, Banner: g.Banner}
	for _, p := range g.Addresses {
		s.addrs = append(s.addrs, p.Addr())
		switch {
		case p.Addr().Is4() && !t.Address4.IsValid():
			t.Address4 = p
		case p.Addr().Is6() && !t.Address6.IsValid():
			t.Address6 = p
		}
	}
	return &openconnect.Grant{User: g.User, Device: g.Device, Tunnel: t, Cookie: g.Cookie, Context: s}, nil
}

func sessionOf(oc *openconnect.Session) *session {
	s, _ := oc.Grant().Context.(*session)
	return s
}

// SessionUp routes the session's addresses to it.
func (e *engine) SessionUp(oc *openconnect.Session) {
	s := sessionOf(oc)
	if s == nil {
		return
	}
	s.oc.Store(oc)
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	e.sessions[s] = struct{}{}
	e.rebuildLocked()
}

// SessionDown forgets the session and tells the front.
func (e *engine) SessionDown(oc *openconnect.Session) {
	s := sessionOf(oc)
	if s == nil {
		return
	}
	e.sessMu.Lock()
	delete(e.sessions, s)
	e.rebuildLocked()
	e.sessMu.Unlock()
	e.conn.Send(&ctl.Msg{Op: OpEnded, Body: ctl.Body(EndedNotice{Cookie: oc.CookieHash(), DeviceID: s.grant.DeviceID})})
}

func (e *engine) rebuildLocked() {
	m := make(map[netip.Addr]*session, len(e.sessions))
	for s := range e.sessions {
		for _, a := range s.addrs {
			m[a] = s
		}
	}
	e.byAddr.Store(&m)
}

func (e *engine) sessionsOf(id int64) []*session {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	var out []*session
	for s := range e.sessions {
		if s.grant.DeviceID == id {
			out = append(out, s)
		}
	}
	return out
}

// Deliver takes a packet a client sent: its source must be the client's
// own address and its destination one its access allows; it then waits
// its turn for the TUN device.
func (e *engine) Deliver(oc *openconnect.Session, pkt []byte) {
	s := sessionOf(oc)
	if s == nil || len(pkt) < 20 {
		e.dropSource.Add(1)
		return
	}
	src, ok := sourceOf(pkt)
	if !ok || !contains(s.addrs, src) {
		e.dropSource.Add(1)
		return
	}
	if c := s.access.Load(); !c.all && !c.list.Allow(pkt) {
		s.dropACL.Add(1)
		e.dropACL.Add(1)
		return
	}
	e.writeQ.Put(pkt)
}

func contains(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

func sourceOf(p []byte) (netip.Addr, bool) {
	switch p[0] >> 4 {
	case 4:
		return netip.AddrFrom4([4]byte(p[12:16])), true
	case 6:
		if len(p) >= 40 {
			return netip.AddrFrom16([16]byte(p[8:24])), true
		}
	}
	return netip.Addr{}, false
}

func destOf(p []byte) (netip.Addr, bool) {
	if len(p) < 20 {
		return netip.Addr{}, false
	}
	switch p[0] >> 4 {
	case 4:
		return netip.AddrFrom4([4]byte(p[16:20])), true
	case 6:
		if len(p) >= 40 {
			return netip.AddrFrom16([16]byte(p[24:40])), true
		}
	}
	return netip.Addr{}, false
}

// readTUN hands the packets the TUN device gives to the sessions their
// destinations belong to.
func (e *engine) readTUN(dev tun.Device) {
	n := dev.BatchSize()
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, offset+tun.MaxSegmentSize)
	}
	sizes := make([]int, n)
	pkts := make([][]byte, 0, n)
	for {
		k, err := dev.Read(bufs, sizes, offset)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				e.closeDone()
				return
			}
			continue
		}
		m := *e.byAddr.Load()
		// Runs of packets to one session go together: over DTLS each
		// run is sealed and sent from here, in bursts of one sendmmsg.
		var cur *session
		run := pkts[:0]
		for i := range k {
			pkt := bufs[i][offset : offset+sizes[i]]
			dst, ok := destOf(pkt)
			s := m[dst]
			if !ok || s == nil {
				e.dropNoSession.Add(1)
				continue
			}
			if s != cur {
				sendRun(cur, run)
				cur, run = s, run[:0]
			}
			run = append(run, pkt)
		}
		sendRun(cur, run)
	}
}

// sendRun sends packets to s's client, if it is there.
func sendRun(s *session, run [][]byte) {
	if s == nil || len(run) == 0 {
		return
	}
	if oc := s.oc.Load(); oc != nil {
		oc.SendBatch(run)
	}
}

func (e *engine) closeDone() {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	select {
	case <-e.done:
	default:
		close(e.done)
	}
}

func (e *engine) sessionInfos() []SessionInfo {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	out := make([]SessionInfo, 0, len(e.sessions))
	for s := range e.sessions {
		oc := s.oc.Load()
		if oc == nil {
			continue
		}
		out = append(out, SessionInfo{
			Cookie: oc.CookieHash(), User: s.grant.User, Device: s.grant.Device, DeviceID: s.grant.DeviceID, Addresses: s.addrs,
			Path: oc.Path(), Started: oc.Started(), LastRx: oc.LastReceived(),
			RxBytes:     oc.CSTP.RxBytes.Load() + oc.DTLS.RxBytes.Load(),
			TxBytes:     oc.CSTP.TxBytes.Load() + oc.DTLS.TxBytes.Load(),
			RxPackets:   oc.CSTP.RxPackets.Load() + oc.DTLS.RxPackets.Load(),
			TxPackets:   oc.CSTP.TxPackets.Load() + oc.DTLS.TxPackets.Load(),
			DTLSRxBytes: oc.DTLS.RxBytes.Load(), DTLSTxBytes: oc.DTLS.TxBytes.Load(),
			Drops: oc.Drops.Load(), DropACL: s.dropACL.Load(),
		})
	}
	return out
}

func (e *engine) stats(srv *openconnect.Server) []metrics.Counter {
	st := srv.Stats()
	cs := []metrics.Counter{
		{Name: "oc_logins", Value: st.Logins.Load()},
		{Name: "oc_logins_failed", Value: st.LoginsFailed.Load()},
		{Name: "drop_acl", Value: e.dropACL.Load()},
		{Name: "drop_no_session", Value: e.dropNoSession.Load()},
		{Name: "drop_source", Value: e.dropSource.Load()},
		{Name: "tun_write_errors", Value: e.writeQ.Errors()},
	}
	reasons := st.Reasons()
	for _, r := range openconnect.ReasonNames() {
		cs = append(cs, metrics.Counter{Name: "oc_" + r, Value: reasons[r]})
	}
	// The DTLS socket's: its drops as they are named (drop_udp_*), the
	// rest (datagrams, syscalls, offloads) as dtls_udp_*.
	for _, c := range srv.DTLSSocketStats() {
		if !strings.HasPrefix(c.Name, "drop_") {
			c.Name = "dtls_" + c.Name
		}
		cs = append(cs, c)
	}
	return cs
}
