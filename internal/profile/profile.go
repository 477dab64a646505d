// Package profile is what a device knows of its gateway after `ptun join`:
// the Offer the gateway answers an enrollment with (its keys, endpoints,
// the device's addresses, routes, DNS), and the Profile the device stores,
// which adds its own private key and the gateway's certificate pin. A
// profile is a JSON file of mode 0600 in a directory of mode 0700.
package profile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ptun-vpn/ptun/internal/netconf"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// Version is the offer and profile format this build writes and reads.
const Version = 1

// DefaultDir is where profiles live unless --profiles says otherwise.
const DefaultDir = "/var/lib/ptun/profiles"

// Gateway is one gateway a device may connect through.
type Gateway struct {
	Name      string          `json:"name"`
	PublicKey noise.PublicKey `json:"public_key"`
	Endpoint  netip.AddrPort  `json:"endpoint"`
	// API is the gateway's HTTPS base URL (enrollment, profile updates),
	// pinned by the profile's Pin.
	API string `json:"api,omitempty"`
	// Pin is the pin of that API's certificate ("": the profile's own,
	// the enrolling gateway's).
	Pin string `json:"pin,omitempty"`
	// TLS is the gateway's OpenConnect listener, https://HOST:PORT ("":
	// none). Its certificate is the API's, pinned by the same Pin.
	TLS string `json:"tls,omitempty"`
}

// Offer is the gateway's answer to an enrollment: everything the device
// needs to bring its tunnel up.
type Offer struct {
	Version   int            `json:"version"`
	User      string         `json:"user"`
	Device    string         `json:"device"`
	Gateways  []Gateway      `json:"gateways"`
	Addresses []netip.Prefix `json:"addresses"` // the device's, one per family at most
	MTU       int            `json:"mtu"`
	Routes    []netip.Prefix `json:"routes"`
	DNS       []netip.Addr   `json:"dns,omitempty"`
	Search    []string       `json:"search,omitempty"`
	Keepalive int            `json:"keepalive,omitempty"` // seconds; 0: off
	// Control is the gateways' service inside the tunnel (every gateway of
	// a registry answers on the same address), where the device fetches
	// its current offer: WireGuard authenticates it there, by the source
	// address only its key may use. The zero value: none.
	Control netip.AddrPort `json:"control,omitzero"`
}

// ControlPath is the path of the offer at Offer.Control.
const ControlPath = "/api/v1/profile"

// Limits of an offer, so that a hostile gateway cannot make the device
// hold or apply something absurd.
const (
	maxGateways = 64
	maxRoutes   = 1024
	maxDNS      = 8
	maxSearch   = 16
)

// Check validates an offer: one error saying what is wrong.
func (o *Offer) Check() error {
	switch {
	case o.Version != Version:
		return fmt.Errorf("profile: offer version %d, this ptun reads %d: upgrade ptun", o.Version, Version)
	case len(o.Gateways) == 0:
		return errors.New("profile: the offer names no gateway")
	case len(o.Gateways) > maxGateways, len(o.Routes) > maxRoutes, len(o.DNS) > maxDNS, len(o.Search) > maxSearch:
		return errors.New("profile: the offer is larger than any gateway would send")
	case o.MTU < 576 || o.MTU > 65535:
		return fmt.Errorf("profile: MTU %d is out of range", o.MTU)
	case o.Keepalive < 0 || o.Keepalive > 65535:
		return fmt.Errorf("profile: keepalive %d is out of range", o.Keepalive)
	case !validName(o.User) || !validName(o.Device):
		return errors.New("profile: the offer's user or device name is not valid")
	case o.Control.IsValid() && (o.Control.Port() == 0 || !o.Control.Addr().IsGlobalUnicast() || o.Control.Addr().Zone() != ""):
		return fmt.Errorf("profile: the control address %v is not a unicast address and port", o.Control)
	}
	for _, g := range o.Gateways {
		if !validName(g.Name) || g.PublicKey.IsZero() || !g.Endpoint.IsValid() || g.Endpoint.Port() == 0 {
			return fmt.Errorf("profile: gateway %q needs a name, a key and an endpoint", g.Name)
		}
		if g.API != "" && !strings.HasPrefix(g.API, "https://") {
			return fmt.Errorf("profile: gateway %q's API is not an https URL", g.Name)
		}
		if g.Pin != "" && !strings.HasPrefix(g.Pin, "pin-sha256:") {
			return fmt.Errorf("profile: gateway %q's pin is not pin-sha256:BASE64", g.Name)
		}
		if g.TLS != "" && !validTLSURL(g.TLS) {
			return fmt.Errorf("profile: gateway %q's OpenConnect listener %q is not an https://HOST:PORT URL", g.Name, g.TLS)
		}
	}
	fams := map[bool]bool{}
	for _, a := range o.Addresses {
		if !a.IsValid() || fams[a.Addr().Is4()] {
			return errors.New("profile: the offer's addresses must be at most one IPv4 and one IPv6")
		}
		fams[a.Addr().Is4()] = true
	}
	if len(o.Addresses) == 0 {
		return errors.New("profile: the offer gives the device no address")
	}
	for _, r := range o.Routes {
		if !r.IsValid() || r != r.Masked() {
			return fmt.Errorf("profile: route %v is not a network prefix", r)
		}
	}
	for _, d := range o.DNS {
		if !d.IsValid() || d.Zone() != "" {
			return fmt.Errorf("profile: DNS server %v is not an address", d)
		}
	}
	for _, s := range o.Search {
		if !netconf.ValidDomain(s) {
			return fmt.Errorf("profile: %q is not a search domain", s)
		}
	}
	return nil
}

