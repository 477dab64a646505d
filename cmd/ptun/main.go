// Command ptun is a fast userspace WireGuard-protocol VPN for Linux.
//
//	ptun [-f] [--mtu N] IFNAME   create interface IFNAME and serve its UAPI socket
//	ptun genkey | pubkey | genpsk  keys, compatible with wg(8)
//	ptun show [IFNAME]             peers, handshakes, bytes and drop counters
//	ptun demo                      two namespaced hosts, a tunnel, throughput vs the raw link
//	ptun bench                     every direction, against the raw link and other implementations
//
// `ptun -h` lists the environment variables, where the daemon logs and the
// signals it obeys; `ptun COMMAND -h` describes each command.
package main

import (
	"errors"
	"fmt"
	"os"
)

const usage = `Usage:
  ptun [-f|--foreground] [--mtu N] [--ipc MODE] [--log FILE] [--metrics ADDR] IFNAME
        create the TUN interface IFNAME and serve the WireGuard userspace API
        on /var/run/wireguard/IFNAME.sock (configure it with wg(8) or wg-quick);
        without -f, return once the interface is ready and keep running in the
        background. WireGuard runs in an unprivileged engine process fed by
        --ipc fd (default), shm or seqpacket, or in-process with --ipc inproc.
        --metrics ADDR serves Prometheus metrics (/metrics) and /healthz over
        plain HTTP on ADDR (ADDRESS:PORT): bind it to loopback or a management
        network (docs/metrics.md); off by default
  ptun genkey            print a new private key (base64)
  ptun pubkey            read a private key on stdin, print its public key
  ptun genpsk            print a new preshared key
  ptun show [IFNAME]     show peers, handshakes, transfer and drop counters
  ptun demo [--duration D]
        as root: two namespaced hosts, a real tunnel between them, ping and
        TCP throughput in both directions next to the raw link
  ptun bench [--rounds N] [--duration D] [--peer NAME=COMMAND]... [--ptun MODES]
             [--openconnect all|NAMES] [--json FILE] [--svg FILE]
        as root: measure TCP and UDP up and down, RTT idle and under load, CPU
        per GB and memory, of the raw link, ptun and each peer (such as
        --peer wireguard-go=wireguard-go), and with --openconnect of ptun's
        gateway and ocserv over DTLS and TLS, interleaved, with medians and
        ratios
  ptun gateway SUBCOMMAND [--state DIR]
        administer a remote-access gateway: init, user add, users, invite,
        devices, revoke (see ptun gateway -h)
  ptun join INVITE-URL [--name NAME] [--device NAME] [--profiles DIR]
        enroll this device with a ptun gateway and store its profile
  ptun up NAME [--kill-switch] | ptun down NAME | ptun status NAME
        as root: bring profile NAME's tunnel up (routes, DNS, kill switch),
        take it down undoing all of it, or show it
  ptun connect https://HOST[:PORT] --user NAME [--servercert pin-sha256:…]
               [--name NAME] [--kill-switch] [--no-dtls] [--foreground]
        as root: connect to an OpenConnect server (ocserv, a ptun gateway)
        with a password read from stdin or asked for; ptun down NAME and
        ptun status NAME as for a profile
  ptun version           ptun's version, commit and Go version
  ptun help [COMMAND]    this text, or COMMAND's (the same as ptun COMMAND -h)

Examples:
  sudo ptun wg0               # create wg0 and go to the background
  sudo wg set wg0 private-key ./priv listen-port 51820 \
       peer PUBKEY endpoint 198.18.0.2:51820 allowed-ips 100.64.0.2/32
  sudo WG_QUICK_USERSPACE_IMPLEMENTATION=ptun wg-quick up ./wg0.conf
  sudo LOG_LEVEL=verbose ptun -f wg0   # in the foreground, more log on stderr
  sudo ptun --metrics 127.0.0.1:9587 wg0
  curl -s http://127.0.0.1:9587/metrics | grep ^ptun_drops_total

Logs: with -f, to stderr. In the background, to syslog (journald) with the tag
"ptun" when /dev/log accepts a connection, otherwise appended to
/var/log/ptun/IFNAME.log (the file mode 0600, the directory 0700). --log FILE
appends to FILE instead, in either case. The daemon logs its start and stop,
errors and engine restarts; LOG_LEVEL=verbose adds more.

Signals: SIGTERM, SIGINT and SIGHUP stop the interface: ptun deletes it and
its socket and exits, as it does when the interface is deleted (ip link del
IFNAME). SIGHUP does not reopen --log FILE; rotate it by copying and
truncating (logrotate's copytruncate), as ptun only appends.

Environment:
  PTUN_IPC=fd|shm|seqpacket|inproc  acts as --ipc
  PTUN_SHM_RING_SIZE=BYTES          size of each shm ring: a power of two from
                                    256 KiB to 64 MiB (default 4 MiB)
  PTUN_DISABLE_TUN_OFFLOAD=1        no virtio-net header: one packet per TUN
                                    read or write
  PTUN_DISABLE_TUN_USO=1            no UDP segmentation offload on the TUN
  PTUN_DISABLE_TUN_GRO=1            no coalescing of packets written to the TUN
  PTUN_DISABLE_UDP_GSO=1            no UDP segmentation offload on send
  PTUN_DISABLE_UDP_GRO=1            no UDP receive offload
  PTUN_DISABLE_STICKY=1             replies leave from the route's source address, not the one
                                    the peer sent to (no IP_PKTINFO)
  PTUN_DISABLE_AQM=1                no CoDel on the UDP receive queue
  PTUN_AQM_TARGET=DURATION          CoDel's target queue delay (default 1ms)
  PTUN_AQM_INTERVAL=DURATION        CoDel's interval (default 10ms)
  PTUN_REKEY_AFTER_TIME, PTUN_REJECT_AFTER_TIME, PTUN_REKEY_ATTEMPT_TIME,
  PTUN_REKEY_TIMEOUT, PTUN_KEEPALIVE_TIMEOUT=DURATION
                                    shorten the protocol's timers (defaults
                                    120s, 180s, 90s, 5s, 10s); for tests
  LOG_LEVEL=verbose|silent          log more (also "debug"), or nothing; the
                                    default logs errors and events
  WG_PROCESS_FOREGROUND=1           acts as -f (as for wireguard-go)
  SUDO_USER, USER                   who the gateway's audit log names for an
                                    administrative command (ptun gateway …)
  GOMAXPROCS=N                      Go processors per process (ptun's default:
                                    1 on machines with 1-2 CPUs, else Go's)
DURATION is a Go duration such as 500us, 5ms or 3s.
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	var err error
	switch cmd, ok := commands[args[0]]; {
	case ok:
		err = cmd(args[1:])
	case args[0] == "-h" || args[0] == "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case args[0] == "help":
		err = help(args[1:])
	case args[0] == engineRole:
		return runEngine(args)
	case args[0] == tlsEngineRole:
		return runTLSEngine(args)
	case args[0] == ocClientEngineRole:
		return runOCClientEngine(args)
	default:
		return runInterface(args)
	}
	switch {
	case err == nil, errors.Is(err, errHelped):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errReported):
		return 1
	default:
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
}
