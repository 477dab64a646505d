package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/demo"
)

// runDemo is `ptun demo`: two namespaced hosts and a real tunnel.
func runDemo(args []string) error {
	fs := newFlagSet("demo")
	dur := fs.Duration("duration", 5*time.Second, "length of each throughput run")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return demo.Run(ctx, demo.Options{Duration: *dur}, stdout)
}
