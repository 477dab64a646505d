package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ptun-vpn/ptun/internal/netconf"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// An export is a device for one of the official WireGuard apps (or
// wg-quick), which cannot enroll: the gateway makes the device's key pair,
// registers the public key like an enrollment would, and prints the
// private key once, inside a wg-quick(8) configuration. The key is never
// stored: the configuration (or its QR code) is its only copy.

// DefaultExportKeepalive is the PersistentKeepalive of an exported config
// when the site sets none: an app on a phone is behind NAT nearly always,
// and a silent NAT mapping would cut the gateway off from it.
const DefaultExportKeepalive = 25

// ExportConfig renders the wg-quick(8) configuration of device dev, whose
// private key is priv, connecting through gateway gw of site:
//
//   - [Interface] PrivateKey; Address: the device's addresses as host
//     prefixes; DNS: the site's servers, then its search domains (wg-quick
//     hands names that are not addresses to resolvconf as search domains,
//     and the apps read them the same way); MTU: the site's.
//   - [Peer] PublicKey and Endpoint: gw's; AllowedIPs: what `ptun up`
//     routes (profile.Offer.TunnelRoutes): the site's routes and, unless
//     they cover it, the gateway's own tunnel address (site.Control's) as
//     a host route. Every device may ping that address whatever its access
//     rules, so an app's user can tell a tunnel that is down from a host
//     behind it that is; the control service on it serves ptun clients,
//     and an app does not use it. PersistentKeepalive: the site's, or
//     DefaultExportKeepalive if it sets none.
//
// It fails if the result would not work: no address, no route, a zero
// key, or an endpoint that is not HOST:PORT.
func ExportConfig(dev registry.Device, priv noise.PrivateKey, gw registry.Gateway, site Site) (string, error) {
	switch {
	case len(dev.Addresses) == 0:
		return "", fmt.Errorf("device %s/%s has no address: add a pool", dev.User, dev.Name)
	case len(site.Routes) == 0:
		return "", errors.New("the gateway offers no route, so an app could reach nothing through it: give init a --route")
	case priv.IsZero():
		return "", errors.New("the device's private key is zero")
	case gw.PublicKey == registry.Key{}:
		return "", fmt.Errorf("gateway %s has no public key in the registry", gw.Name)
	}
	endpoint, err := exportEndpoint(gw)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s/%s through ptun gateway %s\n", dev.User, dev.Name, gw.Name)
	b.WriteString("[Interface]\n")
	fmt.Fprintf(&b, "PrivateKey = %s\n", priv.Base64())
	addrs := make([]string, len(dev.Addresses))
	for i, a := range dev.Addresses {
		addrs[i] = netip.PrefixFrom(a, a.BitLen()).String()
	}
	fmt.Fprintf(&b, "Address = %s\n", strings.Join(addrs, ", "))
	var dns []string
	for _, d := range site.DNS {
		dns = append(dns, d.String())
	}
	dns = append(dns, site.Search...)
	if len(dns) > 0 {
		fmt.Fprintf(&b, "DNS = %s\n", strings.Join(dns, ", "))
	}
	if site.MTU > 0 {
		fmt.Fprintf(&b, "MTU = %d\n", site.MTU)
	}
	b.WriteString("\n[Peer]\n")
	fmt.Fprintf(&b, "PublicKey = %s\n", noise.PublicKey(gw.PublicKey).Base64())
	fmt.Fprintf(&b, "Endpoint = %s\n", endpoint)
	var routes []string
	for _, r := range (&profile.Offer{Routes: site.Routes, Control: site.Control}).TunnelRoutes() {
		routes = append(routes, r.String())
	}
	fmt.Fprintf(&b, "AllowedIPs = %s\n", strings.Join(routes, ", "))
	keepalive := site.Keepalive
	if keepalive <= 0 {
		keepalive = DefaultExportKeepalive
	}
	fmt.Fprintf(&b, "PersistentKeepalive = %d\n", keepalive)
	return b.String(), nil
}

