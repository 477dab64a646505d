package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/engine"
	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/gomaxprocs"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/occlient"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/telemetry"
)

// maxPassword bounds the password line read from stdin.
const maxPassword = 1024

// connectFlags are ptun connect's flags, parsed and checked.
type connectFlags struct {
	url, name  string
	foreground bool
	logFile    string
	o          client.ConnectOptions
}

// parseConnect parses and checks ptun connect's arguments; nothing is
// read from stdin and nothing is started.
func parseConnect(args []string) (*connectFlags, error) {
	fs := newFlagSet("connect")
	c := &connectFlags{}
	fs.StringVar(&c.o.User, "user", "", "the user name to log in with (required); the password is read from stdin, or asked for on a terminal")
	fs.StringVar(&c.o.Pin, "servercert", "", "trust only the server certificate whose public key has this `pin-sha256:BASE64` (as openconnect --servercert); default: the system's CAs and the URL's host name")
	fs.StringVar(&c.name, "name", "", "the tunnel's name for ptun down and ptun status, and its interface pt-NAME (default: the server's host)")
	fs.BoolVar(&c.o.KillSwitch, "kill-switch", false, "let nothing leave the host but through the tunnel, to the server, and on loopback")
	fs.BoolVar(&c.o.DisableDTLS, "no-dtls", false, "carry everything over the TLS connection (CSTP); no DTLS over UDP")
	fs.BoolVar(&c.foreground, "foreground", false, "stay in the foreground, logging to stderr, until SIGTERM or SIGINT")
	fs.StringVar(&c.logFile, "log", "", "append the daemon's log to FILE (default: stderr with --foreground, else syslog)")
	fs.DurationVar(&c.o.Wait, "wait", 30*time.Second, "how long the first login and connect may take")
	fs.StringVar(&c.o.State, "state", client.DefaultStateDir, "where connect records what it applied")
	ipcFlag := fs.String("ipc", os.Getenv(ipc.EnvIPC), "how packets reach the engine: fd, shm or seqpacket")
	metricsFlag := fs.String("metrics", "", "serve /metrics and /healthz over plain HTTP on `ADDR` (ADDRESS:PORT, such as 127.0.0.1:9587; default: off)")
	pos, err := parseInterspersed(fs, args, 1)
	if err != nil {
		return nil, err
	}
	if len(pos) != 1 {
		fmt.Fprintf(os.Stderr, "ptun connect: the server's URL is missing (https://HOST[:PORT])\nrun 'ptun connect -h' for help\n")
		return nil, errUsage
	}
	c.url = pos[0]
	srv, err := client.ParseServerURL(c.url)
	if err != nil {
		return nil, err
	}
	c.o.URL = srv.String()
	if err := client.CheckUser(c.o.User); err != nil {
		return nil, err
	}
	if c.o.Pin != "" {
		if err := client.CheckPin(c.o.Pin); err != nil {
			return nil, err
		}
	}
	if c.name == "" {
		c.name = client.DefaultConnectName(srv.Host)
	}
	if err := profile.CheckName(c.name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if c.o.Wait <= 0 {
		return nil, fmt.Errorf("--wait %v: must be positive", c.o.Wait)
	}
	if c.o.Mode, err = ipc.ParseMode(*ipcFlag); err != nil {
		return nil, fmt.Errorf("--ipc: %w", err)
	}
	if c.o.Mode == ipc.Inproc {
		return nil, errors.New("--ipc inproc: the OpenConnect engine always runs confined in a process of its own")
	}
	if c.o.Metrics, err = telemetry.ParseAddr(*metricsFlag); err != nil {
		return nil, err
	}
	return c, nil
}

// runConnect is `ptun connect URL --user NAME [...]`: it reads the
// password, starts the tunnel's daemon (client.Connect) in the background
// with the password on its stdin, and returns once the session is up;
// with --foreground it is that daemon.
func runConnect(args []string) error {
	c, err := parseConnect(args)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("ptun connect needs root (it creates an interface and sets routes): run it with sudo")
	}
	start := time.Now()
	ifname := client.Interface(c.name)
	if !c.foreground && os.Getenv(readyFDEnv) == "" {
		password, err := readConnectPassword(os.Stdin, c.o.User, c.o.URL)
		if err != nil {
			return err
		}
		// The daemon gives up after --wait itself, and undoes what it did;
		// killing it is for one that hangs.
		code := daemonizeWithInput(append([]string{"connect"}, args...), []byte(password+"\n"), c.o.Wait+15*time.Second)
		if code != 0 {
			return errReported
		}
		fmt.Fprintf(stdout, "%s is connected to %s on %s (after %v)\n", c.name, c.o.URL, ifname, time.Since(start).Round(time.Millisecond))
		return nil
	}
	if err := front.DropCapabilities(); err != nil {
		readyReporter()(err)
		return err
	}
	ready := readyReporter()
	password, err := readConnectPassword(os.Stdin, c.o.User, c.o.URL)
	if err != nil {
		ready(err)
		return err
	}
	c.o.Password = password
	logger, closeLog, err := openLog(c.logFile, c.foreground, ifname)
	if err != nil {
		ready(err)
		return err
	}
	defer closeLog()
	gomaxprocs.Apply()
	c.o.Logf = logger.Printf
	if level := os.Getenv("LOG_LEVEL"); level == "verbose" || level == "debug" {
		c.o.Verbosef, c.o.Verbose = logger.Printf, true
	}
	c.o.EngineCommand = func() (*exec.Cmd, error) {
		return engine.Command(ifname, os.Args[0], ocClientEngineRole, ifname)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	err = client.Connect(ctx, c.name, c.o, func(err error) {
		if err == nil {
			logger.Printf("%s is connected to %s on %s (after %v)", c.name, c.o.URL, ifname, time.Since(start).Round(time.Millisecond))
		}
		ready(err)
	})
	if err != nil {
		logger.Printf("%s: %v", c.name, err)
		return errReported
	}
	logger.Printf("%s is down", c.name)
	return nil
}

// readConnectPassword reads the password: on a terminal it asks for it with
// echo off; otherwise it reads one line (the newline is not part of it).
func readConnectPassword(in *os.File, user, url string) (string, error) {
	fd := int(in.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		pw, err := readLine(in)
		if err != nil {
			return "", fmt.Errorf("reading the password from stdin: %w", err)
		}
		if pw == "" {
			return "", errors.New("an empty password on stdin (give it as one line)")
		}
		return pw, nil
	}
	fmt.Fprintf(os.Stderr, "Password for %s at %s: ", user, url)
	old := *t
	t.Lflag &^= unix.ECHO
	t.Lflag |= unix.ICANON
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return "", fmt.Errorf("turning the terminal's echo off: %w", err)
	}
	// Ctrl-C at the prompt must not leave the terminal without echo.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	restored := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			unix.IoctlSetTermios(fd, unix.TCSETS, &old)
			fmt.Fprintln(os.Stderr)
			os.Exit(130)
		case <-restored:
		}
	}()
	pw, err := readLine(in)
	unix.IoctlSetTermios(fd, unix.TCSETS, &old)
	signal.Stop(sigs)
	close(restored)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", fmt.Errorf("reading the password: %w", err)
	}
	if pw == "" {
		return "", errors.New("an empty password")
	}
	return pw, nil
}

// readLine reads up to a newline (or the end), one byte at a time so that
// nothing after the line is consumed, at most maxPassword bytes; a
// trailing "\r" goes too.
func readLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for {
		n, err := r.Read(one)
		if n == 1 {
			if one[0] == '\n' {
				break
			}
			if len(b) >= maxPassword {
				return "", fmt.Errorf("a line longer than %d bytes", maxPassword)
			}
			b = append(b, one[0])
		}
		if errors.Is(err, io.EOF) {
			if len(b) == 0 {
				return "", errors.New("nothing to read (give the password as one line on stdin)")
			}
			break
		}
		if err != nil {
			return "", err
		}
	}
	return strings.TrimSuffix(string(b), "\r"), nil
}

// ocClientEngineRole is the first argument of an OpenConnect client
// engine process, started by ptun connect's front.
const ocClientEngineRole = "--oc-client-engine-of"

// runOCClientEngine is `ptun --oc-client-engine-of IFNAME [--confined]`:
// the OpenConnect client engine, confined as the WireGuard engine is (it
// needs no system call more: its front dials its sockets).
func runOCClientEngine(args []string) int {
	return runConfined(args, ocClientEngineRole, "the OpenConnect client engine", nil, occlient.Run)
}
