package ocengine

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/tun"
)

// FrontConfig configures the front of an OpenConnect engine.
type FrontConfig struct {
	Interface string         // the TUN device's name
	MTU       int            // its MTU, and the inner MTU pushed at most
	Mode      ipc.Mode       // how packets reach the engine (not Inproc)
	Listen    netip.AddrPort // TCP for TLS and, with DTLS, UDP
	DTLS      bool

	ServerName      string
	CertPEM, KeyPEM []byte

	DPD, DTLSDPD, Keepalive, IdleTimeout, CookieTTL time.Duration

	// EngineCommand returns the command of one engine process; the front
	// adds the control channel as descriptor 3 (ExtraFiles[0]).
	EngineCommand func() (*exec.Cmd, error)

	// Sources are the gateway's addresses in its pools (each with the
	// pool's length): a session's host route takes the one of its pool as
	// its source, so that the gateway's own services answer from it (the
	// interface has no address of its own).
	Sources []netip.Prefix

	// Login decides a login: a Grant (its Cookie is the front's to set),
	// or an error wrapping ErrRefused or ErrRateLimited, or another error
	// (the gateway cannot decide now).
	Login func(ctx context.Context, r LoginRequest) (*Grant, error)
	// Recheck, if set, refreshes a grant before a session resumes with
	// it (its device may have been revoked, its rules changed): nil
	// error keeps the session.
	Recheck func(ctx context.Context, g *Grant) error

	Logf, Verbosef func(format string, args ...any)
	Verbose        bool
}

// Errors of FrontConfig.Login.
var (
	ErrRefused     = errors.New("ocengine: login refused")
	ErrRateLimited = errors.New("ocengine: too many login attempts")
)

// Front is the privileged side: it owns the interface and the sockets,
// starts the engine and starts it again when it dies, and keeps the
// sessions' cookies so that a new engine can resume them.
type Front struct {
	cfg FrontConfig
	dev tun.Device
	// The TLS listener and the DTLS socket, kept as plain descriptors for
	// the engines: never in the front's poller, so their traffic does not
	// wake the front.
	ln, udp *os.File
	addr    netip.AddrPort
	link    netlink.Link

	mu       sync.Mutex
	cur      *engineProc
	cookies  map[string]*Grant    // by cookie
	byHash   map[string]string    // sha256 hex → cookie
	lastSeen map[string]time.Time // by cookie: made, or last seen with a session
	closed   bool

	restarts atomic.Uint64
	stop     chan struct{}
	done     chan struct{}
}

type engineProc struct {
	*front.EngineProcess
	link ipc.Link
}

// setupTimeout bounds an engine's start.
const setupTimeout = 10 * time.Second

// StartFront creates the interface and the sockets, starts the engine and
// returns once it serves.
func StartFront(cfg FrontConfig) (_ *Front, err error) {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Verbosef == nil {
		cfg.Verbosef = func(string, ...any) {}
	}
	if cfg.Mode == ipc.Inproc || cfg.Mode == "" {
		cfg.Mode = ipc.FD
	}
	if cfg.EngineCommand == nil || cfg.Login == nil {
		return nil, errors.New("ocengine: a front needs EngineCommand and Login")
	}
	f := &Front{cfg: cfg, cookies: map[string]*Grant{}, byHash: map[string]string{}, lastSeen: map[string]time.Time{},
		stop: make(chan struct{}), done: make(chan struct{})}
	defer func() {
		if err != nil {
			f.release()
		}
	}()
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(cfg.Listen))
	if err != nil {
		return nil, fmt.Errorf("the TLS port %v: %w", cfg.Listen, err)
	}
	f.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	f.ln, err = unpolled(ln, "tls-listener")
	ln.Close()
	if err != nil {
		return nil, err
	}
	if cfg.DTLS {
		port := netip.AddrPortFrom(cfg.Listen.Addr(), f.addr.Port())
		uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(port))
		if err != nil {
			return nil, fmt.Errorf("the DTLS port %v: %w", port, err)
		}
		if rc, err := uc.SyscallConn(); err == nil {
			// Room for the engine's bursts (sendmmsg) and a client's.
			rc.Control(func(fd uintptr) { udp.SetSocketBuffers(int(fd), 0, cfg.Logf) })
		}
		f.udp, err = unpolled(uc, "dtls-socket")
		uc.Close()
		if err != nil {
			return nil, err
		}
	}
	if f.dev, err = tun.Create(cfg.Interface, tun.OptionsFromEnv(tun.Options{MTU: cfg.MTU, Logf: cfg.Verbosef})); err != nil {
		return nil, err
	}
	if f.link, err = netlink.LinkByName(cfg.Interface); err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(f.link); err != nil {
		return nil, fmt.Errorf("%s up: %w", cfg.Interface, err)
	}
	if cfg.Mode == ipc.FD {
		if err := tun.Park(f.dev); err != nil {
			return nil, err
		}
	}
	ep, err := f.startEngine()
	if err != nil {
		return nil, err
	}
	f.setCurrent(ep)
	go f.loop(ep)
	return f, nil
}

