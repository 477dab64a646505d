package netconf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// The resolver configuration through systemd-resolved, when it runs: the
// tunnel's DNS servers and domains are set on its link over D-Bus, and
// RevertLink takes them away. Nothing is written to /etc/resolv.conf, which
// resolved owns. What goes where:
//
//   - a full tunnel (a default route through it): every query, by the
//     routing domain "~." and the link being a default route for DNS;
//   - a split tunnel with search domains: queries for those domains only
//     (the host's other resolvers keep the rest);
//   - a split tunnel without: the link takes part in every lookup, as
//     resolv.conf would have made it.

const (
	resolvedName = "org.freedesktop.resolve1"
	resolvedPath = "/org/freedesktop/resolve1"
	resolvedMgr  = "org.freedesktop.resolve1.Manager"
)

// ResolvedRecord says that the link's DNS was set in systemd-resolved.
type ResolvedRecord struct {
	IfIndex int `json:"ifindex"`
}

// resolvedBus connects to the system bus and reports whether resolved is
// on it; a host without a bus or without resolved is (nil, nil).
func resolvedBus() (*dbus.Conn, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, nil // no system bus: no resolved
	}
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, resolvedName).Store(&has); err != nil || !has {
		conn.Close()
		return nil, nil
	}
	return conn, nil
}

type dnsAddr struct {
	Family int32
	Addr   []byte
}

type dnsDomain struct {
	Domain    string
	RouteOnly bool
}

// setLinkDNS gives link ifindex p's servers and domains in resolved.
func setLinkDNS(conn *dbus.Conn, ifindex int, p *Plan) error {
	obj := conn.Object(resolvedName, resolvedPath)
	var addrs []dnsAddr
	for _, a := range p.DNS {
		a = a.WithZone("")
		fam := int32(unix.AF_INET6)
		if a.Unmap().Is4() {
			a, fam = a.Unmap(), unix.AF_INET
		}
		addrs = append(addrs, dnsAddr{Family: fam, Addr: a.AsSlice()})
	}
	var domains []dnsDomain
	for _, s := range p.Search {
		domains = append(domains, dnsDomain{Domain: strings.TrimSuffix(s, ".")})
	}
	full := false
	for _, r := range p.Routes {
		full = full || r.Bits() == 0
	}
	if full {
		domains = append(domains, dnsDomain{Domain: ".", RouteOnly: true})
	}
	defaultRoute := full || len(p.Search) == 0
	calls := []struct {
		method string
		args   []any
	}{
		{"SetLinkDNS", []any{int32(ifindex), addrs}},
		{"SetLinkDomains", []any{int32(ifindex), domains}},
		{"SetLinkDefaultRoute", []any{int32(ifindex), defaultRoute}},
		// No link-local name lookups into the tunnel: they would ask
		// the gateway's side for the host's own neighbourhood's names.
		{"SetLinkLLMNR", []any{int32(ifindex), "no"}},
		{"SetLinkMulticastDNS", []any{int32(ifindex), "no"}},
	}
	for _, c := range calls {
		if err := obj.Call(resolvedMgr+"."+c.method, 0, c.args...).Err; err != nil {
			return fmt.Errorf("netconf: systemd-resolved %s on link %d: %w", c.method, ifindex, err)
		}
	}
	return nil
}

// applyResolved sets the plan's DNS on its link through resolved, if it
// runs; ok says whether it did (else the caller writes resolv.conf).
func applyResolved(p *Plan, ifindex int, rec *Record) (ok bool, err error) {
	if len(p.DNS) == 0 && len(p.Search) == 0 {
		return false, nil
	}
	conn, err := resolvedBus()
	if conn == nil || err != nil {
		return false, err
	}
	defer conn.Close()
	// Recorded before the calls: a crash half-way still reverts.
	rec.Resolved = &ResolvedRecord{IfIndex: ifindex}
	if err := setLinkDNS(conn, ifindex, p); err != nil {
		revertResolved(rec.Resolved)
		rec.Resolved = nil
		return true, err
	}
	return true, nil
}

// revertResolved drops what resolved holds for the link; a link that is
// gone, or a resolved that no longer runs, holds nothing.
func revertResolved(r *ResolvedRecord) error {
	conn, err := resolvedBus()
	if conn == nil || err != nil {
		return err
	}
	defer conn.Close()
	err = conn.Object(resolvedName, resolvedPath).Call(resolvedMgr+".RevertLink", 0, int32(r.IfIndex)).Err
	var derr dbus.Error
	if errors.As(err, &derr) && strings.HasSuffix(derr.Name, ".NoSuchLink") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netconf: systemd-resolved RevertLink on link %d: %w", r.IfIndex, err)
	}
	return nil
}

// updateResolved replaces what resolved holds for r's link with p's.
func updateResolved(r *ResolvedRecord, p *Plan) error {
	conn, err := resolvedBus()
	if err != nil {
		return err
	}
	if conn == nil {
		return errors.New("netconf: systemd-resolved, which holds the tunnel's DNS, no longer runs")
	}
	defer conn.Close()
	return setLinkDNS(conn, r.IfIndex, p)
}
