package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/probe"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/uapi"
)

// Run is `ptun demo`. As root, it builds a Testbed, starts ptun in both
// hosts, and writes to w, with progress lines as it goes: ping through the
// tunnel and on the raw link (IPv4 and IPv6), a TCP bulk transfer of
// opts.Duration each way through both, with the tunnel/raw ratio, and a
// summary of each daemon's peer and counters. Everything it created is
// removed before it returns, whether it succeeds, fails, panics or ctx is
// cancelled (the caller wires SIGINT and SIGTERM to ctx).
func Run(ctx context.Context, opts Options, w io.Writer) (err error) {
	opts = opts.withDefaults()
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	if err := checkTUN(); err != nil {
		return err
	}
	p := &printer{w: w}
	p.printf("ptun demo: two hosts in network namespaces, a ptun tunnel between them\n\n")

	p.printf("  creating hosts a and b and the underlay veth ... ")
	tb, err := NewTestbed(opts)
	if err != nil {
		p.printf("failed\n")
		return err
	}
	defer func() {
		p.printf("\n  cleaning up: stopping ptun, deleting %s and %s ... ", tb.A.Name, tb.B.Name)
		if cerr := tb.Close(); cerr != nil {
			p.printf("failed\n")
			err = errors.Join(err, cerr)
		} else {
			p.printf("done\n")
		}
	}()
	// Cancelling tears the testbed down at once, which ends whatever step
	// is under way; the deferred Close then waits for the teardown.
	stopTeardown := context.AfterFunc(ctx, func() { tb.Close() })
	defer stopTeardown()

	// A daemon's death cancels the measurements (see below); why turns the
	// error of the step that noticed into the reason it failed.
	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	why := func(err error) error {
		if parent.Err() != nil {
			return parent.Err()
		}
		if derr := tb.DaemonError(); derr != nil {
			return derr
		}
		return err
	}
	failed := func(err error) error { // ends a progress line
		err = why(err)
		if parent.Err() != nil {
			p.printf("cancelled\n")
		} else {
			p.printf("failed\n")
		}
		return err
	}

	p.printf("%s, %s\n", tb.A.Name, tb.B.Name)
	p.printf("    underlay %s/%d <-> %s/%d, %s/%d <-> %s/%d, MTU %d\n",
		tb.UnderlayA.V4, underlayBits4, tb.UnderlayB.V4, underlayBits4,
		tb.UnderlayA.V6, underlayBits6, tb.UnderlayB.V6, underlayBits6, underlayMTU)

	bin := opts.PtunBinary
	if bin == "" {
		bin, _ = os.Executable()
	}
	p.printf("  starting %s -f %s / %s in the hosts, configuring peers over UAPI ... ", bin, tb.TunA, tb.TunB)
	if err := tb.StartPtun(); err != nil {
		return failed(err)
	}
	p.printf("ok\n")
	p.printf("    tunnel %s/%d <-> %s/%d, %s/%d <-> %s/%d, MTU %d, port %d\n",
		tb.TunnelA.V4, tunnelBits4, tb.TunnelB.V4, tunnelBits4,
		tb.TunnelA.V6, tunnelBits6, tb.TunnelB.V6, tunnelBits6, tunnelMTU, listenPort)
	dead := tb.daemonDone()
	go func() {
		select {
		case <-dead:
			cancel(tb.DaemonError())
		case <-ctx.Done():
		}
	}()

	p.printf("  handshake: first echo through the tunnel ... ")
	hs, err := firstEcho(ctx, tb.A, tb.TunnelB.V4, 5)
	if err != nil {
		return failed(fmt.Errorf("no reply through the tunnel (is the handshake failing?): %w", err))
	}
	p.printf("answered after %s (includes the handshake)\n", fmtDur(hs))

	const echoes = 5
	p.printf("\nPing from a to b, %d echoes, round trip min / median / max:\n", echoes)
	for _, c := range []struct {
		path string
		dst  netip.Addr
	}{
		{"raw link", tb.UnderlayB.V4}, {"tunnel", tb.TunnelB.V4},
		{"raw link", tb.UnderlayB.V6}, {"tunnel", tb.TunnelB.V6},
	} {
		fam := "IPv4"
		if c.dst.Is6() {
			fam = "IPv6"
		}
		p.printf("  %-8s  %s  %-16s ", c.path, fam, c.dst)
		rtts, err := probe.Ping(ctx, tb.A, c.dst, echoes, 200*time.Millisecond, 2*time.Second)
		if len(rtts) > 0 {
			p.printf("%s / %s / %s", fmtDur(slices.Min(rtts)), fmtDur(median(rtts)), fmtDur(slices.Max(rtts)))
			if len(rtts) < echoes {
				p.printf("  (%d of %d answered)", len(rtts), echoes)
			}
			p.printf("\n")
		} else {
			p.printf("no replies\n")
		}
		if err != nil && len(rtts) == 0 {
			return why(err)
		}
	}

	p.printf("\nTCP bulk transfer, %v each, 128 KiB writes:\n", opts.Duration)
	type run struct {
		name     string
		from, to string
		tunnel   bool
		bps      float64
	}
	runs := []*run{
		{name: "up", from: "a", to: "b"},
		{name: "up", from: "a", to: "b", tunnel: true},
		{name: "down", from: "b", to: "a"},
		{name: "down", from: "b", to: "a", tunnel: true},
	}
	for _, r := range runs {
		path, from, to, dst := "raw link", tb.A, tb.B, tb.UnderlayB.V4
		if r.from == "b" {
			from, to, dst = tb.B, tb.A, tb.UnderlayA.V4
		}
		if r.tunnel {
			path, dst = "tunnel", tb.TunnelB.V4
			if r.from == "b" {
				dst = tb.TunnelA.V4
			}
		}
		p.printf("  %-4s (%s->%s) %-8s to %-12s ... ", r.name, r.from, r.to, path, dst)
		bps, err := tcpThroughput(ctx, from, to, dst, opts.Duration)
		if err != nil {
			return failed(err)
		}
		r.bps = bps
		p.printf("%s\n", fmtRate(bps))
	}
	p.printf("\n")
	tw := tabwriter.NewWriter(p, 2, 8, 3, ' ', 0)
	fmt.Fprintf(tw, "  direction\traw link\ttunnel\ttunnel/raw\n")
	for i := 0; i < len(runs); i += 2 {
		raw, tun := runs[i], runs[i+1]
		fmt.Fprintf(tw, "  %s (%s->%s)\t%s\t%s\t%s\n", raw.name, raw.from, raw.to,
			fmtRate(raw.bps), fmtRate(tun.bps), fmtRatio(tun.bps/raw.bps))
	}
	tw.Flush()

	p.printf("\nptun status:\n")
	for _, h := range []struct{ host, ifname, sock string }{{"a", tb.TunA, tb.SockA}, {"b", tb.TunB, tb.SockB}} {
		if err := summarize(p, h.host, h.ifname, h.sock); err != nil {
			return why(err)
		}
	}
	if opts.TunnelOnly {
		return why(nil)
	}
	if err := remote(ctx, p, tb, bin, opts.Duration, runs[0].bps, runs[2].bps); err != nil {
		return why(err)
	}
	return why(nil)
}

