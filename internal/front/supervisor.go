package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/wg/allowedips"
	"github.com/ptun-vpn/ptun/wgcfg"
)

const (
	// setupTimeout bounds how long a new engine may take to come up.
	setupTimeout = 5 * time.Second
	// waitEngine bounds how long a UAPI request waits for an engine
	// while one is being restarted.
	waitEngine = 5 * time.Second
	// callTimeout bounds one request to the engine.
	callTimeout = 10 * time.Second
	// stopGrace is how long a stopping engine may take to exit by itself
	// once its control channel closed, before it is killed.
	stopGrace = 2 * time.Second
	// roamedEvery is how often the front reads the engine's endpoints,
	// so a restart keeps the roamed endpoints of known peers.
	roamedEvery = 10 * time.Second
	// heartbeatEvery and heartbeatTimeout: the watchdog pings the engine
	// this often; one that has not answered within the timeout is killed
	// and replaced like one that died.
	heartbeatEvery   = time.Second
	heartbeatTimeout = 5 * time.Second
	// quickCrash is an engine life short enough that the next start
	// waits (backoff), so a crash loop does not spin.
	quickCrash = time.Second
	maxBackoff = 5 * time.Second
)

// engineProc is one engine process and the front's side of its flow.
type engineProc struct {
	cmd     *exec.Cmd
	conn    *ctl.Conn
	link    ipc.Link
	exited  chan struct{} // closed once the process was reaped
	started time.Time

	// Guarded by supervisor.mu: the sockets granted for the current
	// listen port, out of budget.
	sockets, budget int

	// endpointsSince is the generation of the engine's last endpoints
	// answer (see takeRoamed). Used by the engine's watch goroutine only.
	endpointsSince uint64
}

func (ep *engineProc) pid() int {
	if ep.cmd.Process == nil {
		return 0
	}
	return ep.cmd.Process.Pid
}

// supervisor runs engines one after the other: it starts one, relays its
// flow, answers its privileged requests, and when it dies starts the next
// and replays the configuration. It is the UAPI handler in split mode.
type supervisor struct {
	cfg Config
	dev tun.Device

	mu      sync.Mutex // guards the fields below
	cur     *engineProc
	changed chan struct{} // closed (and replaced) when cur changes
	// The configuration's privileged parts, which bound what the
	// engine may ask for: the fwmark and listen port set over the UAPI,
	// and those of a set request in progress; the port bound when any
	// port was asked for.
	mark, pendingMark uint32
	port, pendingPort uint16
	boundPort         uint16

	setMu      sync.Mutex // serializes set requests
	cfgMu      sync.Mutex // guards held and configured; never held across a call
	held       *heldConfig
	configured bool // a set request succeeded: a new engine is given held

	logLimit *tokenBucket

	// Hooks that tests replace.
	linkExists  func(name string) bool
	roamedEvery time.Duration

	// tunHeld: the engine holds its packet flow (HoldTUN), and a new
	// engine starts so.
	tunHeld atomic.Bool

	restarts        atomic.Uint64
	startFailures   atomic.Uint64
	lastRestartUs   atomic.Uint64
	heartbeatMissed atomic.Uint64
	socketsGranted  atomic.Uint64
	grantsRefused   atomic.Uint64
	logDropped      atomic.Uint64 // since the last line logged
	logDroppedTotal atomic.Uint64
	roamedIgnored   atomic.Uint64

	stop     chan struct{}
	stopOnce sync.Once
	loopDone chan struct{}
	gone     chan struct{} // closed when the interface went away
}

func newSupervisor(cfg Config, dev tun.Device) *supervisor {
	return &supervisor{cfg: cfg, dev: dev, changed: make(chan struct{}),
		held: newHeldConfig(), logLimit: newTokenBucket(logRate, logBurst),
		linkExists: tun.LinkExists, roamedEvery: roamedEvery,
		stop: make(chan struct{}), loopDone: make(chan struct{}), gone: make(chan struct{})}
}

