package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/netconf"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// A gateway's state folder holds:
//
//	gateway.json   the configuration `ptun gateway init` wrote (0600)
//	gateway.key    the gateway's WireGuard private key (0600), read by its
//	               front only: the control plane never needs it
//	cert.pem       the enrollment API's certificate, whose pin invites carry:
//	               self-signed at init, or the operator's (init --cert)
//	key.pem        its private key (0600)
//	registry.db    the SQLite registry, unless --db names a PostgreSQL one

// DefaultAdmin is the admin API's listener unless init says otherwise:
// loopback only.
var DefaultAdmin = netip.MustParseAddrPort("127.0.0.1:8444")

// AdminURL is the admin API's base URL ("" when there is none).
func (c *Config) AdminURL() string {
	switch {
	case !c.Admin.IsValid():
		return ""
	case c.AdminPlain:
		return "http://" + c.Admin.String()
	}
	return "https://" + c.Admin.String()
}

// DefaultStateDir is the state folder unless --state says otherwise.
const DefaultStateDir = "/var/lib/ptun/gw"

// Config is gateway.json.
type Config struct {
	Name       string         `json:"name"`
	Endpoint   netip.AddrPort `json:"endpoint"` // where devices send WireGuard
	API        netip.AddrPort `json:"api"`      // the enrollment API's listener
	DB         string         `json:"db,omitempty"`
	Interface  string         `json:"interface"`
	Masquerade bool           `json:"masquerade,omitempty"`
	// DefaultDeny: a group with no access rule reaches nothing (else every
	// route the gateway offers).
	DefaultDeny bool `json:"default_deny,omitempty"`
	// Metrics is the plain-HTTP listener of /metrics and /healthz (zero:
	// none, the default). It has no authentication: loopback or a
	// management network only.
	Metrics netip.AddrPort `json:"metrics,omitzero"`
	// Admin is the admin API's listener (zero: none). It is HTTPS with the
	// enrollment API's certificate, unless AdminPlain, which only a
	// loopback address may have.
	Admin      netip.AddrPort `json:"admin,omitzero"`
	AdminPlain bool           `json:"admin_plain,omitempty"`
	// TLS is the OpenConnect (SSL VPN) listener, TCP for TLS and UDP for
	// DTLS on the same port (zero: none, the default). Users log in with
	// a password (`ptun gateway user passwd`).
	TLS  netip.AddrPort `json:"tls,omitzero"`
	Site Site           `json:"site"`
}

// TLSInterface is the interface of the OpenConnect engine: the tunnel
// interface's name with "-tls", cut to fit.
func (c *Config) TLSInterface() string {
	base := c.Interface
	if len(base) > 11 {
		base = base[:11]
	}
	return base + "-tls"
}

// ParseTLSAddr parses --tls: ADDRESS:PORT, or :PORT for every address.
func ParseTLSAddr(s string) (netip.AddrPort, error) {
	if port, ok := strings.CutPrefix(s, ":"); ok {
		s = "[::]:" + port
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("--tls %q: give ADDRESS:PORT or :PORT, such as :443 or 198.18.0.1:443", s)
	}
	return ap, nil
}

// InitOptions are `ptun gateway init`'s settings.
type InitOptions struct {
	Config
	Pools []netip.Prefix
	// CertFile and KeyFile, both or neither, are the operator's
	// certificate (PEM: the leaf first, intermediates after it) and its
	// private key for the enrollment API; Init copies them into the state
	// folder instead of making a self-signed certificate.
	CertFile, KeyFile string
}

// DBPath is the registry's DSN: Config.DB, or the SQLite file in dir.
func (c *Config) DBPath(dir string) string {
	if c.DB != "" {
		return c.DB
	}
	return filepath.Join(dir, "registry.db")
}

// APIURL is the enrollment API's base URL.
func (c *Config) APIURL() string { return "https://" + c.API.String() }

