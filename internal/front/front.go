// Package front is ptun's privileged process. It creates and configures
// the TUN device, serves the UAPI socket, and runs the WireGuard engine:
// in its own process (ipc.Inproc), or, by default, as a separate
// unprivileged engine process that it starts, feeds (package internal/ipc),
// answers (sockets, MTU) and restarts when it dies, replaying the
// configuration so traffic resumes after a new handshake.
package front

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg"
)

// Config configures Run.
type Config struct {
	Name string   // interface name
	MTU  int      // interface MTU
	Mode ipc.Mode // how packets reach the engine
	// Logf receives errors and events such as engine restarts; Verbosef
	// the details. nil is silent.
	Logf, Verbosef func(format string, args ...any)
	// EngineCommand returns the command that runs one engine process for
	// this interface; Run adds the control channel as descriptor 3
	// (ExtraFiles[0], which the command leaves nil). Not used in ipc.Inproc mode.
	EngineCommand func() (*exec.Cmd, error)
	// OnUp, if set, is called once the interface is up, before ready, with
	// the handler the UAPI socket serves: a gateway configures its
	// interface through it directly, access rules included (which the
	// UAPI's text cannot carry). It must not keep the handler past Run.
	OnUp func(h uapi.Handler)
	// OnTUN, if set, is called once with the TUN device before OnUp: in
	// the fd flow a caller may hand the same file to another engine
	// (ipc.NewLink) while this one is held (TUNHolder). It must not read
	// or write it, nor keep it past Run.
	OnTUN func(dev tun.Device)
	// Verbose says that Verbosef logs: the engine is told to send its
	// detailed lines too.
	Verbose bool
	// HeartbeatEvery and HeartbeatTimeout tune the engine watchdog
	// (0: every second, and 5 s to answer).
	HeartbeatEvery, HeartbeatTimeout time.Duration
}

func (c *Config) defaults() {
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if c.Verbosef == nil {
		c.Verbosef = func(string, ...any) {}
	}
}

// TUNHolder is implemented by the handler Run gives OnUp when the engine
// runs in a process of its own: see supervisor.HoldTUN.
type TUNHolder interface {
	HoldTUN(on bool) error
}

var _ TUNHolder = (*supervisor)(nil)

// Run creates interface cfg.Name and serves it until stop is closed or the
// interface is deleted. It calls ready once: with nil when the interface,
// the engine and the UAPI socket are up, or with the error that stopped
// them from coming up (which Run also returns).
func Run(cfg Config, stop <-chan struct{}, ready func(error)) (err error) {
	cfg.defaults()
	readyOnce := false
	defer func() {
		if !readyOnce {
			ready(err)
		}
	}()
	if cfg.Mode != ipc.Inproc && cfg.EngineCommand == nil {
		return errors.New("front: no engine command")
	}
	// The engine reads these too; failing here gives the error at start.
	if _, err := wg.TimersFromEnv(wg.DefaultTimers()); err != nil {
		return err
	}
	if cfg.Mode == ipc.Shm {
		if _, err := ipc.ShmRingSize(); err != nil {
			return err
		}
	}
	ln, err := uapi.Listen(cfg.Name)
	if err != nil {
		return err
	}
	sock := uapi.SocketPath(cfg.Name)
	defer ln.Close() // removes the socket, if it is still this one

	dev, err := tun.Create(cfg.Name, tun.OptionsFromEnv(tun.Options{MTU: cfg.MTU, Logf: cfg.Verbosef}))
	if err != nil {
		return err
	}
	defer dev.Close()

	var (
		handler    uapi.Handler
		gone       <-chan struct{}
		mtuChanged func(int)
	)
	if cfg.Mode == ipc.Inproc {
		tr := udp.New(udp.OptionsFromEnv(udp.Options{Logf: cfg.Verbosef}))
		timers, _ := wg.TimersFromEnv(wg.DefaultTimers())
		d, err := wg.New(dev, tr, wg.Options{Logf: cfg.Logf, Timers: timers})
		if err != nil {
			return fmt.Errorf("starting the WireGuard device: %w", err)
		}
		defer d.Close()
		handler, gone = d, d.Done()
		mtuChanged = func(int) { d.RefreshMTU() }
	} else {
		if cfg.Mode == ipc.FD {
			// The engine reads and writes the device; the front must
			// not be woken by its traffic.
			if err := tun.Park(dev); err != nil {
				return err
			}
		}
		s := newSupervisor(cfg, dev)
		if err := s.start(); err != nil {
			return err
		}
		defer s.shutdown()
		handler, gone = s, s.gone
		mtuChanged = s.pushMTU
	}

	watchStop := make(chan struct{})
	defer close(watchStop)
	served := make(chan error, 1)
	go func() { served <- uapi.Serve(ln, handler, cfg.Verbosef) }()
	go watchMTU(cfg.Name, cfg.MTU, watchStop, mtuChanged, cfg.Verbosef)
	cfg.Verbosef("interface %s is up (UAPI %s, IPC %s)", cfg.Name, sock, cfg.Mode)
	if cfg.OnTUN != nil {
		cfg.OnTUN(dev)
	}
	if cfg.OnUp != nil {
		cfg.OnUp(handler)
	}
	readyOnce = true
	ready(nil)
	select {
	case <-stop:
	case <-gone:
		cfg.Verbosef("interface %s went away: shutting down", cfg.Name)
	case err := <-served:
		// The interface cannot be configured any more: stop, and say why
		// (the daemon exits non-zero).
		if err == nil || errors.Is(err, os.ErrClosed) {
			err = errors.New("the UAPI socket closed")
		}
		cfg.Logf("UAPI server stopped: %v", err)
		return fmt.Errorf("front: UAPI server: %w", err)
	}
	return nil
}
