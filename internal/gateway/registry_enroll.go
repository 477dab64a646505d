package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"

	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// Site is what every device of a gateway is offered besides its own
// addresses: the routes, DNS and tunnel settings `ptun gateway init` set.
type Site struct {
	MTU       int
	Routes    []netip.Prefix
	DNS       []netip.Addr
	Search    []string
	Keepalive int
	API       string // the enrollment API's https base URL, for profile updates
	// Control is the gateway's service inside the tunnel (its address in
	// the first pool, port ControlPort): set by Run, not configured.
	Control netip.AddrPort `json:"-"`
}

// RegistryEnroller is the Enroller of a registry: redeeming an invite
// creates the device (addresses from every pool, in the invite's
// transaction) and the offer lists every gateway the registry knows.
type RegistryEnroller struct {
	Registry registry.Registry
	Site     Site
	// SiteNow, if set, is called for the current Site instead (the
	// gateway reloads its configuration as it runs).
	SiteNow func() Site
	// AfterEnroll, if set, runs once a device is created and before its
	// offer is answered (the gateway makes it a peer). Its error is logged
	// by the caller's log, not the device's problem.
	AfterEnroll func(ctx context.Context) error
}

// Enroll implements Enroller.
func (e *RegistryEnroller) Enroll(ctx context.Context, en Enrollment) (*profile.Offer, error) {
	ctx = registry.WithActor(ctx, "enroll:"+en.Source.String())
	dev, err := e.Registry.Redeem(ctx, en.Prefix+"."+en.Secret, registry.DeviceSpec{Name: en.Device, PublicKey: registry.Key(en.PublicKey)})
	switch {
	case errors.Is(err, registry.ErrInviteRefused):
		return nil, fmt.Errorf("%w (%v)", ErrInvalidInvite, err)
	case errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrConflict):
		return nil, fmt.Errorf("%w: %v", ErrConflict, err)
	case errors.Is(err, registry.ErrInvalid):
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	case errors.Is(err, registry.ErrPoolExhausted):
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	case err != nil:
		return nil, registryDown(err)
	}
	if e.AfterEnroll != nil {
		e.AfterEnroll(ctx) // a failure is retried by the gateway's own sync
	}
	return e.Offer(ctx, dev)
}

// Offer is what device dev is offered.
func (e *RegistryEnroller) Offer(ctx context.Context, dev registry.Device) (*profile.Offer, error) {
	gws, err := e.Registry.ListGateways(ctx)
	if err != nil {
		return nil, registryDown(err)
	}
	site := e.Site
	if e.SiteNow != nil {
		site = e.SiteNow()
	}
	return makeOffer(gws, site, dev)
}

// makeOffer is what device dev is offered by the gateways gws of site.
func makeOffer(gws []registry.Gateway, site Site, dev registry.Device) (*profile.Offer, error) {
	o := &profile.Offer{Version: profile.Version, User: dev.User, Device: dev.Name, MTU: site.MTU,
		Routes: site.Routes, DNS: site.DNS, Search: site.Search, Keepalive: site.Keepalive, Control: site.Control}
	for _, g := range gws {
		ep, err := netip.ParseAddrPort(g.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("%w: gateway %s's endpoint %q is not ADDRESS:PORT", ErrUnavailable, g.Name, g.Endpoint)
		}
		api := g.API
		if api == "" {
			api = site.API
		}
		o.Gateways = append(o.Gateways, profile.Gateway{Name: g.Name, PublicKey: noise.PublicKey(g.PublicKey), Endpoint: ep, API: api, Pin: g.Pin,
			TLS: offerTLS(g.TLS)})
	}
	for _, a := range dev.Addresses {
		o.Addresses = append(o.Addresses, netip.PrefixFrom(a, a.BitLen()))
	}
	return o, nil
}

// offerTLS is a gateway's OpenConnect listener as an offer names it,
// https://HOST:PORT: the registry also takes https://HOST, which is port
// 443.
func offerTLS(s string) string {
	u, err := url.Parse(s)
	if s == "" || err != nil || u.Port() != "" {
		return s
	}
	u.Host = net.JoinHostPort(u.Hostname(), "443")
	return u.String()
}

// registryDown is the error of an enrollment the registry could not serve:
// the device is told only that, and the gateway's log gets the cause
// (which may name database hosts and users).
func registryDown(cause error) error {
	return &privateCause{public: ErrUnavailable.Error() + ": the gateway cannot reach its registry now; try again later", cause: cause}
}

// privateCause is an error whose message is safe to send, wrapping one
// that is not.
type privateCause struct {
	public string
	cause  error
}

func (e *privateCause) Error() string   { return e.public }
func (e *privateCause) Unwrap() []error { return []error{ErrUnavailable, e.cause} }

// logDetail is err's full story for the gateway's log.
func logDetail(err error) string {
	var pc *privateCause
	if errors.As(err, &pc) {
		return pc.public + " (" + pc.cause.Error() + ")"
	}
	return err.Error()
}