// start starts the first engine and the loop that watches it.
func (s *supervisor) start() error {
	ep, err := s.startEngine()
	if err != nil {
		close(s.loopDone)
		return err
	}
	s.setCurrent(ep)
	go s.loop(ep)
	return nil
}

func (s *supervisor) setCurrent(ep *engineProc) {
	s.mu.Lock()
	s.cur = ep
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// shutdown stops the engine and the loop.
func (s *supervisor) shutdown() {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.loopDone
}

func (s *supervisor) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// startEngine starts an engine process, hands it its flow and, if the
// device was configured, the configuration.
func (s *supervisor) startEngine() (_ *engineProc, err error) {
	a, b, err := ctl.Pair()
	if err != nil {
		return nil, err
	}
	cmd, err := s.cfg.EngineCommand()
	if err != nil {
		a.Close()
		b.Close()
		return nil, err
	}
	if len(cmd.ExtraFiles) == 0 {
		cmd.ExtraFiles = []*os.File{b}
	} else {
		cmd.ExtraFiles[0] = b
	}
	// The engine's stderr (a panic, a failure before its control channel
	// is up) reaches the front's log through a pipe: the engine holds no
	// file of the front's.
	stderr, err := cmd.StderrPipe()
	if err != nil {
		a.Close()
		b.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		a.Close()
		b.Close()
		return nil, fmt.Errorf("front: starting the engine: %w", err)
	}
	b.Close()
	ep := &engineProc{cmd: cmd, exited: make(chan struct{}), started: time.Now(), budget: socketBudget}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		s.relayStderr(ep, stderr)
	}()
	go func() {
		<-logged // Wait closes the pipe: read it to the end first
		cmd.Wait()
		close(ep.exited)
	}()
	defer func() {
		if err != nil {
			s.stopEngine(ep)
		}
	}()
	if ep.conn, err = ctl.FromFile(a, func(req *ctl.Msg) *ctl.Msg { return s.handleEngine(ep, req) }); err != nil {
		return ep, err
	}
	ep.conn.LimitRequests(maxEngineRequest)
	go ep.conn.Run()
	if ep.link, err = ipc.NewLink(s.cfg.Mode, s.dev, s.cfg.Logf); err != nil {
		return ep, err
	}
	s.updateSourceCheck(ep)
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	s.cfgMu.Lock()
	port := s.listenPort()
	s.cfgMu.Unlock()
	setup := ctl.Setup{Flow: ep.link.Setup(), ListenPort: port, Verbose: s.cfg.Verbose, Held: s.tunHeld.Load()}
	rep, err := ep.conn.Call(ctx, &ctl.Msg{Op: ctl.OpSetup, Body: ctl.Body(setup), Files: ep.link.Files()})
	ep.link.HandedOver()
	if rep != nil {
		ipc.CloseFiles(rep.Files)
	}
	if err != nil {
		return ep, fmt.Errorf("front: engine setup: %w", s.explain(ep, err))
	}
	ep.link.Start()
	s.cfgMu.Lock()
	configured := s.configured
	s.cfgMu.Unlock()
	if configured {
		rep, err := ep.conn.Call(ctx, &ctl.Msg{Op: ctl.OpSet, Body: ctl.Body(s.replayConfig())})
		if rep != nil {
			ipc.CloseFiles(rep.Files)
		}
		if err != nil {
			return ep, fmt.Errorf("front: giving the new engine its configuration: %w", s.explain(ep, err))
		}
		s.updateSourceCheck(ep) // a set request may have changed it meanwhile
	}
	go s.watch(ep)
	return ep, nil
}

