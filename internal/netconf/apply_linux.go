package netconf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Rule priorities of a full tunnel, below the main table's (32766): first
// "table main suppress_prefixlength 0" (every route but a default one),
// then "not fwmark M table T" (the rest, unless it is the tunnel's own).
const (
	prioritySuppress = 32764
	priorityTunnel   = 32765
)

// Apply applies p, recording each change in rec as it goes. On failure it
// undoes what it did and returns the error; rec is then empty again.
func Apply(p *Plan, rec *Record, o Options) (err error) {
	if err := p.Check(); err != nil {
		return err
	}
	*rec = Record{Interface: p.Interface}
	save := func() error {
		if o.Save != nil {
			return o.Save(rec)
		}
		return nil
	}
	defer func() {
		if err != nil {
			if uerr := Undo(rec, o); uerr != nil {
				err = fmt.Errorf("%w (and undoing it: %v)", err, uerr)
			}
			*rec = Record{Interface: p.Interface}
			save()
		}
	}()
	link, err := netlink.LinkByName(p.Interface)
	if err != nil {
		return fmt.Errorf("netconf: interface %s: %w", p.Interface, err)
	}
	idx := link.Attrs().Index
	steps := []func() error{
		func() error { return applyMTU(p, link, rec) },
		func() error { return applyAddresses(p, link, rec) },
		func() error { return netlink.LinkSetUp(link) },
		func() error { return applyRoutes(p, idx, rec, save) },
		func() error { return applyExcludes(p, p.Exclude, rec, save) },
		func() error { return applyDNS(p, idx, rec, o) },
		func() error { return applyKillSwitch(p, rec) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
		if err := save(); err != nil {
			return fmt.Errorf("netconf: saving the record: %w", err)
		}
	}
	return nil
}

// applyDNS gives the plan's DNS to systemd-resolved if it runs (and no
// resolver file was named), else writes the resolver file.
func applyDNS(p *Plan, ifindex int, rec *Record, o Options) error {
	if o.ResolvConf == "" {
		if done, err := applyResolved(p, ifindex, rec); done || err != nil {
			return err
		}
	}
	return applyResolv(p, rec, o.resolvConf())
}

func applyMTU(p *Plan, link netlink.Link, rec *Record) error {
	if p.MTU == 0 || link.Attrs().MTU == p.MTU {
		return nil
	}
	old := link.Attrs().MTU
	if err := netlink.LinkSetMTU(link, p.MTU); err != nil {
		return fmt.Errorf("netconf: MTU %d on %s: %w", p.MTU, p.Interface, err)
	}
	rec.MTU = &MTURecord{Old: old}
	return nil
}

func applyAddresses(p *Plan, link netlink.Link, rec *Record) error {
	for _, a := range p.Addresses {
		addr := &netlink.Addr{IPNet: ipNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD // the pool's address is ours alone
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			if errors.Is(err, unix.EEXIST) {
				continue // there already (not ours to remove)
			}
			return fmt.Errorf("netconf: address %v on %s: %w", a, p.Interface, err)
		}
		rec.Addresses = append(rec.Addresses, a)
	}
	return nil
}

func applyRoutes(p *Plan, idx int, rec *Record, save func() error) error {
	full := map[int]bool{}
	for _, r := range p.Routes {
		route := &netlink.Route{LinkIndex: idx, Dst: ipNet(r), Scope: netlink.SCOPE_LINK}
		table := 0
		if r.Bits() == 0 {
			table = p.table()
			route.Table = table
			full[family(r.Addr())] = true
		}
		if err := netlink.RouteAdd(route); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("netconf: a route to %v exists already; remove it or leave %v out of the tunnel's routes", r, r)
			}
			return fmt.Errorf("netconf: route %v via %s: %w", r, p.Interface, err)
		}
		rec.Routes = append(rec.Routes, RouteRecord{Dst: r, Table: table})
		if err := save(); err != nil {
			return err
		}
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		if !full[fam] {
			continue
		}
		for _, rr := range []RuleRecord{
			{Family: fam, Priority: prioritySuppress, Table: unix.RT_TABLE_MAIN, Suppress: true},
			{Family: fam, Priority: priorityTunnel, Table: p.table(), Mark: p.FwMark, Invert: true},
		} {
			if err := netlink.RuleAdd(rule(rr)); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("netconf: policy rule %s: %w", rr, err)
			}
			rec.Rules = append(rec.Rules, rr)
			if err := save(); err != nil {
				return err
			}
		}
		if fam == unix.AF_INET {
			// Replies to the tunnel's own marked datagrams must pass the
			// reverse-path filter, which otherwise looks them up without
			// the mark (as wg-quick does).
			if err := setSysctl("/proc/sys/net/ipv4/conf/all/src_valid_mark", "1", rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// applyExcludes adds the throw routes of excl (p's excluded routes, or
// those of them an update adds) to p's full tunnel table.
func applyExcludes(p *Plan, excl []netip.Prefix, rec *Record, save func() error) error {
	for _, x := range excl {
		if err := netlink.RouteAdd(throwRoute(x, p.table())); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("netconf: excluded route %v: %w", x, err)
		}
		rec.Routes = append(rec.Routes, RouteRecord{Dst: x, Table: p.table(), Throw: true})
		if err := save(); err != nil {
			return err
		}
	}
	return nil
}

func throwRoute(dst netip.Prefix, table int) *netlink.Route {
	return &netlink.Route{Dst: ipNet(dst), Table: table, Type: unix.RTN_THROW}
}

// routeOf is the route rr records, on interface link (if known).
func routeOf(rr RouteRecord, linkIndex int) *netlink.Route {
	if rr.Throw {
		return throwRoute(rr.Dst, rr.Table)
	}
	// The scope it was added with: a default route of another scope
	// does not match (ESRCH) and would stay until the link goes.
	return &netlink.Route{LinkIndex: linkIndex, Dst: ipNet(rr.Dst), Table: rr.Table, Scope: netlink.SCOPE_LINK}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func rule(rr RuleRecord) *netlink.Rule {
	r := netlink.NewRule()
	r.Family, r.Priority, r.Table = rr.Family, rr.Priority, rr.Table
	if rr.Suppress {
		r.SuppressPrefixlen = 0
	}
	if rr.Mark != 0 {
		m := rr.Mark
		r.Mark = m
		r.Invert = rr.Invert
	}
	return r
}

func (rr RuleRecord) String() string {
	s := fmt.Sprintf("priority %d", rr.Priority)
	if rr.Mark != 0 {
		if rr.Invert {
			s += " not"
		}
		s += fmt.Sprintf(" fwmark %#x", rr.Mark)
	}
	s += fmt.Sprintf(" table %d", rr.Table)
	if rr.Suppress {
		s += " suppress_prefixlength 0"
	}
	return s
}

func setSysctl(path, value string, rec *Record) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("netconf: %w", err)
	}
	o := strings.TrimSpace(string(old))
	if o == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("netconf: %w", err)
	}
	rec.Sysctls = append(rec.Sysctls, SysctlRecord{Path: path, Old: o, New: value})
	return nil
}

