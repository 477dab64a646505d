package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/engine"
	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/gomaxprocs"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/telemetry"
)

// clientFlags are the flags up, down and status share.
func clientFlags(name string) (*flagSetWith, *client.Options) {
	fs := newFlagSet(name)
	o := &client.Options{}
	fs.StringVar(&o.Profiles, "profiles", profile.DefaultDir, "where profiles are stored")
	fs.StringVar(&o.State, "state", client.DefaultStateDir, "where up records what it applied")
	return &flagSetWith{fs}, o
}

// runUp is `ptun up NAME [--kill-switch] [--gateway G] [--via udp|tls]
// [--foreground]`: it starts the profile's daemon (client.Run, or
// client.UpTLS with --via tls) in the background and returns once traffic
// passes; with --foreground it is that daemon, until
// SIGTERM or SIGINT takes the tunnel down (as a systemd unit runs it).
func runUp(args []string) error {
	fs, o := clientFlags("up")
	fs.BoolVar(&o.KillSwitch, "kill-switch", false, "let nothing leave the host but through the tunnel, to the gateways, and on loopback")
	fs.DurationVar(&o.Wait, "wait", 10*time.Second, "how long to wait for the first handshake")
	fs.StringVar(&o.Gateway, "gateway", "", "the profile's gateway to use first (default: its first)")
	foreground := fs.Bool("foreground", false, "stay in the foreground, logging to stderr, until SIGTERM or SIGINT")
	logFile := fs.String("log", "", "append the daemon's log to FILE (default: stderr with --foreground, else syslog)")
	ipcFlag := fs.String("ipc", os.Getenv(ipc.EnvIPC), "how packets reach the engine: fd, shm, seqpacket or inproc")
	metricsFlag := fs.String("metrics", "", "serve /metrics and /healthz over plain HTTP on `ADDR` (ADDRESS:PORT, such as 127.0.0.1:9587; default: off)")
	via := fs.String("via", "auto", "how to reach the gateway: auto (WireGuard over UDP, falling back to the gateway's TLS listener when UDP gets no handshake), udp (never TLS) or tls (only its TLS listener)")
	name, err := oneName(fs, args)
	if err != nil {
		return err
	}
	if *via != "auto" && *via != "udp" && *via != "tls" {
		return fmt.Errorf("--via %q: give auto, udp or tls", *via)
	}
	mode, err := ipc.ParseMode(*ipcFlag)
	if err != nil {
		return fmt.Errorf("--ipc: %w", err)
	}
	if o.Metrics, err = telemetry.ParseAddr(*metricsFlag); err != nil {
		return err
	}
	if err := profile.CheckName(name); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("ptun up needs root (it creates an interface and sets routes): run it with sudo")
	}
	start := time.Now()
	if !*foreground && os.Getenv(readyFDEnv) == "" {
		if code := daemonize(append([]string{"up"}, args...)); code != 0 {
			return errReported
		}
		how := "handshake"
		if *via == "tls" {
			how = "over TLS, session up"
		} else if s, err := client.StatusOf(name, *o); err == nil && s.State.Via == client.ViaTLS {
			how = "no handshake over UDP: over TLS, session up"
		}
		fmt.Fprintf(stdout, "%s is up on %s (%s after %v)\n", name, client.Interface(name), how, time.Since(start).Round(time.Millisecond))
		return nil
	}
	if err := front.DropCapabilities(); err != nil {
		readyReporter()(err)
		return err
	}
	ready := readyReporter()
	logger, closeLog, err := openLog(*logFile, *foreground, client.Interface(name))
	if err != nil {
		ready(err)
		return err
	}
	defer closeLog()
	gomaxprocs.Apply()
	o.Logf = logger.Printf
	if level := os.Getenv("LOG_LEVEL"); level == "verbose" || level == "debug" {
		o.Verbosef = logger.Printf
	}
	o.Mode = mode
	ifname := client.Interface(name)
	o.EngineCommand = func() (*exec.Cmd, error) { return engine.Command(ifname, os.Args[0], engineRole, ifname) }
	// The engine of the TLS path, for a fallback (and --via tls).
	o.TLSEngineCommand = func() (*exec.Cmd, error) { return engine.Command(ifname, os.Args[0], ocClientEngineRole, ifname) }
	if *via == "udp" {
		o.TLSEngineCommand = nil // no fallback
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if *via == "tls" {
		co := client.ConnectOptions{Options: *o}
		if co.Mode == ipc.Inproc {
			co.Mode = ipc.FD // the OpenConnect engine always runs confined
		}
		if co.Verbosef != nil {
			co.Verbose = true
		}
		co.EngineCommand = o.TLSEngineCommand
		err = client.UpTLS(ctx, name, co, func(err error) {
			if err == nil {
				logger.Printf("%s is up on %s over TLS (after %v)", name, ifname, time.Since(start).Round(time.Millisecond))
			}
			ready(err)
		})
	} else {
		err = client.Run(ctx, name, *o, func(err error) {
			if err == nil {
				logger.Printf("%s is up on %s (after %v)", name, ifname, time.Since(start).Round(time.Millisecond))
			}
			ready(err)
		})
	}
	if err != nil {
		logger.Printf("%s: %v", name, err)
		return errReported
	}
	logger.Printf("%s is down", name)
	return nil
}