// updateSourceCheck gives ep's link, if it relays the engine's packets,
// the check of their sources against the allowed IPs the front holds.
func (s *supervisor) updateSourceCheck(ep *engineProc) {
	sc, ok := ep.link.(ipc.SourceChecker)
	if !ok {
		return
	}
	var t allowedips.Table[bool]
	s.cfgMu.Lock()
	for p := range s.held.owner {
		t.Insert(p, true)
	}
	s.cfgMu.Unlock()
	sc.SetSourceCheck(func(pkt []byte) bool {
		_, ok := t.LookupPacketSrc(pkt)
		return ok
	})
}

// relayStderr copies the engine's stderr into the front's log, a line at a
// time (a long line in pieces), through engineLog.
func (s *supervisor) relayStderr(ep *engineProc, r io.Reader) {
	relayLines(r, func(line string) { s.engineLog(ep, line) })
}

// watch is the watchdog of one engine: it pings it every heartbeatEvery
// and kills it when an answer has not come within heartbeatTimeout (the
// loop then replaces it as a dead one), and reads its roamed endpoints
// every roamedEvery. It returns when the engine's control channel ends.
func (s *supervisor) watch(ep *engineProc) {
	beat := time.NewTicker(s.heartbeatEvery())
	defer beat.Stop()
	roam := time.NewTicker(s.roamedEvery)
	defer roam.Stop()
	for {
		select {
		case <-ep.conn.Done():
			return
		case <-roam.C:
			s.takeRoamed(ep)
		case <-beat.C:
			ctx, cancel := context.WithTimeout(context.Background(), s.heartbeatTimeout())
			_, err := ep.conn.Call(ctx, &ctl.Msg{Op: ctl.OpPing})
			cancel()
			if err == nil || errors.Is(err, ctl.ErrClosed) {
				continue
			}
			s.heartbeatMissed.Add(1)
			s.cfg.Logf("front: engine %d did not answer its heartbeat within %v (%v): replacing it", ep.pid(), s.heartbeatTimeout(), err)
			ep.cmd.Process.Kill()
			ep.conn.Close()
			return
		}
	}
}

func (s *supervisor) heartbeatEvery() time.Duration {
	if s.cfg.HeartbeatEvery > 0 {
		return s.cfg.HeartbeatEvery
	}
	return heartbeatEvery
}

func (s *supervisor) heartbeatTimeout() time.Duration {
	if s.cfg.HeartbeatTimeout > 0 {
		return s.cfg.HeartbeatTimeout
	}
	return heartbeatTimeout
}

// explain adds the engine's exit status to an error from a call to it.
func (s *supervisor) explain(ep *engineProc, err error) error {
	if !errors.Is(err, ctl.ErrClosed) {
		return err
	}
	select {
	case <-ep.exited:
		return fmt.Errorf("the engine exited (%v)", ep.cmd.ProcessState)
	case <-time.After(time.Second):
		return err
	}
}

// stopEngine ends ep: it closes the control channel (the engine exits
// on its own), kills it if it has not within stopGrace, reaps it, and stops
// its flow.
func (s *supervisor) stopEngine(ep *engineProc) {
	if ep.conn != nil {
		ep.conn.Close()
	}
	select {
	case <-ep.exited:
	case <-time.After(stopGrace):
		ep.cmd.Process.Kill()
		<-ep.exited
	}
	if ep.link != nil {
		ep.link.Close()
	}
}

