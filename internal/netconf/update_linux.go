package netconf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
)

// Update moves a tunnel from plan old, applied as rec, to plan p, changing
// only what differs: routes added and removed one by one, the resolver
// file rewritten, the kill switch replaced in one nftables transaction (so
// that nothing leaks while it changes), addresses and MTU. Traffic on the
// routes both plans share is never interrupted. Each step is recorded as
// it goes; on failure Update stops and returns the error, and rec is
// still exactly what is applied (Undo removes it).
func Update(old, p *Plan, rec *Record, o Options) error {
	if err := p.Check(); err != nil {
		return err
	}
	if p.Interface != old.Interface || p.Interface != rec.Interface {
		return errors.New("netconf: Update cannot move a plan to another interface")
	}
	save := func() error {
		if o.Save != nil {
			return o.Save(rec)
		}
		return nil
	}
	link, err := netlink.LinkByName(p.Interface)
	if err != nil {
		return fmt.Errorf("netconf: interface %s: %w", p.Interface, err)
	}
	if p.MTU != 0 && p.MTU != link.Attrs().MTU {
		if rec.MTU == nil {
			rec.MTU = &MTURecord{Old: link.Attrs().MTU}
		}
		if err := netlink.LinkSetMTU(link, p.MTU); err != nil {
			return fmt.Errorf("netconf: MTU %d on %s: %w", p.MTU, p.Interface, err)
		}
	}
	// Addresses: the new ones first, then the old ones go.
	add := &Plan{Interface: p.Interface, Addresses: without(p.Addresses, old.Addresses)}
	if err := applyAddresses(add, link, rec); err != nil {
		return err
	}
	for _, a := range without(old.Addresses, p.Addresses) {
		if i := slices.Index(rec.Addresses, a); i >= 0 {
			if err := netlink.AddrDel(link, &netlink.Addr{IPNet: ipNet(a)}); err != nil && !gone(err) {
				return fmt.Errorf("netconf: removing address %v: %w", a, err)
			}
			rec.Addresses = slices.Delete(rec.Addresses, i, i+1)
		}
	}
	if err := save(); err != nil {
		return err
	}
	// Routes: the new ones, then the old ones go, then the full tunnel's
	// rules of a family that has none any more.
	added := &Plan{Interface: p.Interface, Routes: without(p.Routes, old.Routes), FwMark: p.FwMark, Table: p.Table}
	if err := applyRoutes(added, link.Attrs().Index, rec, save); err != nil {
		return err
	}
	if err := applyExcludes(p, without(p.Exclude, old.Exclude), rec, save); err != nil {
		return err
	}
	remove := func(routes []netip.Prefix, throw bool) error {
		for _, r := range routes {
			i := slices.IndexFunc(rec.Routes, func(rr RouteRecord) bool { return rr.Dst == r && rr.Throw == throw })
			if i < 0 {
				continue
			}
			if err := netlink.RouteDel(routeOf(rec.Routes[i], link.Attrs().Index)); err != nil && !gone(err) {
				return fmt.Errorf("netconf: removing route %v: %w", r, err)
			}
			rec.Routes = slices.Delete(rec.Routes, i, i+1)
			if err := save(); err != nil {
				return err
			}
		}
		return nil
	}
	if err := remove(without(old.Exclude, p.Exclude), true); err != nil {
		return err
	}
	if err := remove(without(old.Routes, p.Routes), false); err != nil {
		return err
	}
	full := map[int]bool{}
	for _, r := range p.Routes {
		if r.Bits() == 0 {
			full[family(r.Addr())] = true
		}
	}
	var keep []RuleRecord
	for _, rr := range rec.Rules {
		if full[rr.Family] {
			if !slices.Contains(keep, rr) {
				keep = append(keep, rr)
			}
			continue
		}
		if err := netlink.RuleDel(rule(rr)); err != nil && !gone(err) {
			return fmt.Errorf("netconf: removing rule %s: %w", rr, err)
		}
	}
	rec.Rules = keep
	if err := save(); err != nil {
		return err
	}
	// The resolver configuration.
	fullBefore, fullNow := slices.ContainsFunc(old.Routes, isDefault), slices.ContainsFunc(p.Routes, isDefault)
	if rec.Resolved != nil && (!slices.Equal(p.DNS, old.DNS) || !slices.Equal(p.Search, old.Search) || fullBefore != fullNow) {
		// The link's settings are replaced whole, in place.
		if err := updateResolved(rec.Resolved, p); err != nil {
			return err
		}
	} else if !slices.Equal(p.DNS, old.DNS) || !slices.Equal(p.Search, old.Search) {
		switch {
		case rec.Resolv == nil:
			if err := applyDNS(p, link.Attrs().Index, rec, o); err != nil {
				return err
			}
		case len(p.DNS) == 0 && len(p.Search) == 0:
			if err := restoreResolv(rec.Resolv); err != nil {
				return err
			}
			rec.Resolv = nil
		default:
			written := resolvContent(p)
			if err := writeAtomic(rec.Resolv.Path, written); err != nil {
				return err
			}
			rec.Resolv.Written = written
		}
		if err := save(); err != nil {
			return err
		}
	}
	// The kill switch.
	switch {
	case p.KillSwitch != nil && (old.KillSwitch == nil || !slices.Equal(p.KillSwitch.Endpoints, old.KillSwitch.Endpoints)):
		if err := applyKillSwitch(p, rec); err != nil {
			return err
		}
	case p.KillSwitch == nil && rec.NftTable != "":
		if err := removeKillSwitch(rec.NftTable); err != nil {
			return err
		}
		rec.NftTable = ""
	}
	return save()
}

func isDefault(r netip.Prefix) bool { return r.Bits() == 0 }

// without is the prefixes of a that b does not hold.
func without(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
