package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/engine"
	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/gomaxprocs"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/ocengine"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// readyFDEnv names the fd on which a daemonized child reports readiness
// ("ok" or an error line) to the parent that started it.
const readyFDEnv = "PTUN_READY_FD"

// runInterface is `ptun [-f] [--mtu N] [--ipc MODE] [--log FILE] [--metrics ADDR] IFNAME`.
func runInterface(args []string) int {
	fs := flag.NewFlagSet("ptun", flag.ContinueOnError)
	foreground := fs.Bool("f", false, "stay in the foreground")
	fs.BoolVar(foreground, "foreground", false, "stay in the foreground")
	mtu := fs.Int("mtu", 1420, "interface MTU")
	ipcFlag := fs.String("ipc", os.Getenv(ipc.EnvIPC), "how packets reach the engine: fd, shm, seqpacket or inproc (default fd; env "+ipc.EnvIPC+")")
	logFile := fs.String("log", "", "append the daemon's log to `FILE` (default: stderr with -f, else syslog or /var/log/ptun/IFNAME.log; see ptun -h)")
	metricsFlag := fs.String("metrics", "", "serve /metrics and /healthz over plain HTTP on `ADDR` (ADDRESS:PORT, such as 127.0.0.1:9587; default: off)")
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintln(os.Stderr, "run 'ptun -h' for help")
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	name := fs.Arg(0)
	if err := wgcfg.CheckInterfaceName(name); err != nil {
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	if *mtu < 576 || *mtu > 65535 {
		fmt.Fprintf(os.Stderr, "ptun: --mtu %d is out of range (576-65535)\n", *mtu)
		return 1
	}
	mode, err := ipc.ParseMode(*ipcFlag)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ptun: --ipc: %v\n", err)
		return 1
	}
	metricsAddr, err := telemetry.ParseAddr(*metricsFlag)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	// WG_PROCESS_FOREGROUND=1 is wireguard-go's way to ask the same, which
	// tools written for it (wg-quick, benchmarks) use.
	if os.Getenv("WG_PROCESS_FOREGROUND") == "1" {
		*foreground = true
	}
	if !*foreground && os.Getenv(readyFDEnv) == "" {
		return daemonize(args)
	}

	// Before anything else: the front holds only the capabilities it
	// needs from here on (a re-exec that returns here with them).
	if err := front.DropCapabilities(); err != nil {
		readyReporter()(err)
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	ready := readyReporter()
	logger, closeLog, err := openLog(*logFile, *foreground, name)
	if err != nil {
		ready(err) // a daemon's stderr goes nowhere
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	defer closeLog()
	gomaxprocs.Apply()
	if err := serve(name, *mtu, mode, metricsAddr, logger, ready); err != nil {
		if !*foreground || *logFile != "" { // else serve logged it to stderr
			fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		}
		return 1
	}
	return 0
}

// serve runs interface name until a signal or the interface's deletion,
// with its metrics on metricsAddr unless that is the zero value. ready is
// called once with nil when the interface and socket are up, or with the
// error that kept them down.
func serve(name string, mtu int, mode ipc.Mode, metricsAddr netip.AddrPort, logger *log.Logger, ready func(error)) error {
	level := os.Getenv("LOG_LEVEL")
	errorf := func(format string, args ...any) {
		if level != "silent" {
			logger.Printf(format, args...)
		}
	}
	verbose := level == "verbose" || level == "debug"
	verbosef := func(format string, args ...any) {
		if verbose {
			logger.Printf(format, args...)
		}
	}
	stop := make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		s := <-sigs
		verbosef("%v: shutting down", s)
		close(stop)
	}()
	errorf("interface %s starting (pid %d, ipc %s, mtu %d)", name, os.Getpid(), mode, mtu)
	var tel *telemetry.Server // nil: no metrics
	if metricsAddr.IsValid() {
		tel = telemetry.New()
		if err := tel.Listen(metricsAddr); err != nil {
			errorf("interface %s: %v", name, err)
			ready(err)
			return err
		}
		defer tel.Close()
		errorf("interface %s: metrics on http://%v%s, health on http://%v%s (plain HTTP: keep it on loopback or a management network)",
			name, tel.Addr(), telemetry.MetricsPath, tel.Addr(), telemetry.HealthPath)
	}
	err := front.Run(front.Config{
		Name: name, MTU: mtu, Mode: mode, Logf: errorf, Verbosef: verbosef, Verbose: verbose,
		EngineCommand: func() (*exec.Cmd, error) { return engine.Command(name, os.Args[0], engineRole, name) },
		OnUp: func(h uapi.Handler) {
			if tel == nil {
				return
			}
			dev, ok := h.(telemetry.Device)
			if !ok {
				errorf("interface %s: no counters to serve as metrics", name)
				return
			}
			if err := tel.AddInterface(telemetry.Interface{Name: name, Device: dev,
				Engine: func() error { return front.EngineRunning(h) }}); err != nil {
				errorf("interface %s: metrics: %v", name, err)
			}
		},
	}, stop, ready)
	if err != nil {
		errorf("interface %s: %v", name, err)
	} else {
		errorf("interface %s stopped", name)
	}
	return err
}

// engineRole is the first argument of an engine process: not a valid
// interface name (a leading "-"), so no interface can be mistaken for it.
const engineRole = "--engine-of"

// runEngine is `ptun --engine-of IFNAME [--confined]`: the WireGuard
// engine.
func runEngine(args []string) int {
	return runConfined(args, engineRole, "the engine", nil, engine.Run)
}

// tlsEngineRole is the first argument of an OpenConnect engine process,
// started by a gateway's TLS front (package internal/ocengine).
const tlsEngineRole = "--tls-engine-of"

// runTLSEngine is `ptun --tls-engine-of IFNAME [--confined]`: the
// OpenConnect engine, confined as the WireGuard engine is, and allowed to
// accept connections on the listener its front hands it.
func runTLSEngine(args []string) int {
	return runConfined(args, tlsEngineRole, "the TLS engine", engine.AllowAccept, ocengine.Run)
}

// runConfined is an engine role, started by a front (engine.Command) in
// namespaces of its own with its control channel on descriptor 3: `ptun
// ROLE IFNAME` confines itself and re-executes itself as `ptun ROLE IFNAME
// --confined`, which locks itself down (the allow-list plus extra), checks
// it all, and runs run on the control channel.
func runConfined(args []string, role, what string, extra []uintptr, run func(*os.File) error) int {
	if len(args) < 2 || len(args) > 3 || (len(args) == 3 && args[2] != "--confined") {
		fmt.Fprintf(os.Stderr, "ptun: %s is started by a ptun front, not by hand\n", what)
		return 2
	}
	if len(args) == 2 {
		err := engine.Confine([]string{os.Args[0], role, args[1], "--confined"})
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	if err := engine.Lockdown(extra...); err != nil {
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	if err := engine.CheckConfined(); err != nil {
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	gomaxprocs.Apply()
	if err := run(os.NewFile(3, "ctl")); err != nil {
		fmt.Fprintf(os.Stderr, "ptun: %s for %s: %v\n", what, args[1], err)
		return 1
	}
	return 0
}

// readyReporter returns the function a daemonized child uses to tell its
// parent that it is ready, or why it failed. In the foreground it does
// nothing.
func readyReporter() func(error) {
	fdStr := os.Getenv(readyFDEnv)
	if fdStr == "" {
		return func(error) {}
	}
	os.Unsetenv(readyFDEnv)
	f := os.NewFile(3, "ready")
	done := false
	return func(err error) {
		if done || f == nil {
			return
		}
		done = true
		if err != nil {
			fmt.Fprintf(f, "%v\n", err)
		} else {
			fmt.Fprintln(f, "ok")
		}
		f.Close()
	}
}

// daemonize starts this command again in the background, detached from the
// terminal, and returns once it reports that the interface is ready: the
// contract wg-quick expects from WG_QUICK_USERSPACE_IMPLEMENTATION.
func daemonize(args []string) int { return daemonizeWithInput(args, nil, 30*time.Second) }

// daemonizeWithInput is daemonize with input (if any) on the daemon's
// stdin, through a pipe: how ptun connect hands its daemon the password
// without an argument, a variable or a file that others could read. It
// waits up to wait for the daemon to be ready.
func daemonizeWithInput(args []string, input []byte, wait time.Duration) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if input != nil {
		if len(input) > 4096 {
			fmt.Fprintln(os.Stderr, "ptun: the daemon's input is too long")
			return 1
		}
		ir, iw, err := os.Pipe()
		if err != nil {
			fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
			return 1
		}
		// A pipe holds far more than this: the write does not block.
		_, err = iw.Write(input)
		iw.Close()
		if err != nil {
			ir.Close()
			fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
			return 1
		}
		cmd.Stdin = ir
		defer ir.Close()
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "ptun: starting the daemon: %v\n", err)
		return 1
	}
	w.Close()
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		lines <- strings.TrimSpace(line)
	}()
	select {
	case line := <-lines:
		if line == "ok" {
			cmd.Process.Release()
			return 0
		}
		cmd.Wait()
		if line == "" {
			line = "the daemon exited before it was ready"
		}
		fmt.Fprintf(os.Stderr, "ptun: %s\n", line)
		return 1
	case <-time.After(wait):
		cmd.Process.Kill()
		cmd.Wait()
		fmt.Fprintf(os.Stderr, "ptun: the daemon did not become ready within %v\n", wait)
		return 1
	}
}
