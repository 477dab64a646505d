package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/internal/client"
	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/profile"
)

// runJoin is `ptun join INVITE-URL [--name NAME] [--device NAME] [--profiles DIR]`.
func runJoin(args []string) error {
	fs := newFlagSet("join")
	name := fs.String("name", "", "the profile's name (default: the gateway's host)")
	device := fs.String("device", "", "this device's name at the gateway (default: the host's name)")
	dir := fs.String("profiles", profile.DefaultDir, "where profiles are stored")
	pos, err := parseInterspersed(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "ptun join: the invite URL is missing\nrun 'ptun join -h' for help")
		return errUsage
	}
	inv, err := enroll.ParseInvite(pos[0])
	if err != nil {
		return err
	}
	if *name == "" {
		*name = nameFrom(inv.Base.Hostname())
	}
	if *device == "" {
		host, _ := os.Hostname()
		*device = nameFrom(strings.SplitN(host, ".", 2)[0])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	p, err := client.Join(ctx, pos[0], *name, *device, *dir)
	if err != nil {
		return err
	}
	var addrs []string
	for _, a := range p.Offer.Addresses {
		addrs = append(addrs, a.String())
	}
	var gws []string
	for _, g := range p.Offer.Gateways {
		if g.TLS != "" {
			gws = append(gws, g.Name+" ("+g.Endpoint.String()+", OpenConnect "+g.TLS+")")
		} else {
			gws = append(gws, g.Name+" ("+g.Endpoint.String()+")")
		}
	}
	fmt.Fprintf(stdout, "joined as %s/%s: addresses %s, gateways %s\nprofile %s saved in %s; bring it up with: sudo ptun up %s\n",
		p.Offer.User, p.Offer.Device, strings.Join(addrs, ", "), strings.Join(gws, ", "), p.Name, *dir, p.Name)
	return nil
}

// nameFrom makes a valid profile or device name of s: characters a name
// may not hold become '-'.
func nameFrom(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	out := strings.Trim(string(b), ".-")
	if len(out) > 64 {
		out = out[:64]
	}
	if out == "" || profile.CheckName(out) != nil {
		return "device"
	}
	return out
}