// TLSURL is the OpenConnect listener's URL as devices reach it,
// https://HOST:PORT ("" when there is none): HOST is the listener's
// address, or Endpoint's when the listener takes every address (0.0.0.0,
// ::). A zone is dropped: it names an interface of the gateway's, not the
// device's. Its certificate is the enrollment API's.
func (c *Config) TLSURL() string {
	if !c.TLS.IsValid() {
		return ""
	}
	host := c.TLS.Addr()
	if host.IsUnspecified() {
		host = c.Endpoint.Addr()
	}
	return "https://" + netip.AddrPortFrom(host.WithZone(""), c.TLS.Port()).String()
}

// Check validates a configuration: one error saying what to change.
func (c *Config) Check() error {
	switch {
	case c.Interface != "" && wgcfg.CheckInterfaceName(c.Interface) != nil:
		return wgcfg.CheckInterfaceName(c.Interface)
	case profile.CheckName(c.Name) != nil:
		return fmt.Errorf("--name %q: 1-64 letters, digits, '.', '_' or '-'", c.Name)
	case !c.Endpoint.IsValid() || c.Endpoint.Port() == 0 || c.Endpoint.Addr().IsUnspecified():
		return errors.New("--endpoint: give the ADDRESS:PORT devices send to, such as 198.18.0.1:51820")
	case !c.API.IsValid() || c.API.Port() == 0 || c.API.Addr().IsUnspecified():
		return errors.New("--api: give the ADDRESS:PORT of the enrollment API, such as 198.18.0.1:8443")
	case c.Metrics.IsValid() && telemetry.CheckAddr(c.Metrics) != nil:
		return telemetry.CheckAddr(c.Metrics)
	case c.Admin.IsValid() && c.Admin.Port() == 0:
		return fmt.Errorf("--admin %v: give ADDRESS:PORT, such as %v", c.Admin, DefaultAdmin)
	case c.AdminPlain && !c.Admin.IsValid():
		return errors.New("--admin-plain without --admin: give the admin API's address too")
	case c.AdminPlain && !c.Admin.Addr().IsLoopback():
		return fmt.Errorf("--admin-plain with --admin %v: plain HTTP is for a loopback address only (passwords and session cookies cross it); drop --admin-plain to serve HTTPS", c.Admin)
	case c.Admin.IsValid() && c.Admin == c.API:
		return fmt.Errorf("--admin %v is the enrollment API's address: give the admin API a port of its own", c.Admin)
	case c.TLS.IsValid() && (c.TLS == c.API || c.TLS == c.Admin || c.TLS.Port() == 0):
		return fmt.Errorf("--tls %v: give the OpenConnect listener a port of its own", c.TLS)
	case c.Site.MTU < 576 || c.Site.MTU > 65535:
		return fmt.Errorf("--mtu %d is out of range (576-65535)", c.Site.MTU)
	}
	for _, r := range c.Site.Routes {
		if r != r.Masked() {
			return fmt.Errorf("--route %v is not a network prefix (write %v)", r, r.Masked())
		}
	}
	for _, s := range c.Site.Search {
		if !netconf.ValidDomain(s) {
			return fmt.Errorf("--search %q is not a domain", s)
		}
	}
	return nil
}

