package demo

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/netns"
)

// noUDPTable is the nftables table with which the demo plays a network
// that blocks UDP.
const noUDPTable = "ptun_demo_noudp"

// blockUDP makes ns drop every UDP datagram it sends to dst (an IPv4
// address), as a hotel network that passes only TCP would; unblockUDP
// removes the table again.
func blockUDP(ns *netns.NS, dst netip.Addr) error {
	return ns.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: noUDPTable})
		drop := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: blocking UDP to %v: %w", dst, err)
		}
		return nil
	})
}

func unblockUDP(ns *netns.NS) error {
	return ns.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: noUDPTable})
		return c.Flush()
	})
}
