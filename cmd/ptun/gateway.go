package main

import (
	"context"
	"os/exec"
	"os/signal"
	"syscall"

	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ptun-vpn/ptun/internal/engine"
	"github.com/ptun-vpn/ptun/internal/front"
	"github.com/ptun-vpn/ptun/internal/gomaxprocs"
	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/internal/ocengine"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wgcfg"

	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/internal/telemetry"
)

// `ptun gateway SUBCOMMAND`: the gateway's administration. Each
// subcommand takes --state DIR (default /var/lib/ptun/gw) and its flags
// before or after its arguments.

const gatewayUsage = `Usage: ptun gateway SUBCOMMAND [ARGS] [--state DIR]

Administer a ptun remote-access gateway whose state (configuration, keys,
certificate, registry) is in DIR (default /var/lib/ptun/gw):

  init --endpoint ADDR:PORT --api ADDR:PORT --pool CIDR... [--route CIDR]...
       [--dns ADDR]... [--search DOMAIN]... [--db postgres://…] [--name NAME]
       [--cert FILE --key FILE] [--metrics ADDR:PORT]
       [--admin ADDR:PORT|off] [--admin-plain] [--tls ADDR:PORT|:PORT]
                             make the gateway: its key, certificate, registry;
                             the enrollment API's certificate is self-signed,
                             or yours with --cert and --key (PEM, the leaf
                             first; invites pin its public key); --metrics:
                             run serves Prometheus metrics and /healthz
                             there, plain HTTP (loopback or a management
                             network only; default: off); --admin: run
                             serves the admin JSON API and /healthz there
                             (default 127.0.0.1:8444), HTTPS with the same
                             certificate, or plain HTTP with --admin-plain
                             (a loopback address only); --tls: run also
                             serves OpenConnect clients (openconnect,
                             AnyConnect-compatible apps) there, TLS on TCP
                             and DTLS on UDP, for users with a password
                             (default: off)
  user add NAME [--group G]  add a user (to a group)
  user remove NAME           remove a user and revoke every device of theirs
  user passwd NAME [--generate | --clear]
                             set NAME's password for OpenConnect (TLS) logins:
                             read from stdin (one line, 10 to 1024 bytes), or
                             generated and printed once when stdin is a
                             terminal or with --generate (stored as
                             argon2id); --clear removes it (logins refused)
  users                      list the users: name, groups, and tls-password
                             if they have a password for OpenConnect logins
  invite USER [--ttl 24h] [--uses 1]
                             make an enrollment URL for USER (the last line
                             of the output, alone)
  devices [--json] [--all]   list devices: user, name, protocol (wireguard,
                             openconnect), addresses, endpoint, last
                             handshake, bytes, online (live while run runs)
  export USER DEVICE [--qr FILE.png | --qr -] [--gateway NAME]
                             make a device for an official WireGuard app: its
                             key is made here and printed once, in the
                             wg-quick config on stdout (and its QR code)
  revoke USER/DEVICE         revoke a device: its addresses go back to the pool
  device rename USER/DEVICE NEW
                             rename an active device of USER to NEW (a name
                             as at enrollment, free among USER's devices);
                             its key and addresses stay
  allow GROUP DEST [tcp/PORT[-PORT] | udp/PORT[-PORT] | icmp]
                             let GROUP's members reach DEST (a group without
                             rules reaches every route, unless init said
                             --default-access deny); enforced in the data path
  rules [--remove ID]        list the access rules, or remove one
  route add|remove CIDR      change the routes offered; connected devices
                             get them within 10 s
  routes                     list the routes offered
  backup FILE                write a consistent copy of the SQLite registry
                             to FILE (a new file, mode 0600), also while the
                             gateway runs; a PostgreSQL registry: pg_dump
  admin add NAME [--generate] add an administrator of the admin API: the
                             password is read from stdin (one line), or
                             generated and printed once when stdin is a
                             terminal or with --generate (stored as argon2id)
  admin remove NAME          remove an admin: their sessions and API tokens
                             stop working at once
  admin token NAME           make an API token for NAME, printed once
                             (send it as Authorization: Bearer TOKEN)
  admins                     list the admins and their live tokens
  run [--foreground] [--log FILE]
                             serve the gateway: its interface, the enrollment
                             API, forwarding, and the registry's devices as
                             peers (a revoke is in force within a second),
                             and the admin API if init gave --admin

Every change is written to the registry's audit log with who made it.

Example:
  sudo ptun gateway init --endpoint 198.18.0.1:51820 --api 198.18.0.1:8443 \
       --pool 100.80.0.0/16 --pool 2001:db8:80::/64 --route 198.18.2.0/24 --dns 198.18.2.53
  sudo ptun gateway user add alice --group eng
  sudo ptun gateway invite alice --ttl 24h
  sudo ptun gateway user passwd alice --generate   # openconnect --user alice/laptop …
  sudo ptun gateway export alice phone --qr -    # scan it with the WireGuard app
  sudo ptun gateway device rename alice/phone work-phone
  sudo ptun gateway backup /var/backups/ptun-registry-2026-12-03.db

Example, with your own certificate for the enrollment API:
  sudo ptun gateway init --endpoint 198.18.0.1:51820 --api 198.18.0.1:8443 --pool 100.80.0.0/16 \
       --cert /etc/ssl/vpn.example.pem --key /etc/ssl/private/vpn.example.key

Example, the admin API (docs/admin-api.md):
  sudo ptun gateway admin add root --generate
  TOKEN=$(sudo ptun gateway admin token root | tail -1)
  curl -s --cacert /var/lib/ptun/gw/cert.pem -H "Authorization: Bearer $TOKEN" \
       https://127.0.0.1:8444/api/v1/admin/devices

Example, with metrics:
  sudo ptun gateway init … --metrics 127.0.0.1:9587   # then, with run:
  curl -s http://127.0.0.1:9587/metrics | grep ^ptun_peer_received_bytes_total
`

