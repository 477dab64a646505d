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
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// Control operations. The front sends setup, get, set and stats; the
// engine sends socket, setmark, mtu and log.
const (
	OpSetup   = "setup"
	OpGet     = "get"
	OpSet     = "set"
	OpStats   = "stats"
	OpSocket  = "socket"
	OpSetMark = "setmark"
	OpMTU     = "mtu"
	OpLog     = "log"
)

// SocketRequest is the body of a socket request: the arguments of
// udp.SocketOpener.Open.
type SocketRequest struct {
	V6      bool   `json:"v6"`
	Port    uint16 `json:"port"`
	Mark    uint32 `json:"mark"`
	BufSize int    `json:"buf_size"`
}

// callTimeout bounds every request the engine makes to its front.
const callTimeout = 10 * time.Second

type engine struct {
	conn    *ctl.Conn
	verbose bool

	mu  sync.Mutex // guards dev
	dev *wg.Device
	up  chan struct{} // closed once dev is set
}

// Run serves as the engine on the control channel f, until the front goes
// away or the packet flow closes. Call it only after CheckConfined.
func Run(f *os.File) error {
	e := &engine{up: make(chan struct{})}
	lvl := os.Getenv("LOG_LEVEL")
	e.verbose = lvl == "verbose" || lvl == "debug"
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
	e.conn.Send(&ctl.Msg{Op: OpLog, Text: fmt.Sprintf(format, args...)})
}

func (e *engine) verbosef(format string, args ...any) {
	if e.verbose {
		e.logf(format, args...)
	}
}

func (e *engine) handle(req *ctl.Msg) *ctl.Msg {
	switch req.Op {
	case OpSetup:
		return e.setup(req)
	}
	for _, f := range req.Files {
		f.Close() // only setup carries files to the engine
	}
	d := e.device()
	if d == nil {
		return ctl.Fail(fmt.Errorf("engine: %s before setup: %w", req.Op, syscall.EAGAIN))
	}
	switch req.Op {
	case OpGet:
		st, err := d.Get()
		if err != nil {
			return failUAPI(err)
		}
		var b strings.Builder
		if err := uapi.WriteGet(&b, st); err != nil {
			return failUAPI(err)
		}
		return &ctl.Msg{Text: b.String()}
	case OpSet:
		cfg, err := uapi.ParseSet(bufio.NewReader(strings.NewReader(req.Text + "\n")))
		if err != nil {
			return failUAPI(err)
		}
		if err := d.Set(cfg); err != nil {
			return failUAPI(err)
		}
		return nil
	case OpStats:
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
	var ue *wgcfg.Error
	if errors.As(err, &ue) && ue.Errno != 0 {
		m.Errno = int(ue.Errno)
	}
	if m.Errno == 0 {
		m.Errno = int(syscall.EIO)
	}
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
		for _, f := range req.Files {
			f.Close()
		}
		return ctl.Fail(fmt.Errorf("engine: set up twice: %w", syscall.EALREADY))
	}
	var s ipc.Setup
	if err := json.Unmarshal(req.Body, &s); err != nil {
		for _, f := range req.Files {
			f.Close()
		}
		return ctl.Fail(fmt.Errorf("engine: setup: %w", err))
	}
	dev, err := ipc.Open(s, req.Files, e.mtu, e.verbosef)
	if err != nil {
		return ctl.Fail(err)
	}
	timers, err := wg.TimersFromEnv(wg.DefaultTimers())
	if err != nil {
		dev.Close()
		return ctl.Fail(err)
	}
	tr := udp.New(udp.OptionsFromEnv(udp.Options{Logf: e.verbosef, Sockets: opener{e}}))
	d, err := wg.New(dev, tr, wg.Options{Logf: e.logf, Timers: timers})
	if err != nil {
		dev.Close()
		return ctl.Fail(fmt.Errorf("engine: starting the WireGuard device: %w", err))
	}
	e.dev = d
	close(e.up)
	e.verbosef("engine %d up: %s flow on %s", os.Getpid(), s.Mode, s.Format.Name)
	return nil
}

func (e *engine) call(m *ctl.Msg) (*ctl.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return e.conn.Call(ctx, m)
}

// mtu asks the front for the interface's MTU.
func (e *engine) mtu() (int, error) {
	rep, err := e.call(&ctl.Msg{Op: OpMTU})
	if err != nil {
		return 0, err
	}
	var n int
	if err := json.Unmarshal(rep.Body, &n); err != nil {
		return 0, fmt.Errorf("engine: mtu answer: %w", err)
	}
	return n, nil
}

// opener is the udp.SocketOpener that asks the front.
type opener struct{ e *engine }

func (o opener) Open(v6 bool, port uint16, mark uint32, bufSize int) (*os.File, error) {
	body, _ := json.Marshal(SocketRequest{V6: v6, Port: port, Mark: mark, BufSize: bufSize})
	rep, err := o.e.call(&ctl.Msg{Op: OpSocket, Body: body})
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
	body, _ := json.Marshal(mark)
	_, err := o.e.call(&ctl.Msg{Op: OpSetMark, Body: body, Files: []*os.File{f}})
	return err
}

// Counters decodes a stats answer.
func Counters(rep *ctl.Msg) ([]metrics.Counter, error) {
	var cs []metrics.Counter
	if err := json.Unmarshal(rep.Body, &cs); err != nil {
		return nil, fmt.Errorf("engine: stats answer: %w", err)
	}
	return cs, nil
}