// firstEcho sends up to tries echoes, one a second, until one is answered,
// and returns the time from the first send to that answer. An
// implementation may queue the packet that starts the handshake, or drop it.
func firstEcho(ctx context.Context, from *netns.NS, dst netip.Addr, tries int) (time.Duration, error) {
	start := time.Now()
	var err error
	for range tries {
		if _, err = probe.Ping(ctx, from, dst, 1, 0, time.Second); err == nil {
			return time.Since(start), nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	return 0, err
}

// summarize prints what `ptun show` would: peers, handshake, bytes, drops.
func summarize(p *printer, host, ifname, sock string) error {
	st, err := uapi.Get(sock)
	if err != nil {
		return fmt.Errorf("reading %s's state: %w", ifname, err)
	}
	// Counters are ptun's own extension of the protocol: a daemon without
	// them (wireguard-go, an older ptun) still gets the rest of the summary.
	stats, statsErr := uapi.Stats(sock)
	p.printf("  %s in host %s, listening on port %d\n", ifname, host, st.ListenPort)
	for _, peer := range st.Peers {
		hs := "no handshake yet"
		if !peer.LastHandshake.IsZero() {
			hs = fmt.Sprintf("handshake done %s ago", time.Since(peer.LastHandshake).Round(time.Second))
		}
		p.printf("    peer %s at %s: %s, received %s, sent %s\n",
			shortKey(peer.PublicKey.Base64()), peer.Endpoint, hs, fmtBytes(peer.RxBytes), fmtBytes(peer.TxBytes))
	}
	if statsErr != nil {
		p.printf("    drops: not reported (%v)\n", statsErr)
	} else {
		p.printf("    drops: %s\n", dropSummary(stats))
	}
	return nil
}

// dropSummary lists the non-zero drop counters, or says there were none.
func dropSummary(stats []metrics.Counter) string {
	var parts []string
	var total uint64
	for _, c := range stats {
		if strings.HasPrefix(c.Name, "drop") && c.Value > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", c.Name, c.Value))
			total += c.Value
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}

func shortKey(k string) string {
	if len(k) > 10 {
		return k[:10] + "…"
	}
	return k
}

// printer writes to w, remembering the first error so the demo's text
// output never needs checking line by line.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) Write(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	n, err := p.w.Write(b)
	p.err = err
	return n, err
}

func (p *printer) printf(format string, args ...any) { fmt.Fprintf(p, format, args...) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

// fmtRatio prints r as a percentage, with a decimal when it is small.
func fmtRatio(r float64) string {
	if r < 0.1 {
		return fmt.Sprintf("%.1f%%", 100*r)
	}
	return fmt.Sprintf("%.0f%%", 100*r)
}

func fmtRate(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", bps/1e9)
	default:
		return fmt.Sprintf("%.1f Mbit/s", bps/1e6)
	}
}

func fmtBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, suffix := float64(n), ""
	for _, s := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= unit
		suffix = s
		if v < unit {
			break
		}
	}
	return fmt.Sprintf("%.1f %s", v, suffix)
}