const gatewayExportUsage = `Usage: ptun gateway export USER DEVICE [--qr FILE.png | --qr -] [--gateway NAME] [--state DIR]

Make device DEVICE for USER, for an official WireGuard app or wg-quick,
which cannot enroll: the device's key pair is made here, its public key
goes to the registry with an address from every pool (as an enrollment
would, and in the audit log as an export), and its wg-quick configuration
is printed on stdout. The private key is in that output only and is not
stored anywhere: keep it safe, and if it leaks, revoke the device
(ptun gateway revoke USER/DEVICE).

--qr FILE.png also writes the configuration as a QR code, for the app's
"scan from QR code", to a new FILE.png of mode 0600 (an existing file is
never overwritten); --qr - prints the QR code after the configuration.
--gateway NAME uses that gateway of the registry (its key and endpoint)
instead of this state folder's.

wg-quick names the interface after the file: at most 15 characters
before .conf. Nothing is written when the export is refused (unknown user,
device name taken, no free address, bad name).

Examples:
  sudo ptun gateway export alice phone --qr -
  sudo ptun gateway export alice laptop --qr alice-laptop.png > wg-alice.conf
  sudo wg-quick up ./wg-alice.conf              # on alice's laptop
`

var gatewayCommands = map[string]func(args []string) error{
	"init":    gatewayInit,
	"user":    gatewayUser,
	"users":   gatewayUsers,
	"invite":  gatewayInvite,
	"devices": gatewayDevices,
	"export":  gatewayExport,
	"revoke":  gatewayRevoke,
	"device":  gatewayDevice,
	"run":     gatewayRun,
	"allow":   gatewayAllow,
	"rules":   gatewayRules,
	"route":   gatewayRoute,
	"routes":  gatewayRoutes,
	"backup":  gatewayBackup,
	"admin":   gatewayAdmin,
	"admins":  gatewayAdmins,
}

func runGateway(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, gatewayUsage)
		return errUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, gatewayUsage)
		return errHelped
	}
	cmd, ok := gatewayCommands[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "ptun gateway: no subcommand %q\nrun 'ptun gateway -h' for help\n", args[0])
		return errUsage
	}
	return cmd(args[1:])
}

