package demo

import (
	"net"

	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/probe"
)

// The remote-access part of the demo, on the same two hosts: b becomes a
// gateway in front of a third host, lan; a user is invited; a joins and
// comes up; traffic to the lan host; a revoke cuts it off.

var (
	lanGateway = netip.MustParsePrefix("198.18.2.1/24")
	lanHost    = netip.MustParsePrefix("198.18.2.2/24")
)

const (
	gatewayPort = 51830 // the first part's tunnel has 51820
	apiPort     = 8443
)

// remote runs the remote-access part. rawUp and rawDown are the raw link's
// rates measured before, to compare with.
func remote(ctx context.Context, p *printer, tb *Testbed, bin string, d time.Duration, rawUp, rawDown float64) (err error) {
	p.printf("\nRemote access: host b becomes a gateway in front of a lan host, a user is invited,\nhost a joins and comes up\n\n")
	suffix := tb.A.Name[len(tb.A.Name)-6:]
	dir, err := os.MkdirTemp("", "ptun-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	state, profiles, cstate := filepath.Join(dir, "gw"), filepath.Join(dir, "profiles"), filepath.Join(dir, "client")
	iface, profile := "pgw"+suffix, "demo"+suffix[:4]

	p.printf("  creating the lan host %s behind b ... ", lanHost.Addr())
	lan, err := netns.New(tb.opts.NamePrefix + "-lan-" + suffix)
	if err != nil {
		p.printf("failed\n")
		return err
	}
	defer lan.Close()
	if err := netns.Veth(tb.B, "lan0", lan, "lan0", underlayMTU); err != nil {
		p.printf("failed\n")
		return err
	}
	if err := errors.Join(tb.B.AddAddr("lan0", lanGateway), lan.AddAddr("lan0", lanHost)); err != nil {
		p.printf("failed\n")
		return err
	}
	p.printf("ok\n")

	// ptun runs each command in the host it belongs to.
	cmd := func(ns *netns.NS, args ...string) (string, error) {
		c := exec.CommandContext(ctx, bin, args...)
		c.Env = append(os.Environ(), tb.opts.Env...)
		var out strings.Builder
		c.Stdout, c.Stderr = &out, &out
		err := ns.Do(c.Run)
		if err != nil {
			return out.String(), fmt.Errorf("ptun %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
		}
		return out.String(), nil
	}
	step := func(what string, ns *netns.NS, args ...string) (string, error) {
		p.printf("  %s ... ", what)
		out, err := cmd(ns, args...)
		if err != nil {
			p.printf("failed\n")
			return out, err
		}
		p.printf("ok\n")
		return out, nil
	}
	endpoint := netip.AddrPortFrom(tb.UnderlayB.V4, gatewayPort)
	api := netip.AddrPortFrom(tb.UnderlayB.V4, apiPort)
	tlsAddr := netip.AddrPortFrom(tb.UnderlayB.V4, 443)
	if _, err := step(fmt.Sprintf("ptun gateway init (b): endpoint %s, API %s, TLS %s, pool 100.80.0.0/16, route %s, masquerade", endpoint, api, tlsAddr, lanGateway.Masked()),
		tb.B, "gateway", "init", "--state", state, "--interface", iface, "--endpoint", endpoint.String(), "--api", api.String(),
		"--tls", tlsAddr.String(), "--pool", "100.80.0.0/16", "--pool", "2001:db8:80::/64", "--route", lanGateway.Masked().String(), "--masquerade"); err != nil {
		return err
	}
	if _, err := step("ptun gateway user add alice --group eng (b)", tb.B, "gateway", "user", "add", "alice", "--group", "eng", "--state", state); err != nil {
		return err
	}

	p.printf("  ptun gateway run (b) ... ")
	gw := exec.Command(bin, "gateway", "run", "--state", state, "--foreground")
	gw.Env = append(os.Environ(), tb.opts.Env...)
	var gwLog strings.Builder
	gw.Stdout, gw.Stderr = &gwLog, &gwLog
	if err := tb.B.Start(gw); err != nil {
		p.printf("failed\n")
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- gw.Wait() }()
	stopGateway := func() {
		if gw.Process != nil {
			gw.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				gw.Process.Kill()
				<-exited
			}
			gw.Process = nil
		}
	}
	defer stopGateway()
	if err := waitListening(ctx, tb.B, api, exited); err != nil {
		p.printf("failed\n")
		return fmt.Errorf("%w\n%s", err, gwLog.String())
	}
	p.printf("up\n")

	out, err := step("ptun gateway invite alice (b)", tb.B, "gateway", "invite", "alice", "--state", state)
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	invite := lines[len(lines)-1]
	p.printf("    %s\n", invite)

	start := time.Now()
	if _, err := step("ptun join (a)", tb.A, "join", invite, "--name", profile, "--device", "laptop", "--profiles", profiles); err != nil {
		return err
	}
	joined := time.Since(start)
	defer cmd(tb.A, "down", profile, "--profiles", profiles, "--state", cstate)
	if _, err := step("ptun up (a)", tb.A, "up", profile, "--profiles", profiles, "--state", cstate); err != nil {
		return err
	}
	p.printf("    join %s, join + up (to the first handshake) %s\n", fmtDur(joined), fmtDur(time.Since(start)))

	dst := lanHost.Addr()
	p.printf("\n  ping a -> lan %s through the gateway, min / median / max: ", dst)
	rtts, err := probe.Ping(ctx, tb.A, dst, 5, 200*time.Millisecond, 2*time.Second)
	if len(rtts) == 0 {
		p.printf("no replies\n")
		return fmt.Errorf("no reply from the lan host through the gateway: %v", err)
	}
	p.printf("%s / %s / %s\n", fmtDur(slices.Min(rtts)), fmtDur(median(rtts)), fmtDur(slices.Max(rtts)))
	p.printf("  TCP a -> lan ... ")
	up, err := tcpThroughput(ctx, tb.A, lan, dst, d)
	if err != nil {
		p.printf("failed\n")
		return err
	}
	p.printf("%s (%s of the raw link a -> b)\n", fmtRate(up), fmtRatio(up/rawUp))
	// lan -> a: a connection from the lan host to the device's address,
	// routed by the gateway (the masquerade only rewrites what the device
	// starts).
	p.printf("  TCP lan -> a (to the device's address, routed by the gateway) ... ")
	devAddr, err := deviceAddress(tb.A, "pt-"+profile)
	if err != nil {
		p.printf("failed\n")
		return err
	}
	if err := routeVia(lan, netip.MustParsePrefix("100.80.0.0/16"), lanGateway.Addr()); err != nil {
		p.printf("failed\n")
		return err
	}
	down, err := tcpThroughput(ctx, lan, tb.A, devAddr, d)
	if err != nil {
		p.printf("failed (%v)\n", err)
	} else {
		p.printf("%s (%s of the raw link b -> a)\n", fmtRate(down), fmtRatio(down/rawDown))
	}

	if err := fallback(ctx, p, tb, lan, dst, d, func() string {
		out, _ := cmd(tb.A, "status", profile, "--profiles", profiles, "--state", cstate)
		return out
	}); err != nil {
		return err
	}

	p.printf("\n  ptun gateway revoke alice/laptop (b) ... ")
	revoked := time.Now()
	if _, err := cmd(tb.B, "gateway", "revoke", "alice/laptop", "--state", state); err != nil {
		p.printf("failed\n")
		return err
	}
	p.printf("ok\n")
	p.printf("  ping a -> lan after the revoke ... ")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		rtts, _ := probe.Ping(ctx, tb.A, dst, 1, 0, 500*time.Millisecond)
		if len(rtts) == 0 {
			p.printf("cut off: the first echo without a reply left %s after the revoke\n", fmtDur(time.Since(revoked)-500*time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			p.printf("still answered\n")
			return errors.New("the revoked device still reaches the lan host")
		}
	}
	p.printf("\n  stopping the gateway, ptun down (a), deleting the lan host ... ")
	stopGateway()
	if _, err := cmd(tb.A, "down", profile, "--profiles", profiles, "--state", cstate); err != nil {
		p.printf("failed\n")
		return err
	}
	p.printf("done\n")
	return nil
}

// fallback shows ptun up where UDP is blocked: a's network drops UDP to
// the gateway, the tunnel moves to the gateway's TLS listener by itself
// (status says so), traffic goes on; unblocked, it comes back to UDP.
func fallback(ctx context.Context, p *printer, tb *Testbed, lan *netns.NS, dst netip.Addr, d time.Duration, status func() string) error {
	wait := func(what string, limit time.Duration, ok func(string) bool) (time.Duration, error) {
		start := time.Now()
		for time.Since(start) < limit {
			if ok(status()) {
				return time.Since(start), nil
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		return 0, fmt.Errorf("the tunnel did not move %s within %v:\n%s", what, limit, status())
	}
	p.printf("\n  a's network drops UDP to the gateway (nftables): the tunnel falls back to TLS by itself ... ")
	if err := blockUDP(tb.A, tb.UnderlayB.V4); err != nil {
		p.printf("failed\n")
		return err
	}
	defer unblockUDP(tb.A)
	took, err := wait("to TLS", 30*time.Second, func(s string) bool { return strings.Contains(s, "path cstp") })
	if err != nil {
		p.printf("failed\n")
		return err
	}
	p.printf("over TLS (CSTP) after %s, same interface and address\n", fmtDur(took))
	p.printf("  ping a -> lan over TLS, min / median / max: ")
	rtts, err := probe.Ping(ctx, tb.A, dst, 5, 200*time.Millisecond, 2*time.Second)
	if len(rtts) == 0 {
		p.printf("no replies\n")
		return fmt.Errorf("no reply from the lan host over TLS: %v", err)
	}
	p.printf("%s / %s / %s\n", fmtDur(slices.Min(rtts)), fmtDur(median(rtts)), fmtDur(slices.Max(rtts)))
	p.printf("  TCP a -> lan over TLS ... ")
	if r, err := tcpThroughput(ctx, tb.A, lan, dst, d); err != nil {
		p.printf("failed (%v)\n", err)
	} else {
		p.printf("%s\n", fmtRate(r))
	}
	p.printf("  UDP passes again: back to WireGuard ... ")
	if err := unblockUDP(tb.A); err != nil {
		p.printf("failed\n")
		return err
	}
	took, err = wait("back to UDP", 30*time.Second, func(s string) bool { return !strings.Contains(s, "over TLS") })
	if err != nil {
		p.printf("failed\n")
		return err
	}
	p.printf("after %s (a handshake over UDP completed)\n", fmtDur(took))
	return nil
}

// waitListening waits (bounded) until the gateway's API accepts TCP
// connections at ap, seen from inside ns.
func waitListening(ctx context.Context, ns *netns.NS, ap netip.AddrPort, exited <-chan error) error {
	deadline := time.After(20 * time.Second)
	for {
		up := false
		ns.Do(func() error {
			c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond)
			if err == nil {
				c.Close()
				up = true
			}
			return nil
		})
		if up {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("the gateway exited: %v", err)
		case <-deadline:
			return errors.New("the gateway's API did not come up within 20 s")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// deviceAddress is the IPv4 address of interface ifname in ns.
func deviceAddress(ns *netns.NS, ifname string) (netip.Addr, error) {
	var out netip.Addr
	err := ns.Do(func() error {
		i, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		addrs, err := i.Addrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				out = p.Addr()
				return nil
			}
		}
		return fmt.Errorf("%s has no IPv4 address", ifname)
	})
	return out, err
}

// routeVia adds a route to dst via gw in ns.
func routeVia(ns *netns.NS, dst netip.Prefix, gw netip.Addr) error {
	return ns.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{
			Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
			Gw:  gw.AsSlice(),
		})
	})
}
