package demo

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/tunnelproc"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// Options configures a Testbed and Run. The zero value is the demo's
// defaults.
type Options struct {
	// PtunBinary is the ptun executable started in each host as
	// `PtunBinary -f IFNAME`; empty means this process's own executable.
	PtunBinary string

	// Duration is the length of each throughput run in Run (default 5s).
	Duration time.Duration

	// TunnelOnly ends Run after the tunnel between the two hosts, without
	// the remote-access part (a gateway, a lan host, join, up, revoke).
	TunnelOnly bool

	// NamePrefix starts the namespaces' names: NamePrefix-a-RAND and
	// NamePrefix-b-RAND (default "ptun-demo").
	NamePrefix string

	// IfPrefix names the TUN interfaces IfPrefix-a and IfPrefix-b, and so
	// their UAPI sockets; it must be at most 13 bytes (default "ptun").
	// Testbeds that run at the same time need different IfPrefixes.
	IfPrefix string

	// IPv6Underlay makes the peers reach each other over the underlay's
	// IPv6 addresses instead of its IPv4 ones.
	IPv6Underlay bool

	// Env is added to the ptun daemons' environment, e.g. an offload kill
	// switch such as PTUN_DISABLE_UDP_GSO=1.
	Env []string

	// StartTimeout bounds the wait for each daemon's socket and interface
	// (default 10s).
	StartTimeout time.Duration

	// Logf, if not nil, receives progress details.
	Logf func(format string, args ...any)
}

