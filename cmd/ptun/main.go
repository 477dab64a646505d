// Command ptun is a fast userspace WireGuard-protocol VPN for Linux.
//
//	ptun [-f] [--mtu N] IFNAME   create interface IFNAME and serve its UAPI socket
//	ptun genkey | pubkey | genpsk  keys, compatible with wg(8)
//	ptun show [IFNAME]             peers, handshakes, bytes and drop counters
//	ptun demo                      two namespaced hosts, a tunnel, throughput vs the raw link
//	ptun bench                     every direction, against the raw link and other implementations
package main

import (
	"fmt"
	"os"
)

const usage = `Usage:
  ptun [-f|--foreground] [--mtu N] [--ipc MODE] [--log FILE] IFNAME
        create the TUN interface IFNAME and serve the WireGuard userspace API
        on /var/run/wireguard/IFNAME.sock (configure it with wg(8) or wg-quick);
        without -f, return once the interface is ready and keep running in the
        background. WireGuard runs in an unprivileged engine process fed by
        --ipc fd (default), shm or seqpacket, or in-process with --ipc inproc
  ptun genkey            print a new private key (base64)
  ptun pubkey            read a private key on stdin, print its public key
  ptun genpsk            print a new preshared key
  ptun show [IFNAME]     show peers, handshakes, transfer and drop counters
  ptun demo [--duration D]
        as root: two namespaced hosts, a real tunnel between them, ping and
        TCP throughput in both directions next to the raw link
  ptun bench [--rounds N] [--duration D] [--peer NAME=COMMAND]... [--ptun MODES]
             [--json FILE] [--svg FILE]
        as root: measure TCP and UDP up and down, RTT idle and under load, CPU
        per GB and memory, of the raw link, ptun and each peer (such as
        --peer wireguard-go=wireguard-go), interleaved, with medians and ratios;
        see ptun bench -h

Environment: PTUN_DISABLE_TUN_OFFLOAD, PTUN_DISABLE_TUN_USO, PTUN_DISABLE_TUN_GRO,
PTUN_DISABLE_UDP_GSO, PTUN_DISABLE_UDP_GRO (=1 turns that offload off);
PTUN_IPC=fd|shm|seqpacket|inproc acts as --ipc; PTUN_SHM_RING_SIZE (bytes) sizes
the shm rings; LOG_LEVEL=verbose|error|silent; WG_PROCESS_FOREGROUND=1 acts as -f;
GOMAXPROCS overrides ptun's choice of Go processors (1 on machines with 1-2 CPUs).
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
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Print(usage)
		return 0
	case "genkey":
		err = genKey(os.Stdout)
	case "genpsk":
		err = genPSK(os.Stdout)
	case "pubkey":
		err = pubKey(os.Stdin, os.Stdout)
	case "show":
		err = show(args[1:], os.Stdout)
	case "demo":
		err = runDemo(args[1:])
	case "bench":
		err = runBench(args[1:])
	case engineRole:
		return runEngine(args)
	default:
		return runInterface(args)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ptun: %v\n", err)
		return 1
	}
	return 0
}
