package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/ptun-vpn/ptun/internal/netns"
)

// ErrNoIperf3 is returned when the iperf3 program is missing. Install the
// iperf3 package (apt-get install iperf3).
var ErrNoIperf3 = errors.New("bench: iperf3 not found in PATH: install the iperf3 package (apt-get install iperf3)")

// iperfPort is the port of the one-off iperf3 server each test starts.
const iperfPort = 5201

// iperfTest is one iperf3 run from the client host to the server host.
type iperfTest struct {
	reverse  bool // server sends (a download); else the client sends
	streams  int  // parallel streams, at least 1
	udp      bool
	rate     float64 // UDP: offered bits/s, over all streams
	size     int     // UDP: datagram payload bytes
	duration time.Duration
}

func (t iperfTest) args(dst netip.Addr) []string {
	secs := max(1, int((t.duration+time.Second-1)/time.Second)) // iperf3 takes whole seconds
	a := []string{"-c", dst.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs),
		"-J", "--connect-timeout", "3000"}
	if t.reverse {
		a = append(a, "-R")
	}
	if t.streams > 1 {
		a = append(a, "-P", strconv.Itoa(t.streams))
	}
	if t.udp {
		a = append(a, "-u", "-b", strconv.FormatFloat(t.rate/float64(max(1, t.streams)), 'f', 0, 64), "-l", strconv.Itoa(t.size))
	}
	return a
}

// serverArgs are the one-off iperf3 server's arguments. It is bound to
// dst, the address the client sends to, so that its UDP socket answers
// from that address whatever source the route back would pick (ptun's
// gateway routes its OpenConnect clients through an interface without an
// address of its own: unbound, the replies left from the underlay's).
func serverArgs(dst netip.Addr) []string {
	return []string{"-s", "-1", "--forceflush", "-p", strconv.Itoa(iperfPort), "-B", dst.String()}
}

// iperfResult is what one run measured at the receiving end.
type iperfResult struct {
	bitsPerSec float64
	bytes      float64
	lossPct    float64 // UDP only
}

// runIperf starts a one-off iperf3 server in server on dst, runs the
// client in client against dst, and returns what the receiver measured. Both
// processes are gone when it returns, also when ctx is cancelled.
func runIperf(ctx context.Context, client, server *netns.NS, dst netip.Addr, t iperfTest) (iperfResult, error) {
	ctx, cancel := context.WithTimeout(ctx, t.duration+30*time.Second)
	defer cancel()

	srv := exec.CommandContext(ctx, "iperf3", serverArgs(dst)...)
	srv.SysProcAttr = childProcAttr()
	srv.WaitDelay = time.Second
	out, err := srv.StdoutPipe()
	if err != nil {
		return iperfResult{}, err
	}
	srvErr := &strings.Builder{}
	srv.Stderr = srvErr
	if err := server.Start(srv); err != nil {
		return iperfResult{}, fmt.Errorf("starting the iperf3 server: %w", err)
	}
	srvDone := make(chan struct{})
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		announced := false
		for sc.Scan() { // drains the pipe until the server exits
			if !announced && strings.Contains(sc.Text(), "Server listening") {
				announced = true
				close(listening)
			}
		}
		srv.Wait()
		close(srvDone)
	}()
	defer func() {
		select {
		case <-srvDone:
		case <-time.After(3 * time.Second):
			srv.Process.Kill()
			<-srvDone
		}
	}()
	select {
	case <-listening:
	case <-srvDone:
		return iperfResult{}, fmt.Errorf("the iperf3 server exited: %s", strings.TrimSpace(srvErr.String()))
	case <-time.After(5 * time.Second):
		return iperfResult{}, errors.New("the iperf3 server did not start listening within 5s")
	case <-ctx.Done():
		return iperfResult{}, ctx.Err()
	}

	cl := exec.CommandContext(ctx, "iperf3", t.args(dst)...)
	cl.SysProcAttr = childProcAttr()
	cl.WaitDelay = time.Second
	stdout := &strings.Builder{}
	cl.Stdout = stdout
	cl.Stderr = stdout
	if err := client.Start(cl); err != nil {
		return iperfResult{}, fmt.Errorf("starting the iperf3 client: %w", err)
	}
	runErr := cl.Wait()
	if ctx.Err() != nil {
		return iperfResult{}, ctx.Err()
	}
	res, perr := parseIperf([]byte(stdout.String()), t.udp)
	if perr != nil {
		if runErr != nil {
			return iperfResult{}, fmt.Errorf("iperf3 %s: %v: %w", strings.Join(t.args(dst), " "), runErr, perr)
		}
		return iperfResult{}, perr
	}
	return res, nil
}

type iperfSum struct {
	Bytes         float64 `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	LostPercent   float64 `json:"lost_percent"`
	Packets       float64 `json:"packets"`
}

// parseIperf reads the receiver's figures from iperf3 -J output.
func parseIperf(b []byte, udp bool) (iperfResult, error) {
	var doc struct {
		Error string `json:"error"`
		End   struct {
			Sum         *iperfSum `json:"sum"`
			SumReceived *iperfSum `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return iperfResult{}, fmt.Errorf("bench: iperf3 output is not JSON (%v): %.200q", err, b)
	}
	if doc.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	s := doc.End.SumReceived
	if s == nil && udp {
		// iperf3 before 3.11 gives UDP results in "sum" only.
		s = doc.End.Sum
	}
	if s == nil || s.BitsPerSecond < 0 || s.Bytes < 0 || s.LostPercent < 0 || s.LostPercent > 100 {
		return iperfResult{}, errors.New("bench: iperf3 output has no receiver summary")
	}
	r := iperfResult{bitsPerSec: s.BitsPerSecond, bytes: s.Bytes}
	if udp {
		r.lossPct = s.LostPercent
	}
	return r, nil
}

// iperfVersion returns iperf3's version line, e.g. "iperf 3.12".
func iperfVersion() string {
	out, err := exec.Command("iperf3", "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	if i := strings.Index(line, " ("); i > 0 {
		line = line[:i]
	}
	return strings.TrimSpace(line)
}
