package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/profile"
)

// clientFlags are the flags up, down and status share.
func clientFlags(name string) (*flagSetWith, *client.Options) {
	fs := newFlagSet(name)
	o := &client.Options{}
	fs.StringVar(&o.Profiles, "profiles", profile.DefaultDir, "where profiles are stored")
	fs.StringVar(&o.State, "state", client.DefaultStateDir, "where up records what it applied")
	return &flagSetWith{fs}, o
}

// runUp is `ptun up NAME [--kill-switch] [--profiles DIR] [--state DIR]`.
func runUp(args []string) error {
	fs, o := clientFlags("up")
	fs.BoolVar(&o.KillSwitch, "kill-switch", false, "let nothing leave the host but through the tunnel, to the gateways, and on loopback")
	fs.DurationVar(&o.Wait, "wait", 10*time.Second, "how long to wait for the first handshake")
	name, err := oneName(fs, args)
	if err != nil {
		return err
	}
	o.Logf = func(format string, a ...any) { fmt.Fprintf(os.Stderr, "ptun up: "+format+"\n", a...) }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	if err := client.Up(ctx, name, *o); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s is up on %s (handshake after %v)\n", name, client.Interface(name), time.Since(start).Round(time.Millisecond))
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
	hs := "none yet"
	if !s.LastHandshake.IsZero() {
		hs = time.Since(s.LastHandshake).Round(time.Second).String() + " ago"
	}
	fmt.Fprintf(stdout, "%s: up on %s since %s\n  gateway %s at %s, latest handshake %s, received %d B, sent %d B\n",
		name, s.State.Interface, s.State.Since.Format(time.RFC3339), s.State.Gateway, s.Endpoint, hs, s.RxBytes, s.TxBytes)
	return nil
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
