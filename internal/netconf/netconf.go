// Package netconf applies a client tunnel's network configuration to the
// host and takes it away again: the interface's addresses and MTU, the
// routes it carries (a full tunnel through a routing table of its own and
// policy rules, so that the tunnel's own datagrams, which carry a firewall
// mark, do not loop into it), the resolver configuration, and a kill switch
// (an nftables table that lets nothing leave but through the tunnel, to the
// gateway's endpoints, and on loopback).
//
// Everything Apply changes is written down in a Record, step by step as it
// goes (Options.Save), so that Undo removes exactly that: after `down`, and
// also after a client that died, by the next `up` or `down`. Apply is all
// or nothing: a step that fails undoes the ones before it.
//
// Every call works in the network namespace of the calling thread (the
// product's is the host's; tests call it inside a namespace of their own).
// It uses netlink and nftables directly, never the ip or nft commands.
package netconf

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/ptun-vpn/ptun/wgcfg"
)

// Plan is the configuration of one tunnel interface.
type Plan struct {
	Interface string         // the tunnel interface, which exists
	Addresses []netip.Prefix // the device's addresses, e.g. 100.80.0.7/32
	MTU       int            // 0 keeps the interface's
	// Routes are the destinations the tunnel carries. 0.0.0.0/0 and ::/0
	// make a full tunnel for that family: its routes go to table Table,
	// with a rule that sends everything not marked FwMark there.
	Routes []netip.Prefix
	FwMark uint32 // the mark on the tunnel's own datagrams; required for a full tunnel
	Table  int    // the routing table of a full tunnel; 0 means FwMark
	// Exclude are destinations kept out of a full tunnel (an OpenConnect
	// server's split excludes): "throw" routes in its table, so that they
	// are looked up in the main table as if there were no tunnel. Each
	// needs a full tunnel of its family.
	Exclude []netip.Prefix

	DNS    []netip.Addr // resolvers; none leaves the resolver configuration alone
	Search []string     // search domains

	// KillSwitch, when set, lets nothing leave the host except through
	// the tunnel, to these endpoints (the gateways) and on loopback.
	KillSwitch *KillSwitch
}

// KillSwitch lists what may leave the host besides the tunnel and loopback.
type KillSwitch struct {
	Endpoints []netip.AddrPort // UDP (or TCP) to these, e.g. the gateways
}

// Options tune Apply.
type Options struct {
	// Save is called with the record after every step that changed the
	// host, so that a crash leaves a record of what to undo. nil: none.
	Save func(*Record) error
	// ResolvConf is the resolver file to write. By default the DNS goes
	// to systemd-resolved over D-Bus when it runs, else to
	// /etc/resolv.conf; a file named here is always written instead.
	ResolvConf string
}

func (o *Options) resolvConf() string {
	if o.ResolvConf == "" {
		return "/etc/resolv.conf"
	}
	return o.ResolvConf
}

// Check validates p: one line saying what to change, nothing applied.
func (p *Plan) Check() error {
	if err := wgcfg.CheckInterfaceName(p.Interface); err != nil {
		return err
	}
	if p.MTU != 0 && (p.MTU < 576 || p.MTU > 65535) {
		return fmt.Errorf("netconf: MTU %d is out of range (576-65535)", p.MTU)
	}
	for _, a := range p.Addresses {
		if !a.IsValid() {
			return fmt.Errorf("netconf: invalid address %v", a)
		}
	}
	for _, r := range p.Routes {
		if !r.IsValid() || r != r.Masked() {
			return fmt.Errorf("netconf: route %v is not a network prefix (write %v)", r, r.Masked())
		}
		if r.Bits() == 0 && p.FwMark == 0 {
			return fmt.Errorf("netconf: a full tunnel (%v) needs the tunnel's firewall mark", r)
		}
	}
	for _, x := range p.Exclude {
		if !x.IsValid() || x != x.Masked() {
			return fmt.Errorf("netconf: excluded route %v is not a network prefix", x)
		}
		if !p.full(family(x.Addr())) {
			return fmt.Errorf("netconf: excluded route %v needs a full tunnel of its family", x)
		}
	}
	for _, d := range p.DNS {
		if !d.IsValid() {
			return fmt.Errorf("netconf: invalid DNS server %v", d)
		}
	}
	for _, s := range p.Search {
		if !validDomain(s) {
			return fmt.Errorf("netconf: %q is not a search domain", s)
		}
	}
	if p.KillSwitch != nil {
		for _, e := range p.KillSwitch.Endpoints {
			if !e.IsValid() || e.Port() == 0 {
				return fmt.Errorf("netconf: kill switch endpoint %v needs an address and a port", e)
			}
		}
	}
	return nil
}

// validDomain accepts DNS names of letters, digits, '-' and '.', up to 253
// bytes, labels up to 63: nothing that could break a resolv.conf line.
func validDomain(s string) bool { return ValidDomain(s) }

// ValidDomain reports whether s is a DNS name of letters, digits, '-' and '.',
// up to 253 bytes with labels up to 63: safe on a resolv.conf line.
func ValidDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// full reports whether p is a full tunnel for address family fam.
func (p *Plan) full(fam int) bool {
	for _, r := range p.Routes {
		if r.Bits() == 0 && family(r.Addr()) == fam {
			return true
		}
	}
	return false
}

func (p *Plan) table() int {
	if p.Table != 0 {
		return p.Table
	}
	return int(p.FwMark)
}

// Record is what Apply changed, to be undone; it marshals to JSON.
type Record struct {
	Interface string          `json:"interface"`
	MTU       *MTURecord      `json:"mtu,omitempty"`
	Addresses []netip.Prefix  `json:"addresses,omitempty"`
	Routes    []RouteRecord   `json:"routes,omitempty"`
	Rules     []RuleRecord    `json:"rules,omitempty"`
	Sysctls   []SysctlRecord  `json:"sysctls,omitempty"`
	Resolv    *ResolvRecord   `json:"resolv,omitempty"`
	Resolved  *ResolvedRecord `json:"resolved,omitempty"`
	NftTable  string          `json:"nft_table,omitempty"`
}

// RouteRecord is one route Apply added.
type RouteRecord struct {
	Dst   netip.Prefix `json:"dst"`
	Table int          `json:"table,omitempty"` // 0: main
	Throw bool         `json:"throw,omitempty"` // an excluded route: a throw route, of no interface
}

// RuleRecord is one policy rule Apply added.
type RuleRecord struct {
	Family   int    `json:"family"` // unix.AF_INET or AF_INET6
	Priority int    `json:"priority"`
	Table    int    `json:"table"`
	Mark     uint32 `json:"mark,omitempty"` // with Invert: "not fwmark Mark"
	Invert   bool   `json:"invert,omitempty"`
	// SuppressPrefixlen 0: "table main suppress_prefixlength 0" (any
	// route but a default one).
	Suppress bool `json:"suppress,omitempty"`
}

// SysctlRecord is a sysctl Apply changed and its value before.
type SysctlRecord struct {
	Path string `json:"path"`
	Old  string `json:"old"`
	New  string `json:"new"`
}

// MTURecord is the interface's MTU before Apply set it.
type MTURecord struct {
	Old int `json:"old"`
}

// ErrNotApplied is wrapped in an error of Undo that found something it had
// recorded already gone or changed by someone else: Undo went on with the
// rest, and left that part alone.
var ErrNotApplied = errors.New("netconf: not as applied")