func (o Options) withDefaults() Options {
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.NamePrefix == "" {
		o.NamePrefix = "ptun-demo"
	}
	if o.IfPrefix == "" {
		o.IfPrefix = "ptun"
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 10 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// Addrs is a host's IPv4 and IPv6 address on one interface.
type Addrs struct{ V4, V6 netip.Addr }

// The testbed's fixed addressing (RFC 2544 benchmarking range and RFC 6598
// shared space for IPv4, the RFC 3849 documentation prefix for IPv6).
var (
	underlayA = Addrs{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:db8::1")}
	underlayB = Addrs{netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("2001:db8::2")}
	tunnelA   = Addrs{netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("2001:db8:100::1")}
	tunnelB   = Addrs{netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("2001:db8:100::2")}
)

const (
	underlayBits4, underlayBits6 = 24, 64
	tunnelBits4, tunnelBits6     = 24, 64
	underlayMTU                  = 1500
	tunnelMTU                    = 1420
	listenPort                   = 51820
)

// Testbed is two hosts, A and B, each a network namespace, joined by a veth
// pair (the underlay). After StartPtun, each also runs a ptun daemon and the
// two are peers. Its methods are not safe for concurrent use, except Close,
// which may be called at any time and more than once.
type Testbed struct {
	A, B *netns.NS

	// LinkA and LinkB are the underlay veth's ends, in A and B, with
	// addresses UnderlayA and UnderlayB.
	LinkA, LinkB         string
	UnderlayA, UnderlayB Addrs

	// TunA and TunB name the ptun interfaces in A and B, SockA and SockB
	// their UAPI sockets, TunnelA and TunnelB their addresses. They are set
	// by NewTestbed, but exist only after StartPtun.
	TunA, TunB       string
	SockA, SockB     string
	TunnelA, TunnelB Addrs

	opts Options

	mu      sync.Mutex // guards daemons and closed, so Close may race StartPtun
	daemons []*tunnelproc.Process
	closed  bool

	closeOnce sync.Once
	closeErr  error // set by the first Close
}

// NewTestbed creates hosts A and B and the underlay between them:
// 198.18.0.1/24 and 2001:db8::1/64 on A's end, 198.18.0.2/24 and
// 2001:db8::2/64 on B's, MTU 1500. The caller must Close it.
func NewTestbed(opts Options) (*Testbed, error) {
	opts = opts.withDefaults()
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if len(opts.IfPrefix) > 13 {
		return nil, fmt.Errorf("demo: IfPrefix %q is longer than 13 bytes", opts.IfPrefix)
	}
	var rnd [3]byte
	rand.Read(rnd[:])
	suffix := hex.EncodeToString(rnd[:])
	tb := &Testbed{
		LinkA: "veth-a", LinkB: "veth-b",
		UnderlayA: underlayA, UnderlayB: underlayB,
		TunA: opts.IfPrefix + "-a", TunB: opts.IfPrefix + "-b",
		TunnelA: tunnelA, TunnelB: tunnelB,
		opts: opts,
	}
	tb.SockA, tb.SockB = uapi.SocketPath(tb.TunA), uapi.SocketPath(tb.TunB)
	var err error
	if tb.A, err = netns.New(opts.NamePrefix + "-a-" + suffix); err != nil {
		return nil, err
	}
	if tb.B, err = netns.New(opts.NamePrefix + "-b-" + suffix); err != nil {
		tb.Close()
		return nil, err
	}
	if err := tb.setupUnderlay(); err != nil {
		tb.Close()
		return nil, err
	}
	opts.Logf("hosts %s and %s, underlay %s/%d <-> %s/%d and %s/%d <-> %s/%d, MTU %d",
		tb.A.Name, tb.B.Name,
		tb.UnderlayA.V4, underlayBits4, tb.UnderlayB.V4, underlayBits4,
		tb.UnderlayA.V6, underlayBits6, tb.UnderlayB.V6, underlayBits6, underlayMTU)
	return tb, nil
}

func (tb *Testbed) setupUnderlay() error {
	if err := netns.Veth(tb.A, tb.LinkA, tb.B, tb.LinkB, underlayMTU); err != nil {
		return err
	}
	return addAddrs(tb.A, tb.LinkA, tb.UnderlayA, underlayBits4, underlayBits6,
		tb.B, tb.LinkB, tb.UnderlayB)
}

// addAddrs puts a on ifa in A and b on ifb in B.
func addAddrs(A *netns.NS, ifa string, a Addrs, bits4, bits6 int, B *netns.NS, ifb string, b Addrs) error {
	for _, x := range []struct {
		ns     *netns.NS
		ifname string
		p      netip.Prefix
	}{
		{A, ifa, netip.PrefixFrom(a.V4, bits4)},
		{A, ifa, netip.PrefixFrom(a.V6, bits6)},
		{B, ifb, netip.PrefixFrom(b.V4, bits4)},
		{B, ifb, netip.PrefixFrom(b.V6, bits6)},
	} {
		if err := x.ns.AddAddr(x.ifname, x.p); err != nil {
			return err
		}
	}
	return nil
}

// StartPtun starts ptun in both hosts, waits (bounded) for their sockets and
// interfaces, gives the interfaces their tunnel addresses (100.64.0.1/24 and
// 2001:db8:100::1/64 in A, .2 and ::2 in B) and MTU 1420, and makes the two
// daemons peers over the UAPI: fresh keys, listen port 51820, endpoints on
// the underlay, each allowing the other's tunnel /32 and /128. The
// handshake happens with the first packet sent through.
func (tb *Testbed) StartPtun() error {
	bin := tb.opts.PtunBinary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return fmt.Errorf("demo: finding the ptun binary: %w", err)
		}
	}
	if err := checkTUN(); err != nil {
		return err
	}
	hosts := []struct {
		name   string
		ns     *netns.NS
		ifname string
		sock   string
	}{{"a", tb.A, tb.TunA, tb.SockA}, {"b", tb.B, tb.TunB, tb.SockB}}
	var ds []*tunnelproc.Process
	for _, h := range hosts {
		tb.mu.Lock()
		if tb.closed {
			tb.mu.Unlock()
			return errors.New("demo: testbed closed")
		}
		d, err := tunnelproc.Start(h.ns, h.name, []string{bin, "-f", h.ifname}, h.ifname, h.sock, tb.opts.Env)
		if err == nil {
			tb.daemons = append(tb.daemons, d)
		}
		tb.mu.Unlock()
		if err != nil {
			return err
		}
		tb.opts.Logf("started %s -f %s in host %s (pid %d)", bin, h.ifname, h.name, d.Cmd.Process.Pid)
		ds = append(ds, d)
	}
	for i, h := range hosts {
		if err := ds[i].WaitSocket(tb.opts.StartTimeout); err != nil {
			return err
		}
		if err := h.ns.WaitLink(h.ifname, tb.opts.StartTimeout); err != nil {
			if ds[i].Exited() {
				return ds[i].ExitError()
			}
			return fmt.Errorf("ptun in host %s: %w", h.name, err)
		}
		if err := h.ns.SetMTU(h.ifname, tunnelMTU); err != nil {
			return err
		}
	}
	if err := addAddrs(tb.A, tb.TunA, tb.TunnelA, tunnelBits4, tunnelBits6, tb.B, tb.TunB, tb.TunnelB); err != nil {
		return err
	}
	for _, h := range hosts {
		if err := h.ns.SetUp(h.ifname); err != nil {
			return err
		}
	}
	if err := tb.configurePeers(); err != nil {
		return err
	}
	return tb.DaemonError()
}

// configurePeers gives each daemon a fresh key and the other as its peer.
func (tb *Testbed) configurePeers() error {
	privA, err := noise.GeneratePrivateKey()
	if err != nil {
		return err
	}
	privB, err := noise.GeneratePrivateKey()
	if err != nil {
		return err
	}
	epA := netip.AddrPortFrom(tb.UnderlayA.V4, listenPort)
	epB := netip.AddrPortFrom(tb.UnderlayB.V4, listenPort)
	if tb.opts.IPv6Underlay {
		epA = netip.AddrPortFrom(tb.UnderlayA.V6, listenPort)
		epB = netip.AddrPortFrom(tb.UnderlayB.V6, listenPort)
	}
	for _, side := range []struct {
		host, sock string
		priv       noise.PrivateKey
		peer       noise.PublicKey
		peerEP     netip.AddrPort
		peerTunnel Addrs
	}{
		{"a", tb.SockA, privA, privB.PublicKey(), epB, tb.TunnelB},
		{"b", tb.SockB, privB, privA.PublicKey(), epA, tb.TunnelA},
	} {
		port := uint16(listenPort)
		cfg := &wgcfg.DeviceConfig{
			PrivateKey:   &side.priv,
			ListenPort:   &port,
			ReplacePeers: true,
			Peers: []wgcfg.PeerConfig{{
				PublicKey:         side.peer,
				Endpoint:          &side.peerEP,
				ReplaceAllowedIPs: true,
				AddAllowedIPs: []netip.Prefix{
					netip.PrefixFrom(side.peerTunnel.V4, 32),
					netip.PrefixFrom(side.peerTunnel.V6, 128),
				},
			}},
		}
		if err := uapi.Set(side.sock, cfg); err != nil {
			if derr := tb.DaemonError(); derr != nil {
				return derr
			}
			return fmt.Errorf("configuring ptun in host %s over %s: %w", side.host, side.sock, err)
		}
		tb.opts.Logf("host %s: listen port %d, peer %s at %s", side.host, port, side.peer.Base64(), side.peerEP)
	}
	return nil
}

// DaemonError returns nil while every ptun daemon started by StartPtun
// runs, and otherwise an error wrapping ErrDaemonExited with the last lines
// the first dead one wrote.
func (tb *Testbed) DaemonError() error {
	tb.mu.Lock()
	ds := tb.daemons
	tb.mu.Unlock()
	for _, d := range ds {
		if d.Exited() {
			return d.ExitError()
		}
	}
	return nil
}

// daemonDone returns a channel closed when any ptun daemon exits; it never
// closes if none was started.
func (tb *Testbed) daemonDone() <-chan struct{} {
	tb.mu.Lock()
	ds := tb.daemons
	tb.mu.Unlock()
	ch := make(chan struct{})
	if len(ds) == 0 {
		return ch
	}
	var once sync.Once
	for _, d := range ds {
		go func() {
			<-d.Done()
			once.Do(func() { close(ch) })
		}()
	}
	return ch
}

// Close stops the daemons (SIGTERM, then SIGKILL after 3s), removes their
// sockets and deletes both namespaces. It is bounded in time, idempotent,
// and safe to call concurrently with StartPtun.
func (tb *Testbed) Close() error {
	tb.closeOnce.Do(tb.close) // later and concurrent callers wait for the first
	return tb.closeErr
}

func (tb *Testbed) close() {
	tb.mu.Lock()
	tb.closed = true
	ds := tb.daemons
	tb.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(ds), len(ds)+4)
	for i, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.Stop(3 * time.Second)
		}()
	}
	wg.Wait()
	for _, ns := range []*netns.NS{tb.A, tb.B} {
		if ns != nil {
			// A process the daemon forked would keep the namespace alive.
			errs = append(errs, ns.KillProcesses(), ns.Close())
		}
	}
	tb.closeErr = errors.Join(errs...)
}

// checkTUN fails with ErrNoTUN unless /dev/net/tun can be opened.
func checkTUN() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoTUN, err)
	}
	f.Close()
	return nil
}
