package front

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/engine"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/uapi"
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
	// snapshotEvery is how often the front refreshes the configuration
	// it would replay, so a restart keeps roamed endpoints.
	snapshotEvery = 10 * time.Second
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
	// and those of a set request in progress.
	mark, pendingMark uint32
	port, pendingPort uint16

	snapMu   sync.Mutex                         // serializes configuration changes and snapshots
	snapshot atomic.Pointer[wgcfg.DeviceConfig] // what a new engine is given; nil: nothing set yet

	restarts      atomic.Uint64
	startFailures atomic.Uint64
	lastRestartUs atomic.Uint64

	stop     chan struct{}
	stopOnce sync.Once
	loopDone chan struct{}
	gone     chan struct{} // closed when the interface went away
}

func newSupervisor(cfg Config, dev tun.Device) *supervisor {
	return &supervisor{cfg: cfg, dev: dev, changed: make(chan struct{}),
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
	cmd := s.cfg.EngineCommand()
	cmd.ExtraFiles = []*os.File{b}
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
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.cfg.Logf("engine %d: %s", cmd.Process.Pid, sc.Text())
		}
	}()
	ep := &engineProc{cmd: cmd, exited: make(chan struct{}), started: time.Now()}
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
	if ep.conn, err = ctl.FromFile(a, s.handleEngine); err != nil {
		return ep, err
	}
	go ep.conn.Run()
	if ep.link, err = ipc.NewLink(s.cfg.Mode, s.dev, s.cfg.Logf); err != nil {
		return ep, err
	}
	body, err := json.Marshal(ep.link.Setup())
	if err != nil {
		return ep, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	_, err = ep.conn.Call(ctx, &ctl.Msg{Op: engine.OpSetup, Body: body, Files: ep.link.Files()})
	ep.link.HandedOver()
	if err != nil {
		return ep, fmt.Errorf("front: engine setup: %w", s.explain(ep, err))
	}
	ep.link.Start()
	if snap := s.snapshot.Load(); snap != nil {
		var b strings.Builder
		if err := uapi.WriteSet(&b, snap); err != nil {
			return ep, err
		}
		if _, err := ep.conn.Call(ctx, &ctl.Msg{Op: engine.OpSet, Text: b.String()}); err != nil {
			return ep, fmt.Errorf("front: giving the new engine its configuration: %w", s.explain(ep, err))
		}
	}
	return ep, nil
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
	tick := time.NewTicker(snapshotEvery)
	defer tick.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-s.stop:
			s.stopEngine(ep)
			return
		case <-tick.C:
			s.refreshSnapshot()
			continue
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
		if !linkExists(s.cfg.Name) {
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
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	rep, err := ep.conn.Call(ctx, m)
	if err == nil {
		return rep, nil
	}
	var re *ctl.RemoteError
	if errors.As(err, &re) {
		return nil, &wgcfg.Error{Errno: re.Errno, Err: errors.New(re.Msg)}
	}
	return nil, &wgcfg.Error{Errno: syscall.EIO, Err: fmt.Errorf("front: the engine did not answer: %w", err)}
}