// Init makes a gateway's state folder dir: the configuration, the
// gateway's key, the API's certificate, and the registry with the pools
// and this gateway in it. It refuses a folder that holds a gateway already,
// and on failure removes what it made.
func Init(ctx context.Context, dir string, o InitOptions) (pin enroll.Pin, err error) {
	if o.Interface == "" {
		o.Interface = "ptun-gw"
	}
	if o.Site.MTU == 0 {
		o.Site.MTU = 1420
	}
	if o.Site.API == "" {
		o.Site.API = o.APIURL()
	}
	if err := o.Check(); err != nil {
		return pin, err
	}
	if len(o.Pools) == 0 {
		return pin, errors.New("--pool: give at least one address pool, such as --pool 100.80.0.0/16")
	}
	if _, err := os.Stat(filepath.Join(dir, "gateway.json")); err == nil {
		return pin, fmt.Errorf("%s holds a gateway already (gateway.json): choose another --state, or remove it", dir)
	}
	var certPEM, keyPEM []byte
	if o.CertFile != "" || o.KeyFile != "" {
		// Checked before anything is written.
		if certPEM, keyPEM, pin, err = readKeyPair(o.CertFile, o.KeyFile, time.Now()); err != nil {
			return pin, err
		}
	}
	var made []string
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		made = append(made, dir) // removed last, and only if empty
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return pin, err
	}
	defer func() {
		if err != nil {
			for i := len(made) - 1; i >= 0; i-- {
				os.Remove(made[i])
			}
		}
	}()
	priv, err := noise.GeneratePrivateKey()
	if err != nil {
		return pin, err
	}
	keyFile := filepath.Join(dir, "gateway.key")
	if err := writeNew(keyFile, []byte(priv.Base64()+"\n")); err != nil {
		return pin, err
	}
	made = append(made, keyFile)
	if certPEM != nil {
		if err := enroll.WriteKeyPair(dir, certPEM, keyPEM); err != nil {
			return pin, err
		}
	} else if pin, err = enroll.WriteCertificate(dir, certNames(&o.Config)); err != nil {
		return pin, err
	}
	made = append(made, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if o.DB == "" {
		made = append(made, o.DBPath(dir), o.DBPath(dir)+"-wal", o.DBPath(dir)+"-shm")
	}
	reg, err := registry.Open(ctx, o.DBPath(dir), registry.Options{})
	if err != nil {
		return pin, err
	}
	defer reg.Close()
	ctx = registry.WithActor(ctx, Actor())
	for _, p := range o.Pools {
		if _, err := reg.AddPool(ctx, p); err != nil && !errors.Is(err, registry.ErrExists) {
			return pin, fmt.Errorf("--pool %v: %w", p, err)
		}
	}
	if _, err := reg.AddGateway(ctx, registry.Gateway{Name: o.Name, PublicKey: registry.Key(priv.PublicKey()), Endpoint: o.Endpoint.String(), API: o.APIURL(), Pin: pin.String(), TLS: o.TLSURL()}); err != nil {
		return pin, fmt.Errorf("registering gateway %s: %w", o.Name, err)
	}
	b, err := json.MarshalIndent(&o.Config, "", "  ")
	if err != nil {
		return pin, err
	}
	cfgFile := filepath.Join(dir, "gateway.json")
	if err := writeNew(cfgFile, append(b, '\n')); err != nil {
		return pin, err
	}
	return pin, nil
}

// readKeyPair reads and checks the operator's certificate and key (Init's
// --cert and --key): both are given, both parse, the key is the
// certificate's, and the certificate is valid at now. Its errors are one
// line that names the file to change.
func readKeyPair(certFile, keyFile string, now time.Time) (certPEM, keyPEM []byte, pin enroll.Pin, err error) {
	if certFile == "" || keyFile == "" {
		return nil, nil, pin, errors.New("--cert and --key go together: give both (a certificate and its private key), or neither for a self-signed certificate")
	}
	if certPEM, err = os.ReadFile(certFile); err != nil {
		return nil, nil, pin, fmt.Errorf("--cert: %w", err)
	}
	if keyPEM, err = os.ReadFile(keyFile); err != nil {
		return nil, nil, pin, fmt.Errorf("--key: %w", err)
	}
	cert, err := enroll.ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, nil, pin, fmt.Errorf("--cert %s: %w", certFile, err)
	}
	key, err := enroll.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, pin, fmt.Errorf("--key %s: %w", keyFile, err)
	}
	if !enroll.KeyMatches(cert, key) {
		return nil, nil, pin, fmt.Errorf("--key %s is not the private key of the certificate in --cert %s", keyFile, certFile)
	}
	switch {
	case now.Before(cert.NotBefore):
		return nil, nil, pin, fmt.Errorf("--cert %s is not valid yet: from %s to %s", certFile, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	case now.After(cert.NotAfter):
		return nil, nil, pin, fmt.Errorf("--cert %s expired at %s", certFile, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	// What Run will load: the same check crypto/tls makes.
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return nil, nil, pin, fmt.Errorf("--cert %s and --key %s: %w", certFile, keyFile, err)
	}
	return certPEM, keyPEM, enroll.PinOf(cert), nil
}

// certNames are the names of a self-signed certificate: the enrollment
// API's address, and the admin API's when it differs (so that curl
// --cacert cert.pem checks either).
func certNames(c *Config) []string {
	names := []string{c.API.Addr().String()}
	if c.Admin.IsValid() && !c.AdminPlain && c.Admin.Addr() != c.API.Addr() && !c.Admin.Addr().IsUnspecified() {
		names = append(names, c.Admin.Addr().String())
	}
	return names
}

func writeNew(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	return werr
}

// LoadConfig reads dir's configuration.
func LoadConfig(dir string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, "gateway.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no gateway in %s: run ptun gateway init --state %s first", dir, dir)
	}
	if err != nil {
		return nil, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "gateway.json"), err)
	}
	if err := c.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "gateway.json"), err)
	}
	return &c, nil
}

