// Package engine is ptun's unprivileged process: it speaks WireGuard
// between the packet flow its front hands it (package internal/ipc) and the UDP
// sockets the front opens for it, and answers the front's UAPI requests.
// It parses all untrusted network input, so it holds no privilege: no
// capability, no_new_privs, an unprivileged uid, and no descriptor but the
// ones it was handed (see Confine).
//
// The front starts it as `ptun --engine-of IFNAME` with the control
// channel (package internal/ctl) on descriptor 3. The engine exits when
// the channel closes (the front is gone) or its packet flow does.
package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/memtrim"
	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/wg"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// callTimeout bounds every request the engine makes to its front.
const callTimeout = 10 * time.Second

type engine struct {
	conn    *ctl.Conn
	verbose atomic.Bool // set by the setup request

	pushedMTU atomic.Int32 // the MTU the front last pushed; 0: ask it

	mu   sync.Mutex // guards dev and tdev
	dev  *wg.Device
	tdev tun.Device    // the packet flow dev reads
	up   chan struct{} // closed once dev is set
}

// Run serves as the engine on the control channel f, until the front goes
// away or the packet flow closes. Call it only after CheckConfined.
func Run(f *os.File) error {
	e := &engine{up: make(chan struct{})}
	conn, err := ctl.FromFile(f, e.handle)
	if err != nil {
		return err
	}
	e.conn = conn
	runErr := make(chan error, 1)
	go func() { runErr <- conn.Run() }()

	var done <-chan struct{}
	select {
	case <-e.up:
		done = e.dev.Done()
	case err := <-runErr:
		return fmt.Errorf("engine: control channel closed before setup: %w", err)
	}
	select {
	case <-done:
		e.dev.Close()
		conn.Close()
		return errors.New("engine: the packet flow closed")
	case err := <-runErr:
		e.dev.Close()
		if errors.Is(err, ctl.ErrClosed) || errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("engine: control channel: %w", err)
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
		return e.setup(req)
	case ctl.OpPing:
		return nil
	case ctl.OpMTU:
		// The front says the interface's MTU changed.
		var m int32
		if err := ctl.Decode(req.Body, &m); err != nil || m <= 0 {
			return ctl.Fail(fmt.Errorf("engine: mtu notice: %w", syscall.EINVAL))
		}
		e.pushedMTU.Store(m)
		if d := e.device(); d != nil {
			d.RefreshMTU()
		}
		return nil
	case ctl.OpHold:
		var on bool
		if err := ctl.Decode(req.Body, &on); err != nil {
			return ctl.Fail(fmt.Errorf("engine: hold: %w", err))
		}
		e.mu.Lock()
		tdev := e.tdev
		e.mu.Unlock()
		if tdev == nil {
			return ctl.Fail(fmt.Errorf("engine: hold before setup: %w", syscall.EAGAIN))
		}
		if err := tun.Hold(tdev, on); err != nil {
			return ctl.Fail(fmt.Errorf("engine: hold: %v: %w", err, syscall.EOPNOTSUPP))
		}
		return nil
	}
	d := e.device()
	if d == nil {
		return ctl.Fail(fmt.Errorf("engine: %s before setup: %w", req.Op, syscall.EAGAIN))
	}
	switch req.Op {
	case ctl.OpGet:
		st, err := d.Get()
		if err != nil {
			return failUAPI(err)
		}
		memtrim.Note(len(st.Peers))
		return &ctl.Msg{Body: ctl.Body(st)}
	case ctl.OpEndpoints:
		var r ctl.EndpointsRequest
		if err := ctl.Decode(req.Body, &r); err != nil {
			return failUAPI(err)
		}
		return &ctl.Msg{Body: ctl.Body(d.EndpointChanges(r.Since))}
	case ctl.OpSet:
		var cfg wgcfg.DeviceConfig
		if err := ctl.Decode(req.Body, &cfg); err != nil {
			return failUAPI(err)
		}
		if err := d.Set(&cfg); err != nil {
			return failUAPI(err)
		}
		memtrim.Note(len(cfg.Peers))
		return nil
	case ctl.OpStats:
		body, err := json.Marshal(d.Stats())
		if err != nil {
			return ctl.Fail(err)
		}
		return &ctl.Msg{Body: body}
	}
	return ctl.Fail(fmt.Errorf("engine: unknown request %q: %w", req.Op, syscall.EOPNOTSUPP))
}