// unpolled returns a descriptor of c's socket of its own, in blocking
// mode so that the os.File is not added to the runtime's poller (net's
// File would be): the front only keeps it to hand to engines.
func unpolled(c syscall.Conn, name string) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Addr is the TLS listener's address.
func (f *Front) Addr() netip.AddrPort { return f.addr }

// Restarts counts the engines started after the first.
func (f *Front) Restarts() uint64 { return f.restarts.Load() }

func (f *Front) release() {
	if f.ln != nil {
		f.ln.Close()
	}
	if f.udp != nil {
		f.udp.Close()
	}
	if f.dev != nil {
		f.dev.Close()
	}
}

// Close stops the engine and removes the interface and its routes.
func (f *Front) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.mu.Unlock()
	close(f.stop)
	<-f.done
	f.release()
	return nil
}

func (f *Front) setCurrent(ep *engineProc) {
	f.mu.Lock()
	f.cur = ep
	f.mu.Unlock()
}

func (f *Front) current() *engineProc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

func (f *Front) startEngine() (_ *engineProc, err error) {
	cmd, err := f.cfg.EngineCommand()
	if err != nil {
		return nil, err
	}
	ep := &engineProc{}
	if ep.EngineProcess, err = front.StartEngineProcess(cmd, "tls engine", f.cfg.Logf,
		func(_ *front.EngineProcess, req *ctl.Msg) *ctl.Msg { return f.handleEngine(ep, req) }); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.stopEngine(ep)
		}
	}()
	if ep.link, err = ipc.NewLink(f.cfg.Mode, f.dev, f.cfg.Logf); err != nil {
		return ep, err
	}
	files := append([]*os.File(nil), ep.link.Files()...)
	files = append(files, f.ln) // the engine gets its own copies (SCM_RIGHTS)
	if f.udp != nil {
		files = append(files, f.udp)
	}
	setup := Setup{
		Flow: ep.link.Setup(), FlowFiles: len(ep.link.Files()), DTLS: f.udp != nil, Verbose: f.cfg.Verbose,
		Name: f.cfg.ServerName, CertPEM: f.cfg.CertPEM, KeyPEM: f.cfg.KeyPEM,
		MTU: f.cfg.MTU, DPD: f.cfg.DPD, DTLSDPD: f.cfg.DTLSDPD, Keepalive: f.cfg.Keepalive,
		IdleTimeout: f.cfg.IdleTimeout, CookieTTL: f.cfg.CookieTTL,
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	rep, err := ep.Conn.Call(ctx, &ctl.Msg{Op: ctl.OpSetup, Body: ctl.Body(setup), Files: files})
	ep.link.HandedOver()
	if rep != nil {
		ipc.CloseFiles(rep.Files)
	}
	if err != nil {
		return ep, fmt.Errorf("ocengine: engine setup: %w", err)
	}
	ep.link.Start()
	return ep, nil
}

func (f *Front) stopEngine(ep *engineProc) {
	if ep.Conn != nil {
		ep.Conn.Close()
	}
	select {
	case <-ep.Exited:
	case <-time.After(2 * time.Second):
		ep.Cmd.Process.Kill()
		<-ep.Exited
	}
	if ep.link != nil {
		ep.link.Close()
	}
}