// gwFlags is a subcommand's flag set with --state.
func gwFlags(name string) (*flag.FlagSet, *string) {
	fs := newFlagSet("gateway " + name)
	commandUsage["gateway "+name] = gatewayUsage
	return fs, fs.String("state", gateway.DefaultStateDir, "the gateway's state folder")
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func gatewayInit(args []string) error {
	fs, state := gwFlags("init")
	name := fs.String("name", "gw1", "this gateway's name")
	iface := fs.String("interface", "ptun-gw", "the gateway's tunnel interface")
	endpoint := fs.String("endpoint", "", "ADDRESS:PORT devices send WireGuard to")
	api := fs.String("api", "", "ADDRESS:PORT of the enrollment API")
	db := fs.String("db", "", "a postgres:// registry shared by several gateways (default: SQLite in the state folder)")
	mtu := fs.Int("mtu", 1420, "the tunnel MTU devices get")
	keepalive := fs.Int("keepalive", 25, "the keepalive devices get, in seconds")
	masq := fs.Bool("masquerade", false, "source-NAT the devices' traffic towards the routes")
	deny := fs.String("default-access", "allow", "what a group without access rules reaches: allow (every route) or deny (nothing)")
	certFile := fs.String("cert", "", "the enrollment API's certificate, PEM, the leaf first (default: a self-signed one); with --key")
	keyFile := fs.String("key", "", "the private key of --cert, PEM, unencrypted")
	admin := fs.String("admin", gateway.DefaultAdmin.String(), "serve the admin API on `ADDR` (ADDRESS:PORT) while the gateway runs, HTTPS with the enrollment API's certificate; off: none")
	adminPlain := fs.Bool("admin-plain", false, "serve the admin API over plain HTTP: only with a loopback --admin")
	metrics := fs.String("metrics", "", "serve /metrics and /healthz over plain HTTP on `ADDR` (ADDRESS:PORT, such as 127.0.0.1:9587) while the gateway runs (default: off)")
	tlsAddr := fs.String("tls", "", "also serve OpenConnect (SSL VPN: TLS on TCP, DTLS on UDP) on `ADDR` (ADDRESS:PORT or :PORT, such as :443) for password logins (default: off)")
	var pools, routes, dns, search listFlag
	fs.Var(&pools, "pool", "an address pool (repeatable): one IPv4 and one IPv6 is usual")
	fs.Var(&routes, "route", "a route offered to devices (repeatable); 0.0.0.0/0 for a full tunnel")
	fs.Var(&dns, "dns", "a DNS server offered to devices (repeatable)")
	fs.Var(&search, "search", "a search domain offered to devices (repeatable)")
	if _, err := parseInterspersed(fs, args, 0); err != nil {
		return err
	}
	o := gateway.InitOptions{Config: gateway.Config{Name: *name, Interface: *iface, DB: *db, Masquerade: *masq,
		Site: gateway.Site{MTU: *mtu, Keepalive: *keepalive, Search: search}},
		CertFile: *certFile, KeyFile: *keyFile}
	var err error
	if o.Endpoint, err = netip.ParseAddrPort(*endpoint); err != nil {
		return fmt.Errorf("--endpoint %q: give ADDRESS:PORT, such as 198.18.0.1:51820", *endpoint)
	}
	if o.API, err = netip.ParseAddrPort(*api); err != nil {
		return fmt.Errorf("--api %q: give ADDRESS:PORT, such as 198.18.0.1:8443", *api)
	}
	if o.Metrics, err = telemetry.ParseAddr(*metrics); err != nil {
		return err
	}
	if *admin != "off" && *admin != "" {
		if o.Admin, err = netip.ParseAddrPort(*admin); err != nil || o.Admin.Port() == 0 {
			return fmt.Errorf("--admin %q: give ADDRESS:PORT, such as %v, or off", *admin, gateway.DefaultAdmin)
		}
	}
	o.AdminPlain = *adminPlain
	if *tlsAddr != "" {
		if o.TLS, err = gateway.ParseTLSAddr(*tlsAddr); err != nil {
			return err
		}
	}
	switch *deny {
	case "allow":
	case "deny":
		o.DefaultDeny = true
	default:
		return fmt.Errorf("--default-access %q: allow or deny", *deny)
	}
	for _, p := range pools {
		pfx, err := netip.ParsePrefix(p)
		if err != nil || pfx != pfx.Masked() {
			return fmt.Errorf("--pool %q is not a network prefix such as 100.80.0.0/16", p)
		}
		o.Pools = append(o.Pools, pfx)
	}
	for _, r := range routes {
		pfx, err := netip.ParsePrefix(r)
		if err != nil {
			return fmt.Errorf("--route %q is not a prefix such as 198.18.2.0/24", r)
		}
		o.Site.Routes = append(o.Site.Routes, pfx)
	}
	for _, d := range dns {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return fmt.Errorf("--dns %q is not an address", d)
		}
		o.Site.DNS = append(o.Site.DNS, a)
	}
	pin, err := gateway.Init(context.Background(), *state, o)
	if err != nil {
		return err
	}
	whose := "self-signed"
	if o.CertFile != "" {
		whose = "copied from " + o.CertFile
	}
	fmt.Fprintf(stdout, "gateway %s made in %s\n  WireGuard endpoint %s, enrollment API %s\n  certificate %s (%s)\n",
		o.Name, *state, o.Endpoint, o.APIURL(), pin, whose)
	if u := o.TLSURL(); u != "" {
		fmt.Fprintf(stdout, "  OpenConnect listener %s, named in devices' profiles (set a user's password: ptun gateway user passwd NAME)\n", u)
	}
	if u := o.AdminURL(); u != "" {
		fmt.Fprintf(stdout, "  admin API %s%s/ (add an admin: ptun gateway admin add NAME)\n", u, gateway.AdminPrefix)
	}
	if o.Metrics.IsValid() {
		fmt.Fprintf(stdout, "  metrics http://%v/metrics, health http://%v/healthz (plain HTTP)\n", o.Metrics, o.Metrics)
	}
	return nil
}

