package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ptun-vpn/ptun/internal/demo"
	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/probe"
	"github.com/ptun-vpn/ptun/internal/tunnelproc"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// Tunnel addressing: candidate i (from 1) gets 100.64.i.0/24 and
// 2001:db8:100:i::/64, the client .1 and the server .2, and listens on
// basePort+i. All candidates run side by side for the whole bench, so each
// needs its own.
const (
	basePort    = 51820
	tunnelMTU   = 1420
	underlayMTU = 1500
)

// candidate is one thing measured: the raw underlay or a tunnel between
// the client and server hosts.
type candidate struct {
	res   *CandidateResult
	argv  []string // the command, without the interface name; nil for raw and OpenConnect
	env   []string
	index int // from 1 for tunnels; 0 for raw

	oc         *OpenConnectCandidate // for an OpenConnect candidate, else nil
	ptunBinary string                // what an OpenConnect candidate runs as ptun
	tunnel     *ocTunnel             // its processes, once started
	roots      [2]int                // their client and server pids: pids holds them and their descendants
	// cores holds, by test and process label, each round's share of a
	// core the process used (see noteCores); coreTests the tests in order.
	cores     map[string]map[string][]float64
	coreTests []string

	client, server netip.Addr // what traffic is sent to in each host

	ifnames [2]string // client, server
	procs   [2]*tunnelproc.Process
	pids    [2][]int // the processes serving each endpoint

	// keptRSS and keptEnds are the peak memory of processes that a
	// restart stopped (see keepPeak).
	keptRSS  float64
	keptEnds [2]endpointMemory

	mu   sync.Mutex
	dead error // why the candidate can no longer be measured
}

// keepPeak merges a peak memory reading (of peakRSSMiB) into what c keeps
// of processes gone, and returns the merged reading.
func (c *candidate) keepPeak(rss float64, ends [2]endpointMemory) (float64, [2]endpointMemory) {
	c.keptRSS = max(c.keptRSS, rss)
	for i := range ends {
		if ends[i].mib > c.keptEnds[i].mib {
			c.keptEnds[i].mib = ends[i].mib
		}
		if ends[i].largestMiB > c.keptEnds[i].largestMiB {
			c.keptEnds[i].largest, c.keptEnds[i].largestMiB = ends[i].largest, ends[i].largestMiB
		}
	}
	return c.keptRSS, c.keptEnds
}

// setDead records why c stops being measured; the first reason wins.
func (c *candidate) setDead(err error) {
	c.mu.Lock()
	if c.dead == nil {
		c.dead = err
	}
	c.mu.Unlock()
}

// failed returns why c can no longer be measured, or nil.
func (c *candidate) failed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead != nil {
		return c.dead
	}
	for _, p := range c.procs {
		// A process that exited with status 0 put itself in the
		// background; its pids are what counts then.
		if p != nil && p.Exited() && p.Cmd.ProcessState != nil && !p.Cmd.ProcessState.Success() {
			c.dead = p.ExitError()
			return c.dead
		}
	}
	if c.tunnel != nil {
		c.dead = c.tunnel.failed()
	}
	return c.dead
}

// isRaw reports whether c is the underlay itself.
func (c *candidate) isRaw() bool { return c.res.Kind == KindRaw }

// allPIDs returns the processes of both endpoints.
func (c *candidate) allPIDs() []int {
	return append(append([]int(nil), c.pids[0]...), c.pids[1]...)
}

// refreshPIDs finds an OpenConnect candidate's processes again: ocserv
// forks a worker per connection, so a reconnection changes them.
func (c *candidate) refreshPIDs() {
	if c.oc == nil {
		return
	}
	children, _, err := processTree()
	if err != nil {
		return
	}
	for i, root := range c.roots {
		if root != 0 {
			c.pids[i] = descendants(children, root)
		}
	}
}

