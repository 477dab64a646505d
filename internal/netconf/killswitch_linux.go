package netconf

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The kill switch: an inet table of its own with one output chain whose
// policy is drop. What passes: loopback, the tunnel interface, the
// endpoints (UDP and TCP to their address and port), and IPv6 neighbour
// and router discovery (without which no IPv6 packet, the tunnel's
// included, finds the next hop). Everything else the host sends is
// dropped: its applications get EPERM instead of leaking around the
// tunnel while it is down or reconnecting.

// KillSwitchTable is the name of the kill switch's table for interface
// ifname.
func KillSwitchTable(ifname string) string { return "ptun_killswitch_" + ifname }

func applyKillSwitch(p *Plan, rec *Record) error {
	if p.KillSwitch == nil {
		return nil
	}
	name := KillSwitchTable(p.Interface)
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netconf: nftables: %w", err)
	}
	// A table left by a client that died, or the one an update replaces,
	// goes in the same transaction as the new one comes: there is no
	// moment without a kill switch.
	old, err := findTable(c, name)
	if err != nil {
		return err
	}
	if old != nil {
		c.DelTable(old)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	drop := nftables.ChainPolicyDrop
	ch := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	add := func(exprs ...expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(exprs, accept)})
	}
	add(oifname("lo")...)
	add(oifname(p.Interface)...)
	for _, ep := range p.KillSwitch.Endpoints {
		a := ep.Addr().Unmap()
		nfproto, off, size := byte(unix.NFPROTO_IPV4), uint32(16), uint32(4)
		if a.Is6() {
			nfproto, off, size = unix.NFPROTO_IPV6, 24, 16
		}
		port := binary.BigEndian.AppendUint16(nil, ep.Port())
		for _, l4 := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			add(
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
			)
		}
	}
	// ICMPv6 router solicitation/advertisement, neighbour solicitation/
	// advertisement (types 133-136).
	add(
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{133}, ToData: []byte{136}},
	)
	// Recorded first: if the flush half-succeeded, Undo still looks.
	rec.NftTable = name
	if err := c.Flush(); err != nil {
		if old == nil {
			rec.NftTable = "" // the transaction failed whole: nothing there
		}
		return fmt.Errorf("netconf: installing the kill switch: %w", err)
	}
	return nil
}

// oifname matches the output interface's name.
func oifname(name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// removeKillSwitch deletes the table name; one that is gone already is
// fine.
func removeKillSwitch(name string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netconf: nftables: %w", err)
	}
	t, err := findTable(c, name)
	if err != nil {
		return err
	}
	if t == nil {
		return nil // gone
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netconf: removing the kill switch %s: %w", name, err)
	}
	return nil
}

// findTable returns the inet table called name, or nil if there is none.
func findTable(c *nftables.Conn, name string) (*nftables.Table, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("netconf: listing nftables tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == name {
			return t, nil
		}
	}
	return nil, nil
}