// loop restarts the engine when it dies, and watches it with a heartbeat.
func (f *Front) loop(ep *engineProc) {
	defer close(f.done)
	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-f.stop:
			f.stopEngine(ep)
			return
		case <-beat.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := ep.Conn.Call(ctx, &ctl.Msg{Op: ctl.OpPing})
			cancel()
			if err == nil || errors.Is(err, ctl.ErrClosed) {
				continue
			}
			f.cfg.Logf("tls front: engine %d missed its heartbeat (%v): replacing it", ep.Cmd.Process.Pid, err)
			ep.Cmd.Process.Kill()
		case <-ep.Exited:
		case <-ep.Conn.Done():
		}
		f.setCurrent(nil)
		f.stopEngine(ep)
		select {
		case <-f.stop:
			return
		case <-time.After(backoff):
		}
		next, err := f.startEngine()
		if err != nil {
			f.cfg.Logf("tls front: starting a new engine failed: %v", err)
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			continue
		}
		backoff = 0
		ep = next
		f.setCurrent(ep)
		n := f.restarts.Add(1)
		f.cfg.Logf("tls front: engine restarted (restart %d); clients resume with their cookies", n)
	}
}

// handleEngine answers the engine's requests.
func (f *Front) handleEngine(ep *engineProc, req *ctl.Msg) *ctl.Msg {
	ipc.CloseFiles(req.Files) // the engine has no descriptor to give
	req.Files = nil
	switch req.Op {
	case ctl.OpLog:
		f.cfg.Logf("tls engine %d: %s", ep.Cmd.Process.Pid, front.EscapeLine(req.Text))
		return nil
	case ctl.OpMTU:
		return &ctl.Msg{Body: ctl.Body(int32(f.cfg.MTU))}
	case OpLogin:
		var r LoginRequest
		if err := ctl.Decode(req.Body, &r); err != nil {
			return ctl.Fail(fmt.Errorf("%w: %v", syscall.EINVAL, err))
		}
		if len(r.Login) > 256 || len(r.Password) > 1024 {
			return ctl.Fail(fmt.Errorf("login too long: %w", syscall.EACCES))
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		g, err := f.cfg.Login(ctx, r)
		switch {
		case errors.Is(err, ErrRateLimited):
			return ctl.Fail(fmt.Errorf("%v: %w", err, syscall.EAGAIN))
		case errors.Is(err, ErrRefused):
			return ctl.Fail(fmt.Errorf("%v: %w", err, syscall.EACCES))
		case err != nil:
			return ctl.Fail(fmt.Errorf("%v: %w", err, syscall.EIO))
		}
		if err := f.remember(g); err != nil {
			return ctl.Fail(fmt.Errorf("%v: %w", err, syscall.EIO))
		}
		return &ctl.Msg{Body: ctl.Body(g)}
	case OpResume:
		var r ResumeRequest
		if err := ctl.Decode(req.Body, &r); err != nil {
			return ctl.Fail(fmt.Errorf("%w: %v", syscall.EINVAL, err))
		}
		f.mu.Lock()
		g := f.cookies[r.Cookie]
		f.mu.Unlock()
		if g == nil {
			return ctl.Fail(fmt.Errorf("no such session: %w", syscall.ENOENT))
		}
		if f.cfg.Recheck != nil {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			err := f.cfg.Recheck(ctx, g)
			cancel()
			if err != nil {
				f.forgetCookie(r.Cookie)
				return ctl.Fail(fmt.Errorf("%v: %w", err, syscall.ENOENT))
			}
		}
		return &ctl.Msg{Body: ctl.Body(g)}
	case OpEnded:
		var n EndedNotice
		if err := ctl.Decode(req.Body, &n); err == nil {
			f.mu.Lock()
			c := f.byHash[n.Cookie]
			f.mu.Unlock()
			if c != "" {
				f.forgetCookie(c)
			}
		}
		return nil
	}
	return ctl.Fail(fmt.Errorf("ocengine: the front has no request %q: %w", front.EscapeLine(req.Op), syscall.EOPNOTSUPP))
}

// remember gives g a cookie, keeps it, and routes its addresses to the
// interface.
func (f *Front) remember(g *Grant) error {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	g.Cookie = base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(g.Cookie))
	f.mu.Lock()
	f.cookies[g.Cookie] = g
	f.byHash[hex.EncodeToString(sum[:])] = g.Cookie
	f.lastSeen[g.Cookie] = time.Now()
	f.mu.Unlock()
	for _, p := range g.Addresses {
		if err := f.route(p.Addr(), true); err != nil {
			return err
		}
	}
	return nil
}

