package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Errors a command returns after it has said all there is to say; run
// turns them into exit codes without printing anything more.
var (
	errHelped   = errors.New("help printed")             // -h: exit 0
	errUsage    = errors.New("usage error printed")      // bad flags or arguments: exit 2
	errReported = errors.New("failure already reported") // exit 1
)

// stdout is where help and command output go (a variable for tests).
var stdout io.Writer = os.Stdout

// Each command's usage, printed by `ptun COMMAND -h` (followed by its
// flags, if it has any) and by `ptun help COMMAND`.
var commandUsage = map[string]string{
	"genkey": `Usage: ptun genkey

Print a new Curve25519 private key in base64, as wg genkey does.

Example:
  ptun genkey | tee privatekey | ptun pubkey > publickey
`,
	"pubkey": `Usage: ptun pubkey

Read a base64 private key on stdin and print its public key, as wg pubkey
does.

Example:
  ptun genkey | tee privatekey | ptun pubkey > publickey
`,
	"genpsk": `Usage: ptun genpsk

Print a new random preshared key in base64, as wg genpsk does.

Example:
  ptun genpsk > presharedkey
  wg set wg0 peer PUBKEY preshared-key ./presharedkey
`,
	"show": `Usage: ptun show [IFNAME]

Show an interface's peers, endpoints, allowed IPs, latest handshakes and
transfer, then ptun's drop counters by reason and its other non-zero
counters. Without IFNAME, show every interface with a socket in
/var/run/wireguard; one that fails is reported and the others are still
shown, and the exit status is 1 if any failed. Interfaces of other
implementations (wireguard-go) are shown without counters. The sockets are
root's: run it as root.

Example:
  sudo ptun show wg0
`,
	"demo": `Usage: ptun demo [--duration D]

As root: make two network namespaces joined by a veth link, run ptun in
each, configure them through the WireGuard userspace API, and print ping and
TCP throughput in both directions through the tunnel next to the raw link.
Everything it creates is removed when it ends, also on Ctrl-C.

Example:
  sudo ptun demo --duration 3s
`,
	"join": `Usage: ptun join INVITE-URL [--name NAME] [--device NAME] [--profiles DIR]

Enroll this device with the gateway that made INVITE-URL (` + "`ptun gateway invite`" + `
prints it) and store its profile as NAME in DIR (mode 0600). The device's
key is made here and never leaves it; the gateway is trusted only if its
certificate matches the pin the URL carries. Flags may come before or after
the URL; quote the URL (it holds '#' and '&').

Example:
  sudo ptun join 'https://198.18.0.1:8443/join#v1.Kx3f9QzA.7oQm…&pin-sha256:AbC…=' --name work
`,
	"up": `Usage: ptun up NAME [--kill-switch] [--gateway G] [--via auto|udp|tls] [--foreground] [--metrics ADDR] [--profiles DIR] [--state DIR]

As root: bring profile NAME's tunnel up. Starts the profile's daemon, which
creates the interface (pt-NAME), gives it the device's key and a gateway,
sets its addresses, MTU, routes (a full tunnel by fwmark and policy rules)
and DNS; up returns once a handshake with the gateway completed, or fails
and leaves nothing behind. While up, the daemon refreshes the profile from
the gateway every 2 s, moves to another gateway of the profile when the one
in use stops answering, and stops once the device is revoked (ptun status
says so). With --kill-switch nothing leaves the host but through the
tunnel, to the gateways, and on loopback, until ptun down. With
--metrics ADDR the daemon serves Prometheus metrics (/metrics) and /healthz
over plain HTTP on ADDR (ADDRESS:PORT): bind it to loopback or a management
network (docs/metrics.md); off by default.

When the profile's gateway has a TLS listener (ptun gateway init --tls,
the profile joined since), the tunnel falls back to it by itself when
WireGuard gets no handshake over UDP: 2 s after the start, or when the
gateway stops answering later. The interface, its addresses, routes, DNS
and kill switch stay; the device logs in with its own key, so it keeps its
addresses and access rules; applications see a pause. WireGuard tries UDP
again every 10 s and the tunnel moves back once a handshake completes.
ptun status says which path is in use. --via udp never falls back; --via
tls takes only the TLS listener (TLS on TCP, DTLS over UDP when it
passes). --metrics serves the TLS path's session too (ptun_session_*).

Examples:
  sudo ptun up work --kill-switch
  sudo ptun up work --via tls               # only over TLS (TCP, or DTLS)
  sudo ptun up work --gateway gw-b          # start with that gateway
  sudo ptun up work --foreground            # as a service manager runs it
  sudo ptun up work --metrics 127.0.0.1:9587
  curl -s http://127.0.0.1:9587/healthz
`,
	"down": `Usage: ptun down NAME [--profiles DIR] [--state DIR]

As root: take tunnel NAME down (a profile's, or one of ptun connect's) and
undo everything up or connect changed (also what a daemon that died left
behind). An OpenConnect session is logged out.

Example:
  sudo ptun down work
`,
	"status": `Usage: ptun status NAME [--profiles DIR] [--state DIR]

Show whether tunnel NAME is up: for a profile, its gateway, latest
handshake and transfer; for ptun connect, its server, path (dtls or cstp),
addresses, reconnections and transfer, or why it gave up.

Example:
  sudo ptun status work
`,
	"connect": connectUsage,
	"gateway": gatewayUsage,
	"version": `Usage: ptun version

Print ptun's version, the commit it was built from and the Go version.

Example:
  ptun version
`,
	"bench": `Usage: ptun bench [flags]

As root: build a client and a server host (network namespaces joined by a
veth link) and measure, for the raw link, each ptun mode, each --peer and
each --openconnect candidate, TCP and UDP up and down, round-trip time idle
and under load, CPU per GB and peak memory. Rounds are interleaved; the
report gives medians, min-max and ratios. Needs iperf3.

--openconnect adds OpenConnect (SSL VPN) tunnels, each set up by the bench
in a temporary folder and removed at the end: ptun-dtls and ptun-tls are
ptun's gateway (ptun gateway run with --tls) with ptun's client (ptun
connect), what ptun's users run; ptun-openconnect-dtls and
ptun-openconnect-tls the same gateway with Debian's openconnect as the
client, and ocserv-dtls and ocserv-tls Debian's ocserv with openconnect,
so that ptun-openconnect-X against ocserv-X compares the servers alone
(-tls: CSTP only, --no-dtls). The ones with openconnect or ocserv need
those packages.

Examples:
  sudo ptun bench --peer wireguard-go=$(go env GOPATH)/bin/wireguard --json out.json --svg out.svg
  sudo ptun bench --openconnect all
  sudo ptun bench --ptun none --openconnect ptun-dtls,ocserv-dtls --rounds 5
`,
}