// Undo removes what rec says was applied, newest first, and empties rec
// as it goes. It goes on past a part that is already gone (the interface
// may have been deleted with its addresses and routes) or that someone
// else changed (then it leaves it, and says so with ErrNotApplied).
func Undo(rec *Record, o Options) error {
	var errs []error
	if rec.NftTable != "" {
		if err := removeKillSwitch(rec.NftTable); err != nil {
			errs = append(errs, err)
		} else {
			rec.NftTable = ""
		}
	}
	if rec.Resolv != nil {
		if err := restoreResolv(rec.Resolv); err != nil {
			errs = append(errs, err)
		}
		rec.Resolv = nil
	}
	if rec.Resolved != nil {
		if err := revertResolved(rec.Resolved); err != nil {
			errs = append(errs, err)
		}
		rec.Resolved = nil
	}
	for i := len(rec.Sysctls) - 1; i >= 0; i-- {
		s := rec.Sysctls[i]
		cur, err := os.ReadFile(s.Path)
		if err == nil && strings.TrimSpace(string(cur)) == s.New {
			err = os.WriteFile(s.Path, []byte(s.Old), 0o644)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("netconf: restoring %s: %w", s.Path, err))
		}
	}
	rec.Sysctls = nil
	for i := len(rec.Rules) - 1; i >= 0; i-- {
		if err := netlink.RuleDel(rule(rec.Rules[i])); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("netconf: removing rule %s: %w", rec.Rules[i], err))
		}
	}
	rec.Rules = nil
	link, lerr := netlink.LinkByName(rec.Interface)
	for i := len(rec.Routes) - 1; i >= 0; i-- {
		r := rec.Routes[i]
		idx := 0
		if lerr == nil {
			idx = link.Attrs().Index
		}
		if err := netlink.RouteDel(routeOf(r, idx)); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("netconf: removing route %v: %w", r.Dst, err))
		}
	}
	rec.Routes = nil
	if lerr == nil {
		for i := len(rec.Addresses) - 1; i >= 0; i-- {
			a := rec.Addresses[i]
			if err := netlink.AddrDel(link, &netlink.Addr{IPNet: ipNet(a)}); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("netconf: removing address %v: %w", a, err))
			}
		}
		if rec.MTU != nil {
			if err := netlink.LinkSetMTU(link, rec.MTU.Old); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("netconf: restoring the MTU: %w", err))
			}
		}
	}
	rec.Addresses, rec.MTU = nil, nil
	if o.Save != nil {
		if err := o.Save(rec); err != nil {
			errs = append(errs, fmt.Errorf("netconf: saving the record: %w", err))
		}
	}
	return errors.Join(errs...)
}

// gone reports whether a netlink error means the object is not there.
func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) ||
		errors.Is(err, unix.EADDRNOTAVAIL)
}

// Empty reports whether rec records nothing left to undo.
func (rec *Record) Empty() bool {
	return rec.MTU == nil && len(rec.Addresses) == 0 && len(rec.Routes) == 0 && len(rec.Rules) == 0 &&
		len(rec.Sysctls) == 0 && rec.Resolv == nil && rec.Resolved == nil && rec.NftTable == ""
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