// exportEndpoint is gw's endpoint as wg-quick reads it: ADDRESS:PORT (an
// IPv6 address in brackets) or HOSTNAME:PORT.
func exportEndpoint(gw registry.Gateway) (string, error) {
	bad := fmt.Errorf("gateway %s's endpoint %q is not ADDRESS:PORT or HOSTNAME:PORT", gw.Name, gw.Endpoint)
	host, portText, err := net.SplitHostPort(gw.Endpoint)
	if err != nil {
		return "", bad
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return "", bad
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.IsUnspecified() || a.Zone() != "" {
			return "", bad
		}
		return netip.AddrPortFrom(a.Unmap(), uint16(port)).String(), nil
	}
	if !netconf.ValidDomain(host) {
		return "", bad
	}
	return gw.Endpoint, nil
}

// ExportRequest is what `ptun gateway export` asks Export for.
type ExportRequest struct {
	User, Device string
	// Gateway names the registry's gateway whose key and endpoint the
	// config uses; "" is the state folder's own (Config.Name).
	Gateway string
	// Check, if set, sees a config as long as this export's can be (the
	// longest address text in each pool) before anything is written; its
	// error stops the export. The QR code's capacity is checked so.
	Check func(conf string) error
}

// Errors of Export besides the registry's (registry.ErrNotFound for an
// unknown user, registry.ErrExists for a device name taken,
// registry.ErrPoolExhausted, registry.ErrInvalid), each with what to do.
var (
	// ErrNoSuchGateway: the registry has no gateway of that name. Name
	// one that `ptun gateway init` made for this registry.
	ErrNoSuchGateway = errors.New("no such gateway")
)

// Export makes device req.Device for user req.User with a key pair made
// here, registers its public key (addresses from every pool, audited as
// made by the context's actor, "via export"), and returns its wg-quick
// configuration, which holds the private key: its only copy. Everything
// that can be checked before the device is created is (names, the
// gateway, the routes, req.Check), so a refused export writes nothing.
func Export(ctx context.Context, reg registry.Registry, cfg *Config, req ExportRequest) (conf string, dev registry.Device, err error) {
	if _, err := registry.ParseName(req.User); err != nil {
		return "", dev, fmt.Errorf("user: %w", err)
	}
	if err := profile.CheckName(req.Device); err != nil {
		return "", dev, fmt.Errorf("device: %w", err)
	}
	name := req.Gateway
	if name == "" {
		name = cfg.Name
	}
	gws, err := reg.ListGateways(ctx)
	if err != nil {
		return "", dev, err
	}
	var gw *registry.Gateway
	var names []string
	for i := range gws {
		names = append(names, gws[i].Name)
		if gws[i].Name == name {
			gw = &gws[i]
		}
	}
	if gw == nil {
		return "", dev, fmt.Errorf("%w: the registry has no gateway %q (it has: %s): name one with --gateway", ErrNoSuchGateway, name, strings.Join(names, ", "))
	}
	if _, err := reg.User(ctx, req.User); err != nil {
		return "", dev, err
	}
	pools, err := reg.ListPools(ctx)
	if err != nil {
		return "", dev, err
	}
	site := cfg.Site
	if ca := controlAddr(pools); ca.IsValid() { // as Run sets it
		site.Control = netip.AddrPortFrom(ca, ControlPort)
	}
	priv, err := noise.GeneratePrivateKey()
	if err != nil {
		return "", dev, err
	}
	// A dry run with the longest addresses the pools can give.
	longest := registry.Device{User: req.User, Name: req.Device}
	for _, p := range pools {
		if p.Prefix.Addr().Is4() {
			longest.Addresses = append(longest.Addresses, netip.MustParseAddr("255.255.255.255"))
		} else {
			longest.Addresses = append(longest.Addresses, netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
		}
	}
	dry, err := ExportConfig(longest, priv, *gw, site)
	if err != nil {
		return "", dev, err
	}
	if req.Check != nil {
		if err := req.Check(dry); err != nil {
			return "", dev, err
		}
	}
	dev, err = reg.CreateDevice(ctx, req.User, registry.DeviceSpec{Name: req.Device, PublicKey: registry.Key(priv.PublicKey()), Via: "export"})
	if err != nil {
		return "", dev, err
	}
	conf, err = ExportConfig(dev, priv, *gw, site)
	if err != nil { // the dry run passed: not expected
		return "", dev, fmt.Errorf("device %s/%s was made but its config was not (%v): revoke it", dev.User, dev.Name, err)
	}
	return conf, dev, nil
}