const connectUsage = `Usage: ptun connect https://HOST[:PORT] --user NAME [--servercert pin-sha256:BASE64]
                    [--name NAME] [--kill-switch] [--no-dtls] [--foreground] [--metrics ADDR] [--state DIR]

As root: connect to an OpenConnect (AnyConnect-compatible) server, such as
ocserv or a ptun gateway, as user NAME. The password is read from stdin
(one line), or asked for without echo when stdin is a terminal; it goes to
the tunnel's engine, is never logged and never written down. Port 443 if
the URL has none.

The daemon creates the interface pt-NAME (NAME defaults to the server's
host), logs in, and applies what the server pushes: the addresses, its
routes (none means all traffic: a full tunnel by fwmark and policy rules,
less its excluded routes), DNS servers and search domains, and the MTU.
Traffic goes over DTLS (UDP) once that is up, else over the TLS
connection (CSTP); --no-dtls keeps it on TLS. connect returns once the
session is up, or fails (a wrong password, an untrusted certificate) and
leaves nothing behind. When the connection dies the daemon connects again
with the session's cookie, keeping the interface, routes and kill switch;
if the server refuses the cookie it gives up and ptun status says so.
With --kill-switch nothing leaves the host but through the tunnel, to the
server, and on loopback, until ptun down NAME (which also logs out). With
--metrics ADDR the daemon serves the session's Prometheus metrics
(ptun_session_*, docs/metrics.md) and /healthz over plain HTTP on ADDR:
bind it to loopback or a management network; off by default.

Without --servercert the certificate must chain to the system's CAs and
name HOST; with it, only the certificate whose public key has that pin is
trusted (openconnect prints the pin of a certificate it rejects, and so
does a failed ptun connect).

Examples:
  echo "$PASSWORD" | sudo ptun connect https://vpn.example.com --user alice
  sudo ptun connect https://198.18.0.2:4443 --user alice --name work \
       --servercert pin-sha256:o2K8…= --kill-switch      # asks for the password
  sudo ptun status work
  sudo ptun down work
`

// newFlagSet returns the flag set of `ptun name`. Parse it with parseFlags.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.Usage = func() {} // parseFlags prints the usage
	return fs
}

// parseFlags parses args into fs, the flag set of `ptun CMD`, and checks
// that at most maxArgs arguments follow the flags. On -h or --help it prints
// CMD's usage and flags to stdout and returns errHelped; on a bad flag or
// too many arguments it says so on stderr and returns errUsage.
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(stdout, fs)
		return errHelped
	}
	if err == nil && fs.NArg() > maxArgs {
		fmt.Fprintf(os.Stderr, "ptun %s: unexpected argument %q\n", fs.Name(), fs.Arg(maxArgs))
		err = errUsage
	}
	if err != nil {
		// The flag package has printed what was wrong.
		fmt.Fprintf(os.Stderr, "run 'ptun %s -h' for help\n", fs.Name())
		return errUsage
	}
	return nil
}

// parseInterspersed is parseFlags for a command whose flags may come
// before or after its arguments (ptun join URL --name work): it
// returns the arguments, at most maxArgs of them.
func parseInterspersed(fs *flag.FlagSet, args []string, maxArgs int) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args, 1<<30); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) > maxArgs {
		fmt.Fprintf(os.Stderr, "ptun %s: unexpected argument %q\nrun 'ptun %s -h' for help\n", fs.Name(), pos[maxArgs], fs.Name())
		return nil, errUsage
	}
	return pos, nil
}

// printUsage writes the usage of the command whose flag set is fs.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, commandUsage[fs.Name()])
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintln(w, "\nFlags:")
		out := fs.Output()
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(out)
	}
}

// commands are ptun's subcommands by name; each takes the arguments after
// its name.
var commands = map[string]func(args []string) error{
	"genkey":  runGenKey,
	"pubkey":  runPubKey,
	"genpsk":  runGenPSK,
	"show":    runShow,
	"demo":    runDemo,
	"bench":   runBench,
	"join":    runJoin,
	"up":      runUp,
	"connect": runConnect,
	"down":    runDown,
	"status":  runStatus,
	"version": runVersion,
	"gateway": runGateway,
}

// help is `ptun help [COMMAND]`.
func help(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return errHelped
	}
	cmd, ok := commands[args[0]]
	if !ok || len(args) > 1 {
		fmt.Fprintf(os.Stderr, "ptun help: no command %q (commands: %s)\n", strings.Join(args, " "), strings.Join(commandNames(), ", "))
		return errUsage
	}
	return cmd([]string{"-h"}) // prints the flags too
}

// commandNames returns the names of commands, sorted.
func commandNames() []string {
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