// withRegistry opens state's registry for fn.
func withRegistry(state string, fn func(ctx context.Context, c *gateway.Config, reg registry.Registry) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, reg, err := gateway.Load(ctx, state)
	if err != nil {
		return err
	}
	defer reg.Close()
	return fn(registry.WithActor(ctx, gateway.Actor()), c, reg)
}

func gatewayUser(args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, gatewayUsage)
		return errHelped
	}
	if len(args) > 0 && args[0] == "passwd" {
		return gatewayUserPasswd(args[1:])
	}
	if len(args) == 0 || (args[0] != "add" && args[0] != "remove") {
		fmt.Fprint(os.Stderr, "ptun gateway user: add NAME [--group G], remove NAME, or passwd NAME [--generate|--clear]\nrun 'ptun gateway -h' for help\n")
		return errUsage
	}
	fs, state := gwFlags("user " + args[0])
	var groups listFlag
	if args[0] == "add" {
		fs.Var(&groups, "group", "a group to put the user in (repeatable)")
	}
	pos, err := parseInterspersed(fs, args[1:], 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "ptun gateway user: the user's name is missing")
		return errUsage
	}
	return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
		if args[0] == "remove" {
			if err := reg.RemoveUser(ctx, pos[0]); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "user %s removed; their devices are revoked\n", pos[0])
			return nil
		}
		if _, err := reg.AddUser(ctx, pos[0]); err != nil {
			return err
		}
		for _, g := range groups {
			if _, err := reg.AddGroup(ctx, g); err != nil && !errors.Is(err, registry.ErrExists) {
				return err
			}
			if err := reg.AddMember(ctx, g, pos[0]); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "user %s added\n", pos[0])
		return nil
	})
}

func gatewayUsers(args []string) error {
	fs, state := gwFlags("users")
	if _, err := parseInterspersed(fs, args, 0); err != nil {
		return err
	}
	return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
		users, err := reg.ListUsers(ctx)
		if err != nil {
			return err
		}
		for _, u := range users {
			gs, _ := reg.GroupsOf(ctx, u.Name)
			var names []string
			for _, g := range gs {
				names = append(names, g.Name)
			}
			pw := "-"
			if u.HasPassword {
				pw = "tls-password"
			}
			fmt.Fprintf(stdout, "%s\t%s\t%s\n", u.Name, strings.Join(names, ","), pw)
		}
		return nil
	})
}

