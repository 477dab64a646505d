package demo

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"ptun/netns"
)

// daemon is one ptun process running in a testbed host.
type daemon struct {
	host   string // "a" or "b", for messages
	ifname string
	sock   string
	cmd    *exec.Cmd
	output *tailBuffer   // the last of its stdout and stderr
	done   chan struct{} // closed once the process has exited and been reaped
	err    error         // what Wait returned; read only after done is closed
}

// startDaemon starts `bin -f ifname` inside ns. A stale socket left by a
// dead daemon is removed; a live one is an error, since two daemons must not
// share a socket path.
func startDaemon(ns *netns.NS, host, bin, ifname, sock string, env []string) (*daemon, error) {
	if err := claimSocket(sock); err != nil {
		return nil, err
	}
	d := &daemon{host: host, ifname: ifname, sock: sock, output: newTailBuffer(64 << 10), done: make(chan struct{})}
	d.cmd = exec.Command(bin, "-f", ifname)
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stdout = d.output
	d.cmd.Stderr = d.output
	d.cmd.WaitDelay = 2 * time.Second // bounds Wait if a child keeps the output pipe open
	d.cmd.SysProcAttr = daemonProcAttr()
	if err := ns.Start(d.cmd); err != nil {
		return nil, fmt.Errorf("start %s in host %s: %w", bin, host, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// claimSocket checks that no live daemon serves sock, and removes the file
// if a dead one left it behind.
func claimSocket(sock string) error {
	if _, err := os.Lstat(sock); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: another ptun (maybe a leftover demo) serves it", sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// exited reports whether the process has exited.
func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// exitError describes the daemon's exit with the last lines it wrote. Call
// only after done is closed.
func (d *daemon) exitError() error {
	how := "with status 0"
	if d.err != nil {
		how = d.err.Error()
	}
	msg := fmt.Sprintf("ptun %s in host %s: %v (%s)", d.ifname, d.host, ErrDaemonExited, how)
	if tail := d.output.lastLines(15); len(tail) > 0 {
		msg += "; its last output:\n    " + strings.Join(tail, "\n    ")
	} else {
		msg += "; it wrote nothing"
	}
	return &daemonExitError{msg: msg}
}

type daemonExitError struct{ msg string }

func (e *daemonExitError) Error() string { return e.msg }
func (e *daemonExitError) Unwrap() error { return ErrDaemonExited }

// waitSocket waits until the daemon accepts connections on its UAPI socket,
// for at most timeout, failing at once if the daemon exits.
func (d *daemon) waitSocket(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if d.exited() {
			return d.exitError()
		}
		if c, err := net.DialTimeout("unix", d.sock, time.Second); err == nil {
			c.Close()
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("ptun %s in host %s: no UAPI socket %s after %v", d.ifname, d.host, d.sock, timeout)
		}
		select {
		case <-d.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop asks the daemon to exit (SIGTERM), kills it if it has not within
// grace, and waits (bounded) until it is reaped. It removes the socket if
// the daemon left it.
func (d *daemon) stop(grace time.Duration) error {
	var err error
	if !d.exited() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(grace):
			d.cmd.Process.Kill()
			select {
			case <-d.done:
			case <-time.After(5 * time.Second):
				err = fmt.Errorf("ptun %s (pid %d) did not die after SIGKILL", d.ifname, d.cmd.Process.Pid)
			}
		}
	}
	if rmErr := os.Remove(d.sock); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	return err
}

// tailBuffer is an io.Writer that keeps only the last max bytes written.
// It is safe for concurrent use.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(p []byte) (int, error) {
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

// lastLines returns up to n of the last non-empty lines written.
func (t *tailBuffer) lastLines(n int) []string {
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