// failUAPI keeps a UAPI error's errno for the front to answer with.
func failUAPI(err error) *ctl.Msg {
	m := ctl.Fail(err)
	m.Errno = int(wgcfg.Errno(err, syscall.EIO))
	return m
}

func (e *engine) device() *wg.Device {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dev
}

func (e *engine) setup(req *ctl.Msg) *ctl.Msg {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.dev != nil {
		return ctl.Fail(fmt.Errorf("engine: set up twice: %w", syscall.EALREADY))
	}
	var setup ctl.Setup
	if err := ctl.Decode(req.Body, &setup); err != nil {
		return ctl.Fail(fmt.Errorf("engine: setup: %w", err))
	}
	s := setup.Flow
	e.verbose.Store(setup.Verbose)
	files := req.Files
	req.Files = nil // ipc.Open takes them, also when it fails
	dev, err := ipc.Open(s, files, e.mtu, e.verbosef)
	if err != nil {
		return ctl.Fail(err)
	}
	if setup.Held {
		if err := tun.Hold(dev, true); err != nil {
			dev.Close()
			return ctl.Fail(fmt.Errorf("engine: setup: held: %v: %w", err, syscall.EOPNOTSUPP))
		}
	}
	timers, err := wg.TimersFromEnv(wg.DefaultTimers())
	if err != nil {
		dev.Close()
		return ctl.Fail(err)
	}
	tr := udp.New(udp.OptionsFromEnv(udp.Options{Logf: e.verbosef, Sockets: opener{e}}))
	d, err := wg.New(dev, tr, wg.Options{Logf: e.logf, Timers: timers, ListenPort: setup.ListenPort})
	if err != nil {
		dev.Close()
		return ctl.Fail(fmt.Errorf("engine: starting the WireGuard device: %w", err))
	}
	e.dev, e.tdev = d, dev
	close(e.up)
	e.verbosef("up: %s flow on %s, listen port %d", s.Mode, s.Format.Name, setup.ListenPort)
	return nil
}

func (e *engine) call(m *ctl.Msg) (*ctl.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return e.conn.Call(ctx, m)
}

// mtu asks the front for the interface's MTU.
func (e *engine) mtu() (int, error) {
	if m := e.pushedMTU.Load(); m > 0 {
		return int(m), nil
	}
	rep, err := e.call(&ctl.Msg{Op: ctl.OpMTU})
	if err != nil {
		return 0, err
	}
	var n int
	if err := ctl.Decode(rep.Body, &n); err != nil {
		return 0, fmt.Errorf("engine: mtu answer: %w", err)
	}
	return n, nil
}

// opener is the udp.SocketOpener that asks the front.
type opener struct{ e *engine }

// Open asks for a socket of one family on port; the front chooses its
// fwmark and buffer sizes from the configuration it holds.
func (o opener) Open(v6 bool, port uint16, _ uint32, _ int) (*os.File, error) {
	rep, err := o.e.call(&ctl.Msg{Op: ctl.OpSocket, Body: ctl.Body(ctl.SocketRequest{V6: v6, Port: port})})
	if err != nil {
		return nil, err
	}
	if len(rep.Files) != 1 {
		for _, f := range rep.Files {
			f.Close()
		}
		return nil, fmt.Errorf("engine: the front answered a socket request with %d descriptors", len(rep.Files))
	}
	return rep.Files[0], nil
}

func (o opener) SetMark(f *os.File, mark uint32) error {
	_, err := o.e.call(&ctl.Msg{Op: ctl.OpSetMark, Body: ctl.Body(mark), Files: []*os.File{f}})
	return err
}
