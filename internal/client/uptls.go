package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/profile"
)

// `ptun up NAME --via tls` carries profile NAME's tunnel over its gateway's
// OpenConnect (TLS) listener rather than WireGuard over UDP, for networks
// that pass only TCP: the same interface name, the device's own addresses
// and rules (the gateway takes the login as that device: it logs in with
// its key, enroll.DeviceLogin), the routes, DNS and kill switch as ptun
// connect applies them. It is a ptun connect tunnel in every other way
// (Connect): `ptun status NAME` shows its path (DTLS or CSTP), `ptun down
// NAME` ends it.

// ErrNoTLS: the profile's gateway offers no TLS listener.
var ErrNoTLS = errors.New("no TLS listener")

// UpTLS is the daemon of `ptun up NAME --via tls` (see above); ready and
// the return are as Connect's. o.Gateway picks the gateway (default: the
// profile's first that has a TLS listener).
func UpTLS(ctx context.Context, name string, o ConnectOptions, ready func(error)) (err error) {
	defer func() {
		if err != nil && ready != nil {
			ready(err)
			ready = nil
		}
	}()
	o.defaults()
	p, err := profile.Load(o.Profiles, name)
	if err != nil {
		return err
	}
	g, err := tlsGateway(p, o.Gateway)
	if err != nil {
		return err
	}
	key, err := p.Key()
	if err != nil {
		return fmt.Errorf("profile %s: its private key: %w", name, err)
	}
	o.URL, o.Pin = g.TLS, g.Pin
	if o.Pin == "" {
		o.Pin = p.Pin
	}
	if o.Pin == "" {
		return fmt.Errorf("profile %s has no certificate pin for gateway %s: join again", name, g.Name)
	}
	if o.User, o.Password, err = enroll.DeviceLogin(key, g.PublicKey, time.Now()); err != nil {
		return fmt.Errorf("gateway %s: %w", g.Name, err)
	}
	o.Logf("%s: over TLS to gateway %s at %s, logging in with the device's key", name, g.Name, g.TLS)
	r := ready
	ready = nil // Connect reports from here on
	return Connect(ctx, name, o, r)
}

// tlsGateway is the gateway of p that `up --via tls` uses: the one named
// (which must have a TLS listener), or the first that has one.
func tlsGateway(p *profile.Profile, name string) (profile.Gateway, error) {
	var names []string
	for _, g := range p.Offer.Gateways {
		names = append(names, g.Name)
		if name != "" && g.Name == name {
			if g.TLS == "" {
				return g, fmt.Errorf("--gateway %s: it offers %w (its gateway.json has no \"tls\", or the profile predates it: ptun join again)", name, ErrNoTLS)
			}
			return g, nil
		}
		if name == "" && g.TLS != "" {
			return g, nil
		}
	}
	if name != "" {
		return profile.Gateway{}, fmt.Errorf("--gateway %s: profile %s has no such gateway (it has %s)", name, p.Name, strings.Join(names, ", "))
	}
	return profile.Gateway{}, fmt.Errorf("profile %s: none of its gateways (%s) offers a %w: give the gateway one (ptun gateway init --tls) and join again", p.Name, strings.Join(names, ", "), ErrNoTLS)
}
