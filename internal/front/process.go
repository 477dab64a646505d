package front

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/ptun-vpn/ptun/internal/ctl"
)

// An EngineProcess is an engine process started with its control channel:
// what the fronts of the OpenConnect engines (the gateway's and ptun
// connect's) share. The WireGuard supervisor has its own, with rate-limited
// logs and socket grants.
type EngineProcess struct {
	Cmd    *exec.Cmd
	Conn   *ctl.Conn
	Exited chan struct{} // closed once the process is reaped
}

// maxOCEngineRequest bounds an OpenConnect engine's requests.
const maxOCEngineRequest = 64 << 10

// StartEngineProcess starts cmd with the control channel on descriptor 3
// (ExtraFiles[0]), relays its stderr to logf line by line, escaped, as
// "LABEL PID: …", and serves handler on the channel, whose requests are
// limited to 64 KiB. On error nothing is left running.
func StartEngineProcess(cmd *exec.Cmd, label string, logf func(string, ...any), handler func(p *EngineProcess, req *ctl.Msg) *ctl.Msg) (_ *EngineProcess, err error) {
	a, b, err := ctl.Pair()
	if err != nil {
		return nil, err
	}
	if len(cmd.ExtraFiles) == 0 {
		cmd.ExtraFiles = []*os.File{b}
	} else {
		cmd.ExtraFiles[0] = b
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		a.Close()
		b.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		a.Close()
		b.Close()
		return nil, fmt.Errorf("starting the %s: %w", label, err)
	}
	b.Close()
	p := &EngineProcess{Cmd: cmd, Exited: make(chan struct{})}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		relayLines(stderr, func(line string) { logf("%s %d: %s", label, cmd.Process.Pid, EscapeLine(line)) })
	}()
	go func() {
		<-logged // Wait closes the pipe: read it to the end first
		cmd.Wait()
		close(p.Exited)
	}()
	if p.Conn, err = ctl.FromFile(a, func(req *ctl.Msg) *ctl.Msg { return handler(p, req) }); err != nil {
		cmd.Process.Kill()
		<-p.Exited
		return nil, err
	}
	p.Conn.LimitRequests(maxOCEngineRequest)
	go p.Conn.Run()
	return p, nil
}

// relayLines calls line with each line r gives (a longer one in pieces).
func relayLines(r io.Reader, line func(string)) {
	br := bufio.NewReaderSize(r, maxLogLine)
	for {
		b, err := br.ReadSlice('\n')
		if len(b) > 0 {
			line(strings.TrimSuffix(string(b), "\n"))
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}