// Load reads dir's configuration and opens its registry.
func Load(ctx context.Context, dir string) (*Config, registry.Registry, error) {
	c, err := LoadConfig(dir)
	if err != nil {
		return nil, nil, err
	}
	reg, err := registry.Open(ctx, c.DBPath(dir), registry.Options{})
	if err != nil {
		return nil, nil, err
	}
	return c, reg, nil
}

// Pin returns the pin of dir's API certificate.
func Pin(dir string) (enroll.Pin, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		return enroll.Pin{}, err
	}
	return enroll.PinOfPEM(b)
}

// Actor names who runs an administrative command, for the audit log:
// "cli:" and the user (SUDO_USER when run through sudo).
func Actor() string {
	u := os.Getenv("SUDO_USER")
	if u == "" {
		u = os.Getenv("USER")
	}
	if u == "" {
		u = fmt.Sprint(os.Getuid())
	}
	return "cli:" + u
}

// InviteURL is the enrollment URL of an invite secret (as the registry made
// it) for the gateway configured by c, whose API certificate has pin.
func InviteURL(c *Config, secret string, pin enroll.Pin) (string, error) {
	prefix, sec, ok := strings.Cut(secret, ".")
	if !ok {
		return "", errors.New("malformed invite secret")
	}
	inv := &enroll.Invite{Prefix: prefix, Secret: sec, Pin: pin}
	u, err := url.Parse("https://" + c.API.String() + "/join") // [v6]:port as a URL wants it
	if err != nil {
		return "", err
	}
	inv.Base = u
	return inv.String(), nil
}

// SaveConfig replaces dir's configuration with c, whole or not at all. A
// running gateway reloads it within a second: devices get the new routes,
// DNS servers and search domains within their next refresh.
func SaveConfig(dir string, c *Config) error {
	if err := c.Check(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".gateway.json.*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, "gateway.json"))
}

// EditRoutes adds route to dir's offered routes (or removes it), and
// saves the configuration. Adding a route that is there, or removing one
// that is not, is an error that changes nothing.
func EditRoutes(dir string, route netip.Prefix, remove bool) (*Config, error) {
	c, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	if !route.IsValid() || route != route.Masked() {
		return nil, fmt.Errorf("%v is not a network prefix (write %v)", route, route.Masked())
	}
	i := slices.Index(c.Site.Routes, route)
	switch {
	case remove && i < 0:
		return nil, fmt.Errorf("%v is not among the routes (%v): nothing removed", route, c.Site.Routes)
	case remove:
		c.Site.Routes = slices.Delete(c.Site.Routes, i, i+1)
	case i >= 0:
		return nil, fmt.Errorf("%v is offered already", route)
	default:
		c.Site.Routes = append(c.Site.Routes, route)
	}
	return c, SaveConfig(dir, c)
}
