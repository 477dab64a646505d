package registry

import (
	"crypto/rand"
	"fmt"
	"io"
	"math/big"
	"net/netip"
)

// usableRange returns the first and last address of p that a device may
// get, and how many there are. Reserved: the network address, the first
// address after it (the gateway's own) and, for IPv4, the broadcast address.
// p has passed checkPool, so the range is never empty.
func usableRange(p netip.Prefix) (first, last netip.Addr, n *big.Int) {
	first = p.Addr().Next().Next()
	last = lastAddr(p)
	if p.Addr().Is4() {
		last = last.Prev()
	}
	n = new(big.Int).Sub(addrInt(last), addrInt(first))
	n.Add(n, big.NewInt(1))
	return first, last, n
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		bitsHere := p.Bits() - 8*i
		switch {
		case bitsHere >= 8:
		case bitsHere <= 0:
			b[i] = 0xff
		default:
			b[i] |= 0xff >> bitsHere
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func addrInt(a netip.Addr) *big.Int { return new(big.Int).SetBytes(a.AsSlice()) }

func intAddr(v *big.Int, is4 bool) netip.Addr {
	n := 16
	if is4 {
		n = 4
	}
	b := make([]byte, n)
	v.FillBytes(b)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// pickAddr chooses a free address in p: a random start (so addresses are not
// guessable from the enrollment order), then the next free one upwards,
// wrapping at the end. used holds every address of p that is taken; the
// caller holds whatever lock keeps it current until its transaction ends.
func pickAddr(p netip.Prefix, used map[netip.Addr]bool, rnd io.Reader) (netip.Addr, error) {
	first, last, n := usableRange(p)
	if big.NewInt(int64(len(used))).Cmp(n) >= 0 {
		return netip.Addr{}, fmt.Errorf("%w: pool %s has no free address (%s usable, all taken): revoke unused devices or add a larger pool",
			ErrPoolExhausted, p, n)
	}
	off, err := rand.Int(rnd, n)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("registry: random address offset: %w", err)
	}
	a := intAddr(off.Add(off, addrInt(first)), p.Addr().Is4())
	// Fewer than n addresses are used, so this ends within len(used)+1 steps.
	for used[a] {
		if a == last {
			a = first
		} else {
			a = a.Next()
		}
	}
	return a, nil
}
