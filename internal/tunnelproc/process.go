// Package tunnelproc runs one tunnel implementation's process (ptun,
// wireguard-go, or any program with the same command contract: `COMMAND
// IFNAME` creates interface IFNAME and serves its UAPI socket) inside a
// network namespace, and stops it. `ptun demo`, `ptun bench` and their tests
// share it.
package tunnelproc

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/netns"
)

// ErrExited is wrapped by the error a Process gives once it has exited
// while still needed; the error's text ends with the last lines it wrote.
var ErrExited = errors.New("tunnel process exited")

// Process is one tunnel process running in a namespace. Its methods are safe
// for concurrent use.
type Process struct {
	Host   string // the host's name, for messages
	IfName string
	Sock   string // the UAPI socket it serves
	Cmd    *exec.Cmd

	output *TailBuffer   // the last of its stdout and stderr
	done   chan struct{} // closed once the process has exited and been reaped
	err    error         // what Wait returned; read only after done is closed
}

// Start runs argv inside ns with env added to this process's environment,
// as the process that will serve sock for interface ifname (argv normally
// ends with ifname). A stale socket left by a dead process is removed; a
// live one is an error, since two processes must not share a socket path.
// The process gets its own process group (a Ctrl-C meant for the caller
// reaches only the caller, which then stops it in order) and, on Linux, is
// killed if the caller dies without stopping it.
func Start(ns *netns.NS, host string, argv []string, ifname, sock string, env []string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("tunnelproc: empty command")
	}
	if err := claimSocket(sock); err != nil {
		return nil, err
	}
	p := &Process{Host: host, IfName: ifname, Sock: sock, output: NewTailBuffer(64 << 10), done: make(chan struct{})}
	p.Cmd = exec.Command(argv[0], argv[1:]...)
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout = p.output
	p.Cmd.Stderr = p.output
	p.Cmd.WaitDelay = 2 * time.Second // bounds Wait if a child keeps the output pipe open
	p.Cmd.SysProcAttr = procAttr()
	if err := ns.Start(p.Cmd); err != nil {
		return nil, fmt.Errorf("start %s in host %s: %w", argv[0], host, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// claimSocket checks that no live process serves sock, and removes the file
// if a dead one left it behind.
func claimSocket(sock string) error {
	if _, err := os.Lstat(sock); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: another tunnel (maybe a leftover demo or bench) serves it", sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// Done returns a channel closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitError describes the process's exit with the last lines it wrote, as
// an error wrapping ErrExited. Call only after Done is closed.
func (p *Process) ExitError() error {
	how := "with status 0"
	if p.err != nil {
		how = p.err.Error()
	}
	msg := fmt.Sprintf("%s %s in host %s: %v (%s)", filepath.Base(p.Cmd.Path), p.IfName, p.Host, ErrExited, how)
	if tail := p.output.LastLines(15); len(tail) > 0 {
		msg += "; its last output:\n    " + strings.Join(tail, "\n    ")
	} else {
		msg += "; it wrote nothing"
	}
	return &exitError{msg: msg}
}

type exitError struct{ msg string }

func (e *exitError) Error() string { return e.msg }
func (e *exitError) Unwrap() error { return ErrExited }

// WaitSocket waits until something accepts connections on the UAPI socket,
// for at most timeout. It fails at once if the process exits with an error;
// a process that exits with status 0 is taken to have put itself in the
// background (as `wireguard-go IFNAME` does), and the wait goes on.
func (p *Process) WaitSocket(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	done := p.done
	for {
		if done == nil || p.Exited() {
			if p.err != nil {
				return p.ExitError()
			}
			done = nil // daemonized: nothing more to learn from the parent
		}
		if c, err := net.DialTimeout("unix", p.Sock, time.Second); err == nil {
			c.Close()
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s %s in host %s: no UAPI socket %s after %v", filepath.Base(p.Cmd.Path), p.IfName, p.Host, p.Sock, timeout)
		}
		select {
		case <-done:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop asks the process to exit (SIGTERM), kills it if it has not within
// grace, and waits (bounded) until it is reaped. It removes the socket if
// the process left it.
func (p *Process) Stop(grace time.Duration) error {
	var err error
	if !p.Exited() {
		p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			p.Cmd.Process.Kill()
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				err = fmt.Errorf("%s %s (pid %d) did not die after SIGKILL", filepath.Base(p.Cmd.Path), p.IfName, p.Cmd.Process.Pid)
			}
		}
	}
	if rmErr := os.Remove(p.Sock); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	return err
}

// TailBuffer is an io.Writer that keeps only the last max bytes written.
// It is safe for concurrent use.
type TailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

// NewTailBuffer returns a TailBuffer keeping the last max bytes.
func NewTailBuffer(max int) *TailBuffer { return &TailBuffer{max: max} }

func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.max {
		p = p[len(p)-t.max:]
		t.buf = t.buf[:0]
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// Bytes returns a copy of what the buffer holds.
func (t *TailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.buf)
}

// LastLines returns up to n of the last non-empty lines written.
func (t *TailBuffer) LastLines(n int) []string {
	t.mu.Lock()
	text := string(bytes.TrimRight(t.buf, "\n"))
	t.mu.Unlock()
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
