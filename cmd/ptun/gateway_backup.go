package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
)

// gatewayBackup is `ptun gateway backup FILE [--state DIR]`.
func gatewayBackup(args []string) error {
	fs, state := gwFlags("backup")
	pos, err := parseInterspersed(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "ptun gateway backup: the FILE to write the backup to is missing")
		return errUsage
	}
	c, err := gateway.LoadConfig(*state)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := registry.Backup(ctx, c.DBPath(*state), pos[0]); err != nil {
		return err
	}
	fi, err := os.Stat(pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "registry %s backed up to %s (%d bytes)\n", c.DBPath(*state), pos[0], fi.Size())
	return nil
}