// runDown is `ptun down NAME`.
func runDown(args []string) error {
	fs, o := clientFlags("down")
	name, err := oneName(fs, args)
	if err != nil {
		return err
	}
	if err := client.Down(name, *o); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s is down\n", name)
	return nil
}

// runStatus is `ptun status NAME`.
func runStatus(args []string) error {
	fs, o := clientFlags("status")
	name, err := oneName(fs, args)
	if err != nil {
		return err
	}
	s, err := client.StatusOf(name, *o)
	if err != nil {
		return err
	}
	if s.State.Kind == client.KindOpenConnect {
		printConnectStatus(name, s)
		return nil
	}
	if !s.State.Revoked.IsZero() {
		fmt.Fprintf(stdout, "%s: REVOKED by the gateway at %s: the tunnel is down and nothing is retried\n  run: ptun down %s, then ptun join with a new invite\n",
			name, s.State.Revoked.Format(time.RFC3339), name)
		return nil
	}
	hs := "none yet"
	if !s.LastHandshake.IsZero() {
		hs = time.Since(s.LastHandshake).Round(time.Second).String() + " ago"
	}
	fmt.Fprintf(stdout, "%s: up on %s since %s\n  gateway %s at %s, latest handshake %s, received %d B, sent %d B\n",
		name, s.State.Interface, s.State.Since.Format(time.RFC3339), s.State.Gateway, s.Endpoint, hs, s.RxBytes, s.TxBytes)
	if s.State.Via == client.ViaTLS {
		path := s.State.Path
		if path == "" {
			path = "connecting"
		}
		fmt.Fprintf(stdout, "  over TLS (UDP gets no handshake): path %s; WireGuard tries UDP again every 10 s\n", path)
	}
	if !s.State.Refreshed.IsZero() {
		fmt.Fprintf(stdout, "  profile refreshed %s ago\n", time.Since(s.State.Refreshed).Round(time.Second))
	}
	if s.State.Problem != "" {
		fmt.Fprintf(stdout, "  problem: %s (retrying)\n", s.State.Problem)
	}
	return nil
}

// printConnectStatus shows a ptun connect tunnel.
func printConnectStatus(name string, s *client.Status) {
	st := s.State
	if !st.GaveUp.IsZero() {
		fmt.Fprintf(stdout, "%s: GAVE UP at %s: %s; nothing is retried and the host configuration (kill switch included) stays\n  run: ptun down %s, then ptun connect again\n",
			name, st.GaveUp.Format(time.RFC3339), st.Problem, name)
		return
	}
	path := st.Path
	if path == "" {
		path = "none (reconnecting)"
	}
	fmt.Fprintf(stdout, "%s: up on %s since %s\n  OpenConnect server %s (%v) as %s, path %s, addresses %v\n  session since %s, %d reconnections, received %d B, sent %d B\n",
		name, st.Interface, st.Since.Format(time.RFC3339), st.Server, st.Endpoint, st.User, path, st.Addresses,
		st.Connected.Format(time.RFC3339), st.Reconnects, s.RxBytes, s.TxBytes)
	if st.Problem != "" {
		fmt.Fprintf(stdout, "  problem: %s (retrying)\n", st.Problem)
	}
}

type flagSetWith struct{ *flag.FlagSet }

func oneName(fs *flagSetWith, args []string) (string, error) {
	pos, err := parseInterspersed(fs.FlagSet, args, 1)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		fmt.Fprintf(os.Stderr, "ptun %s: the profile's name is missing\nrun 'ptun %s -h' for help\n", fs.Name(), fs.Name())
		return "", errUsage
	}
	return pos[0], nil
}
