package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/bench"
)

// runBench is `ptun bench`: every candidate, every direction, side by side.
func runBench(args []string) error {
	fs := newFlagSet("bench")
	rounds := fs.Int("rounds", 3, "interleaved rounds; the report gives medians over them")
	dur := fs.Duration("duration", 5*time.Second, "length of each throughput test (whole seconds)")
	streams := fs.Int("streams", 4, "TCP streams in the multi-stream tests")
	udpRate := fs.String("udp-rate", "500M", "offered UDP rate in bit/s (suffixes K, M, G)")
	udpSize := fs.Int("udp-size", 1300, "UDP datagram payload in bytes")
	modes := fs.String("ptun", bench.Modes[0].Name, "comma-separated ptun modes to measure, \"all\" or \"none\" (modes: "+strings.Join(bench.ModeNames(), ", ")+")")
	ocNames := fs.String("openconnect", "", "comma-separated OpenConnect candidates to measure, or \"all\" (candidates: "+strings.Join(bench.OpenConnectNames(), ", ")+"); default none")
	jsonPath := fs.String("json", "", "also write the full result as JSON to `FILE`")
	svgPath := fs.String("svg", "", "also draw the result as an SVG chart in `FILE`")
	var peers []bench.Peer
	fs.Func("peer", "measure another implementation: `NAME=COMMAND`, where `COMMAND IFNAME` creates IFNAME and its UAPI socket (as wireguard-go does); repeatable", func(v string) error {
		name, cmd, ok := strings.Cut(v, "=")
		argv := strings.Fields(cmd)
		if !ok || strings.TrimSpace(name) == "" || len(argv) == 0 {
			return errors.New("want NAME=COMMAND")
		}
		peers = append(peers, bench.Peer{Name: strings.TrimSpace(name), Argv: argv})
		return nil
	})
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	rate, err := parseRate(*udpRate)
	if err != nil {
		return fmt.Errorf("bench: --udp-rate: %w", err)
	}
	opts := bench.Options{
		Rounds: *rounds, Duration: *dur, Streams: *streams, UDPRate: rate, UDPSize: *udpSize,
		Peers: peers, Progress: os.Stderr,
		Command: "ptun bench " + strings.Join(args, " "),
	}
	switch *modes {
	case "all":
		opts.PtunModes = bench.ModeNames()
	case "none", "":
		opts.PtunModes = []string{}
	default:
		opts.PtunModes = strings.Split(*modes, ",")
	}
	switch *ocNames {
	case "":
	case "all":
		opts.OpenConnect = bench.OpenConnectNames()
	default:
		opts.OpenConnect = strings.Split(*ocNames, ",")
	}
	// Check the output files can be written before minutes of measuring.
	for _, p := range []string{*jsonPath, *svgPath} {
		if p == "" {
			continue
		}
		if err := unix.Access(filepath.Dir(p), unix.W_OK); err != nil {
			return fmt.Errorf("bench: cannot write %s: %w", p, err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench.Run(ctx, opts)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr)
	if err := res.WriteTable(stdout); err != nil {
		return err
	}
	if *jsonPath != "" {
		if err := writeFile(*jsonPath, res.WriteJSON); err != nil {
			return err
		}
	}
	if *svgPath != "" {
		if err := writeFile(*svgPath, res.WriteSVG); err != nil {
			return err
		}
	}
	return nil
}

// parseRate reads "500M", "1.5G", "800k" or a plain number of bit/s.
func parseRate(s string) (float64, error) {
	mult := 1.0
	switch {
	case strings.HasSuffix(s, "G") || strings.HasSuffix(s, "g"):
		mult = 1e9
	case strings.HasSuffix(s, "M") || strings.HasSuffix(s, "m"):
		mult = 1e6
	case strings.HasSuffix(s, "K") || strings.HasSuffix(s, "k"):
		mult = 1e3
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a rate such as 500M", s)
	}
	return v * mult, nil
}

// writeFile creates path and fills it with write.
func writeFile(path string, write func(w io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
