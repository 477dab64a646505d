package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/uapi"
)

// runShow is `ptun show [IFNAME]`.
func runShow(args []string) error {
	fs := newFlagSet("show")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	return show(fs.Args(), stdout, os.Stderr)
}

// show prints each interface's peers and counters to w: what `wg show`
// prints, plus ptun's drop counters by reason. Without args it shows every
// interface with a socket in uapi.SocketDir; one that fails is reported on
// errw and the others are still shown, and the result is errReported if
// any failed.
func show(args []string, w, errw io.Writer) error {
	if len(args) == 1 {
		return showOne(args[0], w)
	}
	socks, err := filepath.Glob(filepath.Join(uapi.SocketDir, "*.sock"))
	if err != nil {
		return err
	}
	var names []string
	for _, s := range socks {
		names = append(names, strings.TrimSuffix(filepath.Base(s), ".sock"))
	}
	if len(names) == 0 {
		if _, err := os.Stat(uapi.SocketDir); err != nil && !os.IsNotExist(err) {
			return withRootHint(err)
		}
		return fmt.Errorf("no interfaces found (no sockets in %s)", uapi.SocketDir)
	}
	failed := 0
	for i, name := range names {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := showOne(name, w); err != nil {
			fmt.Fprintf(errw, "ptun: %v\n", err)
			failed++
		}
	}
	if failed > 0 {
		fmt.Fprintf(errw, "ptun: %d of %d interfaces could not be shown\n", failed, len(names))
		return errReported
	}
	return nil
}

// withRootHint adds what to do to a permission error.
func withRootHint(err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w: run as root (the UAPI sockets in %s are root's)", err, uapi.SocketDir)
	}
	return err
}

// showOne prints interface name's state and counters.
func showOne(name string, w io.Writer) error {
	sock := uapi.SocketPath(name)
	st, err := uapi.Get(sock)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: no such interface (no socket %s)", name, sock)
		}
		return fmt.Errorf("%s: %w", name, withRootHint(err))
	}
	fmt.Fprintf(w, "interface: %s\n", name)
	if !st.PrivateKey.IsZero() {
		fmt.Fprintf(w, "  public key: %s\n", st.PrivateKey.PublicKey().Base64())
	}
	fmt.Fprintf(w, "  listening port: %d\n", st.ListenPort)
	if st.FwMark != 0 {
		fmt.Fprintf(w, "  fwmark: 0x%x\n", st.FwMark)
	}
	for _, p := range st.Peers {
		fmt.Fprintf(w, "\npeer: %s\n", p.PublicKey.Base64())
		if !p.PresharedKey.IsZero() {
			fmt.Fprintf(w, "  preshared key: (hidden)\n")
		}
		if p.Endpoint.IsValid() {
			fmt.Fprintf(w, "  endpoint: %s\n", p.Endpoint)
		}
		ips := make([]string, len(p.AllowedIPs))
		for i, a := range p.AllowedIPs {
			ips[i] = a.String()
		}
		if len(ips) == 0 {
			ips = []string{"(none)"}
		}
		fmt.Fprintf(w, "  allowed ips: %s\n", strings.Join(ips, ", "))
		if !p.LastHandshake.IsZero() {
			fmt.Fprintf(w, "  latest handshake: %s ago\n", time.Since(p.LastHandshake).Round(time.Second))
		}
		if p.RxBytes != 0 || p.TxBytes != 0 {
			fmt.Fprintf(w, "  transfer: %s received, %s sent\n", humanBytes(p.RxBytes), humanBytes(p.TxBytes))
		}
		if p.PersistentKeepalive != 0 {
			fmt.Fprintf(w, "  persistent keepalive: every %d seconds\n", p.PersistentKeepalive)
		}
	}
	stats, err := uapi.Stats(sock)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		// Not ptun (wireguard-go answers stats=1 so): nothing more to show.
		fmt.Fprintf(w, "\n(no counters: the interface is not served by ptun)\n")
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: counters: %w", name, err)
	}
	writeCounters(w, stats)
	return nil
}

// writeCounters prints drops first (all of them, zero or not, so a reader
// sees what is counted), then the other non-zero counters.
func writeCounters(w io.Writer, stats []metrics.Counter) {
	var drops, others []metrics.Counter
	for _, c := range stats {
		if strings.HasPrefix(c.Name, "drop_") {
			drops = append(drops, c)
		} else if c.Value != 0 {
			others = append(others, c)
		}
	}
	sort.SliceStable(drops, func(i, j int) bool { return drops[i].Value > drops[j].Value })
	fmt.Fprintf(w, "\ndrops by reason:\n")
	for _, c := range drops {
		fmt.Fprintf(w, "  %s: %d\n", c.Name, c.Value)
	}
	if len(others) > 0 {
		fmt.Fprintf(w, "counters:\n")
		for _, c := range others {
			fmt.Fprintf(w, "  %s: %d\n", c.Name, c.Value)
		}
	}
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