func gatewayInvite(args []string) error {
	fs, state := gwFlags("invite")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the invite is valid")
	uses := fs.Int("uses", 1, "how many devices it may enroll")
	pos, err := parseInterspersed(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "ptun gateway invite: the user's name is missing")
		return errUsage
	}
	return withRegistry(*state, func(ctx context.Context, c *gateway.Config, reg registry.Registry) error {
		pin, err := gateway.Pin(*state)
		if err != nil {
			return err
		}
		inv, secret, err := reg.CreateInvite(ctx, pos[0], *ttl, *uses)
		if err != nil {
			return err
		}
		u, err := gateway.InviteURL(c, secret, pin)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "invite %s for %s: %d use(s), valid until %s; shown once, give it to the user:\n%s\n",
			inv.Prefix, pos[0], inv.UsesLeft, inv.ExpiresAt.Format(time.RFC3339), u)
		return nil
	})
}

// deviceRow is one line of `ptun gateway devices`: the registry's device
// and, while the gateway runs, its peer's live figures.
type deviceRow struct {
	registry.Device
	Endpoint      string    `json:"endpoint,omitempty"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
	Online        bool      `json:"online"` // a handshake within the last 3 minutes, or an OpenConnect session
	// An OpenConnect device's session: the path it takes (dtls, cstp),
	// the share of its bytes DTLS carried, and the packets its access
	// rules refused.
	Path        string `json:"path,omitempty"`
	DTLSRxBytes uint64 `json:"dtls_rx_bytes,omitempty"`
	DTLSTxBytes uint64 `json:"dtls_tx_bytes,omitempty"`
	DropACL     uint64 `json:"drop_acl,omitempty"`
}

// onlineWithin is how recent a device's last handshake is when it counts
// as online (as the admin API counts it).
const onlineWithin = gateway.OnlineWithin

func gatewayDevices(args []string) error {
	fs, state := gwFlags("devices")
	asJSON := fs.Bool("json", false, "print JSON")
	all := fs.Bool("all", false, "include revoked devices")
	if _, err := parseInterspersed(fs, args, 0); err != nil {
		return err
	}
	return withRegistry(*state, func(ctx context.Context, c *gateway.Config, reg registry.Registry) error {
		devs, err := reg.ListDevices(ctx, registry.DeviceFilter{IncludeRevoked: *all})
		if err != nil {
			return err
		}
		sort.SliceStable(devs, func(i, j int) bool { return devs[i].User < devs[j].User })
		// The running gateway's peers, by key (none when it does not run).
		sock := uapi.SocketPath(c.Interface)
		live, liveErr := uapi.Get(sock)
		peers := map[registry.Key]wgcfg.PeerState{}
		if liveErr == nil {
			for _, p := range live.Peers {
				peers[registry.Key(p.PublicKey)] = p
			}
		}
		// The running gateway's OpenConnect sessions, by device.
		tlsLive := map[int64]ocengine.SessionInfo{}
		if c.TLS.IsValid() {
			if ts, err := gateway.ReadTLSSessions(*state); err == nil {
				for _, si := range ts.Sessions {
					tlsLive[si.DeviceID] = si
				}
			}
		}
		rows := make([]deviceRow, 0, len(devs))
		for _, d := range devs {
			r := deviceRow{Device: d}
			// An openconnect device's key is random bytes, never a peer's.
			if p, ok := peers[d.PublicKey]; ok && !d.Revoked() && d.Protocol == registry.ProtocolWireGuard {
				if p.Endpoint.IsValid() {
					r.Endpoint = p.Endpoint.String()
				}
				r.LastHandshake, r.RxBytes, r.TxBytes = p.LastHandshake, p.RxBytes, p.TxBytes
				r.Online = !p.LastHandshake.IsZero() && time.Since(p.LastHandshake) < onlineWithin
			}
			// A session over TLS (an openconnect device's, or a WireGuard
			// device's that logged in by its key: ptun up --via tls) is
			// the path in use: its figures.
			if si, ok := tlsLive[d.ID]; ok && !d.Revoked() && si.Path != "" {
				r.Online, r.Endpoint = true, ""
				r.Path, r.RxBytes, r.TxBytes = si.Path, si.RxBytes, si.TxBytes
				r.DTLSRxBytes, r.DTLSTxBytes, r.DropACL = si.DTLSRxBytes, si.DTLSTxBytes, si.DropACL
				r.LastHandshake = si.Started
			}
			rows = append(rows, r)
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(rows)
		}
		w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "USER\tDEVICE\tPROTOCOL\tADDRESSES\tENDPOINT\tHANDSHAKE\tRECEIVED\tSENT\tSTATE")
		for _, r := range rows {
			var as []string
			for _, a := range r.Addresses {
				as = append(as, a.String())
			}
			st := "offline"
			switch {
			case r.Revoked():
				st = "revoked " + r.RevokedAt.Format(time.RFC3339)
			case r.Path != "" && r.Online:
				st = "online (" + r.Path + ")"
			case r.Protocol != registry.ProtocolWireGuard:
				st = "offline" // no session
			case r.Online:
				st = "online"
			}
			hs, ep := "-", r.Endpoint
			if !r.LastHandshake.IsZero() {
				hs = time.Since(r.LastHandshake).Round(time.Second).String() + " ago"
			}
			if ep == "" {
				ep = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.User, r.Name, r.Protocol, strings.Join(as, ","), ep, hs,
				humanBytes(r.RxBytes), humanBytes(r.TxBytes), st)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if liveErr != nil {
			fmt.Fprintf(stdout, "(gateway %s is not running on %s: no live figures)\n", c.Name, c.Interface)
			return nil
		}
		if stats, err := uapi.Stats(sock); err == nil {
			for _, st := range stats {
				if st.Name == "drop_acl" {
					fmt.Fprintf(stdout, "packets refused by access rules (drop_acl): %d\n", st.Value)
				}
			}
		}
		return nil
	})
}

func gatewayRevoke(args []string) error {
	fs, state := gwFlags("revoke")
	pos, err := parseInterspersed(fs, args, 1)
	if err != nil {
		return err
	}
	user, dev, ok := strings.Cut(strings.Join(pos, ""), "/")
	if len(pos) != 1 || !ok {
		fmt.Fprintln(os.Stderr, "ptun gateway revoke: name the device as USER/DEVICE")
		return errUsage
	}
	return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
		devs, err := reg.ListDevices(ctx, registry.DeviceFilter{User: user, Name: dev})
		if err != nil {
			return err
		}
		if len(devs) == 0 {
			return fmt.Errorf("no active device %s/%s (ptun gateway devices lists them)", user, dev)
		}
		for _, d := range devs {
			if err := reg.RevokeDevice(ctx, d.ID); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "%s/%s revoked\n", user, dev)
		if devs[0].Protocol == registry.ProtocolOpenConnect {
			fmt.Fprintf(os.Stderr, "an OpenConnect device: %s's next login as %s/%s makes a new one; to keep them out: ptun gateway user passwd %s --clear\n",
				user, user, dev, user)
		}
		return nil
	})
}

// gatewayDevice is `ptun gateway device rename USER/DEVICE NEW`.
func gatewayDevice(args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, gatewayUsage)
		return errHelped
	}
	if len(args) == 0 || args[0] != "rename" {
		fmt.Fprint(os.Stderr, "ptun gateway device: rename USER/DEVICE NEW\nrun 'ptun gateway -h' for help\n")
		return errUsage
	}
	fs, state := gwFlags("device rename")
	pos, err := parseInterspersed(fs, args[1:], 2)
	if err != nil {
		return err
	}
	var user, dev string
	ok := len(pos) == 2
	if ok {
		user, dev, ok = strings.Cut(pos[0], "/")
	}
	if !ok {
		fmt.Fprintln(os.Stderr, "ptun gateway device rename: give USER/DEVICE and the new name, such as: ptun gateway device rename alice/phone work-phone")
		return errUsage
	}
	name := pos[1]
	return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
		devs, err := reg.ListDevices(ctx, registry.DeviceFilter{User: user, Name: dev})
		if err != nil {
			return err
		}
		if len(devs) == 0 {
			return fmt.Errorf("no active device %s/%s (ptun gateway devices lists them)", user, dev)
		}
		d, err := reg.RenameDevice(ctx, devs[0].ID, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s/%s renamed %s/%s\n", user, dev, d.User, d.Name)
		return nil
	})
}

// gatewayExport is `ptun gateway export USER DEVICE [--qr FILE.png|-]
// [--gateway NAME]`.
func gatewayExport(args []string) error {
	fs, state := gwFlags("export")
	commandUsage["gateway export"] = gatewayExportUsage
	qrDest := fs.String("qr", "", "also write the config as a QR code: to `FILE.png` (mode 0600, never overwritten), or - for the terminal")
	gwName := fs.String("gateway", "", "the registry's gateway whose key and endpoint the config uses (default: this state folder's)")
	pos, err := parseInterspersed(fs, args, 2)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fmt.Fprintln(os.Stderr, "ptun gateway export: give USER and DEVICE, such as: ptun gateway export alice phone\nrun 'ptun gateway export -h' for help")
		return errUsage
	}
	pngPath := *qrDest
	if pngPath == "-" {
		pngPath = ""
	}
	if pngPath != "" {
		if _, err := os.Lstat(pngPath); err == nil {
			return fmt.Errorf("--qr %s exists: name a new file (an export never overwrites one)", pngPath)
		}
	}
	return withRegistry(*state, func(ctx context.Context, c *gateway.Config, reg registry.Registry) (err error) {
		var png *os.File // made by the check, so that a refused export leaves none
		defer func() {
			if png != nil && err != nil {
				png.Close()
				os.Remove(pngPath)
			}
		}()
		check := func(dry string) error {
			if *qrDest == "" {
				return nil
			}
			if err := gateway.CheckQR(dry); err != nil {
				return err
			}
			if pngPath == "" {
				return nil
			}
			f, err := os.OpenFile(pngPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("--qr %s exists: name a new file (an export never overwrites one)", pngPath)
			} else if err != nil {
				return fmt.Errorf("--qr: %w", err)
			}
			png = f
			return nil
		}
		conf, dev, err := gateway.Export(ctx, reg, c, gateway.ExportRequest{User: pos[0], Device: pos[1], Gateway: *gwName, Check: check})
		if err != nil {
			return err
		}
		// From here on the device exists: a failure revokes it, so that
		// no key stays enrolled that nobody holds.
		undo := func(what string, err error) error {
			if rerr := reg.RevokeDevice(ctx, dev.ID); rerr != nil {
				return fmt.Errorf("%s: %v; revoking %s/%s failed too (%v): revoke it", what, err, dev.User, dev.Name, rerr)
			}
			return fmt.Errorf("%s: %v; %s/%s is revoked: export it again under another name", what, err, dev.User, dev.Name)
		}
		var term string
		if png != nil {
			b, err := gateway.QRPNG(conf)
			if err == nil {
				_, err = png.Write(b)
			}
			if cerr := png.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return undo("writing "+pngPath, err)
			}
		} else if *qrDest == "-" {
			if term, err = gateway.QRTerminal(conf); err != nil {
				return undo("the QR code", err)
			}
		}
		if _, err := io.WriteString(stdout, conf+term); err != nil {
			return undo("printing the config", err)
		}
		var as []string
		for _, a := range dev.Addresses {
			as = append(as, a.String())
		}
		fmt.Fprintf(os.Stderr, "device %s/%s made (%s); its private key is in this config only, not stored anywhere\n",
			dev.User, dev.Name, strings.Join(as, ", "))
		if png != nil {
			fmt.Fprintf(os.Stderr, "QR code written to %s (it holds the private key: delete it once scanned)\n", pngPath)
		}
		return nil
	})
}