// start runs the candidate's command in both hosts, gives the interfaces
// their addresses, makes the two ends peers over the UAPI and waits for a
// first echo through the tunnel (the handshake).
func (c *candidate) start(ctx context.Context, tb *demo.Testbed, ifPrefix string) error {
	if c.isRaw() {
		c.client, c.server = tb.UnderlayA.V4, tb.UnderlayB.V4
		return nil
	}
	if c.oc != nil {
		return c.startOpenConnect(ctx, tb, ifPrefix, c.ptunBinary)
	}
	hosts := [2]*netns.NS{tb.A, tb.B}
	names := [2]string{"client", "server"}
	for i := range hosts {
		c.ifnames[i] = fmt.Sprintf("%s%d%c", ifPrefix, c.index, names[i][0])
		sock := uapi.SocketPath(c.ifnames[i])
		argv := append(append([]string(nil), c.argv...), c.ifnames[i])
		env := append([]string{"WG_PROCESS_FOREGROUND=1"}, c.env...)
		p, err := tunnelproc.Start(hosts[i], names[i], argv, c.ifnames[i], sock, env)
		if err != nil {
			return err
		}
		c.procs[i] = p
	}
	for i, h := range hosts {
		if err := c.procs[i].WaitSocket(10 * time.Second); err != nil {
			return err
		}
		if err := h.WaitLink(c.ifnames[i], 10*time.Second); err != nil {
			return err
		}
		if err := h.SetMTU(c.ifnames[i], tunnelMTU); err != nil {
			return err
		}
		v4 := netip.AddrFrom4([4]byte{100, 64, byte(c.index), byte(i + 1)})
		v6 := netip.MustParseAddr(fmt.Sprintf("2001:db8:100:%x::%d", c.index, i+1))
		for _, p := range []netip.Prefix{netip.PrefixFrom(v4, 24), netip.PrefixFrom(v6, 64)} {
			if err := h.AddAddr(c.ifnames[i], p); err != nil {
				return err
			}
		}
		if err := h.SetUp(c.ifnames[i]); err != nil {
			return err
		}
		if i == 0 {
			c.client = v4
		} else {
			c.server = v4
		}
	}
	if err := c.configure(tb); err != nil {
		return err
	}
	for i, h := range hosts {
		dev, ino, err := nsID(h.Path())
		if err != nil {
			return err
		}
		if c.pids[i], err = tunnelProcesses(dev, ino, c.ifnames[i]); err != nil {
			return err
		}
		if len(c.pids[i]) == 0 {
			return fmt.Errorf("no process serving %s found in host %s", c.ifnames[i], names[i])
		}
	}
	// The first packet starts the handshake; an implementation may drop it.
	var err error
	for range 5 {
		if _, err = probe.Ping(ctx, tb.A, c.server, 1, 0, time.Second); err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("no echo through the tunnel (is the handshake failing?): %w", err)
	}
	return c.failed()
}

// configure gives each end a fresh key and the other as its only peer.
func (c *candidate) configure(tb *demo.Testbed) error {
	var priv [2]noise.PrivateKey
	for i := range priv {
		var err error
		if priv[i], err = noise.GeneratePrivateKey(); err != nil {
			return err
		}
	}
	underlay := [2]netip.Addr{tb.UnderlayA.V4, tb.UnderlayB.V4}
	tunnel := [2]netip.Addr{c.client, c.server}
	port := uint16(basePort + c.index)
	for i := range 2 {
		o := 1 - i
		ep := netip.AddrPortFrom(underlay[o], port)
		v6 := netip.MustParseAddr(fmt.Sprintf("2001:db8:100:%x::%d", c.index, o+1))
		cfg := &wgcfg.DeviceConfig{
			PrivateKey:   &priv[i],
			ListenPort:   &port,
			ReplacePeers: true,
			Peers: []wgcfg.PeerConfig{{
				PublicKey:         priv[o].PublicKey(),
				Endpoint:          &ep,
				ReplaceAllowedIPs: true,
				AddAllowedIPs:     []netip.Prefix{netip.PrefixFrom(tunnel[o], 32), netip.PrefixFrom(v6, 128)},
			}},
		}
		if err := uapi.Set(uapi.SocketPath(c.ifnames[i]), cfg); err != nil {
			if ferr := c.failed(); ferr != nil {
				return ferr
			}
			return fmt.Errorf("configuring %s over its UAPI socket: %w", c.ifnames[i], err)
		}
	}
	return nil
}

// peakRSSMiB returns the larger endpoint's peak resident memory (see
// endpointPeak), and each endpoint's (client, server) with the name of
// its largest process.
func (c *candidate) peakRSSMiB() (float64, [2]endpointMemory, error) {
	var most uint64
	var ends [2]endpointMemory
	for i, pids := range c.pids {
		var mems []memory
		exes := map[string]bool{}
		for _, pid := range pids {
			m, err := processMemory(pid)
			if err != nil {
				return 0, ends, fmt.Errorf("reading the peak RSS of pid %d: %w", pid, err)
			}
			mems = append(mems, m)
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			exes[exe] = true
			if mib := float64(m.peak) / (1 << 20); mib > ends[i].largestMiB {
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
				ends[i].largest, ends[i].largestMiB = strings.TrimSpace(string(comm)), mib
			}
		}
		peak := endpointPeak(mems, len(exes) == 1 && !exes[""])
		ends[i].mib = float64(peak) / (1 << 20)
		most = max(most, peak)
	}
	return float64(most) / (1 << 20), ends, nil
}

// endpointMemory is one endpoint's peak resident memory, and its largest
// process's.
type endpointMemory struct {
	mib        float64
	largest    string // the process's name (comm)
	largestMiB float64
}

// stop stops both ends' processes (and any they put in the background),
// bounded in time, and removes their sockets.
func (c *candidate) stop() error {
	var errs []error
	if c.tunnel != nil {
		errs = append(errs, c.tunnel.stop())
	}
	for i, p := range c.procs {
		if p == nil {
			continue
		}
		for _, pid := range c.pids[i] {
			if pid != p.Cmd.Process.Pid {
				if proc, err := os.FindProcess(pid); err == nil {
					proc.Signal(os.Interrupt)
				}
			}
		}
		if err := p.Stop(3 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// commandString is argv as a shell would show it, for reports.
func commandString(argv []string, env []string) string {
	return strings.TrimSpace(strings.Join(env, " ") + " " + strings.Join(argv, " "))
}