// validTLSURL accepts an OpenConnect listener's URL: https://HOST:PORT,
// with a port from 1 to 65535 and nothing after it.
func validTLSURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.Path != "" || u.RawQuery != "" || u.ForceQuery ||
		u.Fragment != "" || u.User != nil || u.Opaque != "" {
		return false
	}
	port, err := strconv.ParseUint(u.Port(), 10, 16)
	return err == nil && port != 0
}

// validName accepts the names of users, devices, gateways and profiles: 1 to
// 64 letters, digits, '.', '_' and '-', not starting with '.' or '-'.
func validName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// CheckName validates a profile, user or device name.
func CheckName(s string) error {
	if !validName(s) {
		return fmt.Errorf("%q is not a valid name (1-64 letters, digits, '.', '_' or '-')", s)
	}
	return nil
}

// DecodeOffer reads and checks an offer of at most 1 MiB.
func DecodeOffer(r io.Reader) (*Offer, error) {
	dec := json.NewDecoder(io.LimitReader(r, 1<<20))
	dec.DisallowUnknownFields()
	var o Offer
	if err := dec.Decode(&o); err != nil {
		return nil, fmt.Errorf("profile: the gateway's answer: %w", err)
	}
	if err := o.Check(); err != nil {
		return nil, err
	}
	return &o, nil
}

// Profile is what `ptun join` stores.
type Profile struct {
	Name       string    `json:"name"`
	Offer      Offer     `json:"offer"`
	PrivateKey string    `json:"private_key"` // base64, as wg(8) writes it
	Pin        string    `json:"pin"`         // the gateways' certificate pin
	EnrolledAt time.Time `json:"enrolled_at"`
}

// Key returns the device's private key.
func (p *Profile) Key() (noise.PrivateKey, error) {
	return noise.ParsePrivateKeyBase64(p.PrivateKey)
}

// Peer is the device's configuration of gateway g as a WireGuard peer:
// its key and endpoint, with the offer's routes as its allowed
// IPs. (Failover between gateways is the client's: it configures one at a
// time.)
func (p *Profile) Peer(g Gateway) wgcfg.PeerConfig {
	ep := g.Endpoint
	ka := uint16(p.Offer.Keepalive)
	return wgcfg.PeerConfig{PublicKey: g.PublicKey, Endpoint: &ep, PersistentKeepalive: &ka,
		ReplaceAllowedIPs: true, AddAllowedIPs: p.Offer.TunnelRoutes()}
}

// TunnelRoutes are the destinations the tunnel carries: the offer's routes
// and, unless they cover it, the control address.
func (o *Offer) TunnelRoutes() []netip.Prefix {
	out := append([]netip.Prefix(nil), o.Routes...)
	if !o.Control.IsValid() {
		return out
	}
	for _, r := range o.Routes {
		if r.Contains(o.Control.Addr()) {
			return out
		}
	}
	a := o.Control.Addr()
	return append(out, netip.PrefixFrom(a, a.BitLen()))
}

// Save writes p to dir/NAME.json (mode 0600; dir made 0700), replacing
// an older file of that name whole or not at all.
func Save(dir string, p *Profile) error {
	if err := CheckName(p.Name); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+p.Name+".*")
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("profile: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("profile: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	return os.Rename(f.Name(), filepath.Join(dir, p.Name+".json"))
}

// Load reads the profile name from dir.
func Load(dir, name string) (*Profile, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, name+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("profile: no profile %q in %s (ptun join makes one)", name, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	return Decode(b)
}

// Decode reads and checks a stored profile.
func Decode(b []byte) (*Profile, error) {
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := CheckName(p.Name); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := p.Offer.Check(); err != nil {
		return nil, err
	}
	if _, err := p.Key(); err != nil {
		return nil, fmt.Errorf("profile %s: the private key: %w", p.Name, err)
	}
	return &p, nil
}

// List returns the names of the profiles in dir, sorted.
func List(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	var names []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && validName(n) && !e.IsDir() {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}