// gatewayRun is `ptun gateway run [--state DIR] [--foreground] [--log FILE]`.
func gatewayRun(args []string) error {
	fs, state := gwFlags("run")
	foreground := fs.Bool("foreground", false, "stay in the foreground and log to stderr")
	logFile := fs.String("log", "", "append the log to FILE")
	ipcFlag := fs.String("ipc", os.Getenv(ipc.EnvIPC), "how packets reach the engine: fd, shm, seqpacket or inproc")
	if _, err := parseInterspersed(fs, args, 0); err != nil {
		return err
	}
	mode, err := ipc.ParseMode(*ipcFlag)
	if err != nil {
		return fmt.Errorf("--ipc: %w", err)
	}
	if !*foreground && os.Getenv(readyFDEnv) == "" {
		if code := daemonize(append([]string{"gateway", "run"}, args...)); code != 0 {
			return errReported
		}
		return nil
	}
	if err := front.DropCapabilities(); err != nil {
		readyReporter()(err)
		return err
	}
	ready := readyReporter()
	logger, closeLog, err := openLog(*logFile, *foreground, "gateway")
	if err != nil {
		ready(err)
		return err
	}
	defer closeLog()
	gomaxprocs.Apply()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	level := os.Getenv("LOG_LEVEL")
	verbosef := func(string, ...any) {}
	if level == "verbose" || level == "debug" {
		verbosef = logger.Printf
	}
	cfg, err := gateway.LoadConfig(*state)
	if err != nil {
		ready(err)
		return err
	}
	err = gateway.Run(ctx, *state, gateway.RunOptions{Logf: logger.Printf, Verbosef: verbosef, Mode: mode,
		EngineCommand: func() (*exec.Cmd, error) {
			return engine.Command(cfg.Interface, os.Args[0], engineRole, cfg.Interface)
		},
		TLSEngineCommand: func() (*exec.Cmd, error) {
			return engine.Command(cfg.TLSInterface(), os.Args[0], tlsEngineRole, cfg.TLSInterface())
		},
		Ready: ready})
	if err != nil {
		logger.Printf("gateway: %v", err)
	}
	return err
}