func (f *Front) forgetCookie(cookie string) {
	sum := sha256.Sum256([]byte(cookie))
	f.mu.Lock()
	g := f.cookies[cookie]
	delete(f.cookies, cookie)
	delete(f.byHash, hex.EncodeToString(sum[:]))
	delete(f.lastSeen, cookie)
	still := false
	if g != nil {
		for _, o := range f.cookies {
			if o.DeviceID == g.DeviceID {
				still = true
			}
		}
	}
	f.mu.Unlock()
	if g != nil && !still {
		for _, p := range g.Addresses {
			f.route(p.Addr(), false)
		}
	}
}

// route adds (or removes) the host route of a session's address through
// the interface: more specific than the pool's route through WireGuard.
func (f *Front) route(a netip.Addr, add bool) error {
	bits := 32
	if a.Is6() {
		bits = 128
	}
	p := netip.PrefixFrom(a, bits)
	r := &netlink.Route{LinkIndex: f.link.Attrs().Index, Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Scope: netlink.SCOPE_LINK}
	for _, src := range f.cfg.Sources {
		if src.Contains(a) {
			r.Src = src.Addr().AsSlice()
			break
		}
	}
	if add {
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("the route of %v: %w", p, err)
		}
		return nil
	}
	if err := netlink.RouteDel(r); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// call sends a request to the current engine.
func (f *Front) call(m *ctl.Msg) (*ctl.Msg, error) {
	ep := f.current()
	if ep == nil {
		return nil, errors.New("ocengine: no engine is running (restarting)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	rep, err := ep.Conn.Call(ctx, m)
	if rep != nil {
		ipc.CloseFiles(rep.Files)
		rep.Files = nil
	}
	return rep, err
}

// Revoke ends a device's sessions at once and forgets their cookies.
func (f *Front) Revoke(deviceID int64) error {
	f.mu.Lock()
	var cookies []string
	for c, g := range f.cookies {
		if g.DeviceID == deviceID {
			cookies = append(cookies, c)
		}
	}
	f.mu.Unlock()
	for _, c := range cookies {
		f.forgetCookie(c)
	}
	_, err := f.call(&ctl.Msg{Op: OpRevoke, Body: ctl.Body(RevokeRequest{DeviceID: deviceID})})
	return err
}

// SetAccess gives a device's sessions new access rules.
func (f *Front) SetAccess(deviceID int64, a Access) error {
	f.mu.Lock()
	for _, g := range f.cookies {
		if g.DeviceID == deviceID {
			g.Access = a
		}
	}
	f.mu.Unlock()
	_, err := f.call(&ctl.Msg{Op: OpRules, Body: ctl.Body(RulesRequest{DeviceID: deviceID, Access: a})})
	return err
}

// Devices lists the devices the front holds cookies of (logged in, the
// client there or away), with their grants.
func (f *Front) Devices() map[int64]Grant {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[int64]Grant{}
	for _, g := range f.cookies {
		out[g.DeviceID] = *g
	}
	return out
}

// Sessions lists the engine's live sessions. It also forgets the cookies
// that no session has used for longer than the cookie's lifetime (their
// engine died and the client never came back).
func (f *Front) Sessions() ([]SessionInfo, error) {
	rep, err := f.call(&ctl.Msg{Op: OpSessions})
	if err != nil {
		return nil, err
	}
	var out []SessionInfo
	if err := ctl.Decode(rep.Body, &out); err != nil {
		return nil, err
	}
	now := time.Now()
	ttl := f.cfg.CookieTTL
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	var stale []string
	f.mu.Lock()
	for _, si := range out {
		if c := f.byHash[si.Cookie]; c != "" {
			f.lastSeen[c] = now
		}
	}
	for c, at := range f.lastSeen {
		if now.Sub(at) > ttl+time.Minute {
			stale = append(stale, c)
		}
	}
	f.mu.Unlock()
	for _, c := range stale {
		f.forgetCookie(c)
	}
	return out, nil
}

// Stats returns the engine's counters and the front's.
func (f *Front) Stats() []metrics.Counter {
	cs := []metrics.Counter{{Name: "engine_restarts", Value: f.restarts.Load()}}
	rep, err := f.call(&ctl.Msg{Op: ctl.OpStats})
	if err != nil {
		return cs
	}
	got, err := ctl.Counters(rep)
	if err != nil {
		return cs
	}
	return append(cs, got...)
}