// loop watches the current engine, and restarts it when it dies.
func (s *supervisor) loop(ep *engineProc) {
	defer close(s.loopDone)
	backoff := time.Duration(0)
	for {
		select {
		case <-s.stop:
			s.stopEngine(ep)
			return
		case <-ep.exited:
		case <-ep.conn.Done():
		case <-ep.link.TUNClosed():
		}
		// The engine died, or broke its control channel (then it is
		// killed: a confused engine is treated as a dead one).
		down := time.Now()
		s.setCurrent(nil)
		if ep.conn.Err() != nil && !errors.Is(ep.conn.Err(), ctl.ErrClosed) {
			select {
			case <-ep.exited:
			case <-time.After(100 * time.Millisecond):
				ep.cmd.Process.Kill()
			}
		}
		s.stopEngine(ep)
		if s.stopping() {
			return
		}
		if !s.linkExists(s.cfg.Name) {
			close(s.gone)
			<-s.stop
			return
		}
		life := down.Sub(ep.started)
		why := "its control channel broke: " + fmt.Sprint(ep.conn.Err())
		if ep.cmd.ProcessState != nil {
			why = ep.cmd.ProcessState.String()
		}
		if life < quickCrash {
			backoff = min(max(2*backoff, 50*time.Millisecond), maxBackoff)
		} else {
			backoff = 0
		}
		for {
			if backoff > 0 {
				select {
				case <-s.stop:
					return
				case <-time.After(backoff):
				}
			}
			next, err := s.startEngine()
			if err == nil {
				ep = next
				break
			}
			s.startFailures.Add(1)
			s.cfg.Logf("front: starting a new engine failed: %v", err)
			backoff = min(max(2*backoff, 50*time.Millisecond), maxBackoff)
			if s.stopping() {
				return
			}
		}
		n := s.restarts.Add(1)
		took := time.Since(down)
		s.lastRestartUs.Store(uint64(took.Microseconds()))
		s.setCurrent(ep)
		s.cfg.Logf("front: engine exited (%s) after %v; engine %d took over in %v (restart %d)",
			why, life.Round(time.Millisecond), ep.cmd.Process.Pid, took.Round(time.Microsecond), n)
	}
}

// HoldTUN makes the engine stop reading the TUN device (on) or read it
// again (off), and a new engine start the same way, so that another
// process holding the same TUN file (ptun up's OpenConnect engine, while
// the tunnel goes over TLS) gets its packets. The engine goes on sending
// and receiving over UDP (handshakes, keepalives). Only the fd flow can be
// held: the front reads the device itself in the others.
func (s *supervisor) HoldTUN(on bool) error {
	if s.cfg.Mode != ipc.FD {
		return fmt.Errorf("front: holding the TUN device needs the fd flow, not %s", s.cfg.Mode)
	}
	s.tunHeld.Store(on)
	_, err := s.call(&ctl.Msg{Op: ctl.OpHold, Body: ctl.Body(on)})
	return err
}

// current waits (bounded) for an engine to be up and returns it.
func (s *supervisor) current() (*engineProc, error) {
	deadline := time.NewTimer(waitEngine)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ep, changed := s.cur, s.changed
		s.mu.Unlock()
		if ep != nil {
			return ep, nil
		}
		select {
		case <-changed:
		case <-s.stop:
			return nil, &wgcfg.Error{Errno: syscall.ESHUTDOWN, Err: errors.New("front: shutting down")}
		case <-deadline.C:
			return nil, &wgcfg.Error{Errno: syscall.EAGAIN, Err: errors.New("front: no engine is running (restarting); try again")}
		}
	}
}

// call sends a request to the current engine; errors carry an errno for
// the UAPI answer.
func (s *supervisor) call(m *ctl.Msg) (*ctl.Msg, error) {
	ep, err := s.current()
	if err != nil {
		return nil, err
	}
	return s.callOn(ep, m)
}

// callOn sends a request to engine ep. No request of the front's expects
// descriptors back: any in the reply are closed.
func (s *supervisor) callOn(ep *engineProc, m *ctl.Msg) (*ctl.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	rep, err := ep.conn.Call(ctx, m)
	if rep != nil {
		ipc.CloseFiles(rep.Files)
		rep.Files = nil
	}
	if err == nil {
		return rep, nil
	}
	var re *ctl.RemoteError
	if errors.As(err, &re) {
		return nil, &wgcfg.Error{Errno: re.Errno, Err: errors.New(escapeLine(re.Msg, maxLogLine))}
	}
	return nil, &wgcfg.Error{Errno: syscall.EIO, Err: fmt.Errorf("front: the engine did not answer: %w", err)}
}