// gatewayAllow is `ptun gateway allow GROUP DEST [tcp/PORT|udp/PORT|icmp]`,
// and with --remove ID, the removal of a rule; `ptun gateway rules` lists.
func gatewayAllow(args []string) error {
	fs, state := gwFlags("allow")
	pos, err := parseInterspersed(fs, args, 3)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		fmt.Fprintln(os.Stderr, "ptun gateway allow: GROUP DEST [tcp/PORT | udp/PORT | icmp]")
		return errUsage
	}
	r, err := registry.ParseRule(strings.Join(pos[1:], " "))
	if err != nil {
		return err
	}
	return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
		if _, err := reg.AddGroup(ctx, pos[0]); err != nil && !errors.Is(err, registry.ErrExists) {
			return err
		}
		added, err := reg.AddRule(ctx, pos[0], r)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rule %d: group %s may reach %s\n", added.ID, pos[0], strings.Join(pos[1:], " "))
		return nil
	})
}

func gatewayRules(args []string) error {
	fs, state := gwFlags("rules")
	remove := fs.Int64("remove", 0, "remove the rule with this ID")
	if _, err := parseInterspersed(fs, args, 0); err != nil {
		return err
	}
	return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
		if *remove != 0 {
			if err := reg.RemoveRule(ctx, *remove); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "rule %d removed\n", *remove)
			return nil
		}
		rules, err := reg.ListRules(ctx, "")
		if err != nil {
			return err
		}
		for _, r := range rules {
			fmt.Fprintf(stdout, "%d\t%s\t%s\n", r.ID, r.Group, r)
		}
		return nil
	})
}

// gatewayRoute is `ptun gateway route add|remove CIDR` and `routes`: the
// routes the gateway offers, which reach connected devices within seconds.
func gatewayRoute(args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, gatewayUsage)
		return errHelped
	}
	if len(args) == 0 || (args[0] != "add" && args[0] != "remove") {
		fmt.Fprint(os.Stderr, "ptun gateway route: add CIDR or remove CIDR\nrun 'ptun gateway -h' for help\n")
		return errUsage
	}
	fs, state := gwFlags("route " + args[0])
	pos, err := parseInterspersed(fs, args[1:], 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintf(os.Stderr, "ptun gateway route %s: give one CIDR, such as 198.18.3.0/24\n", args[0])
		return errUsage
	}
	pfx, err := netip.ParsePrefix(pos[0])
	if err != nil {
		return fmt.Errorf("%q is not a prefix such as 198.18.3.0/24", pos[0])
	}
	c, err := gateway.EditRoutes(*state, pfx, args[0] == "remove")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "routes offered: %v (connected devices get them within 10 s)\n", c.Site.Routes)
	if err := withRegistry(*state, func(ctx context.Context, c *gateway.Config, reg registry.Registry) error {
		return reg.NoteGatewayChange(ctx, c.Name, "gateway.route."+args[0], pfx.Masked().String())
	}); err != nil {
		return fmt.Errorf("the route is changed, but writing it to the audit log failed: %w", err)
	}
	return nil
}

func gatewayRoutes(args []string) error {
	fs, state := gwFlags("routes")
	if _, err := parseInterspersed(fs, args, 0); err != nil {
		return err
	}
	c, err := gateway.LoadConfig(*state)
	if err != nil {
		return err
	}
	for _, r := range c.Site.Routes {
		fmt.Fprintln(stdout, r)
	}
	return nil
}
