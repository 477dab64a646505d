// Package acl matches the packets a peer sends into the tunnel against the
// destinations it may reach: a gateway's access rules, enforced in its data
// path after decryption and the cryptokey-routing source check.
//
// A rule is a destination prefix with, optionally, a protocol (TCP, UDP or
// ICMP) and a destination port range. A compiled List answers Allow for one
// IP packet with no allocation, in time bounded by the number of distinct
// elementary intervals its rules make (a binary search among at most twice
// as many intervals as rules, then one among the port ranges of that
// interval): logarithmic in the number of rules.
package acl

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
)

// Protocols a rule may name.
const (
	ProtoAny  = 0
	ProtoICMP = 1 // ICMP for IPv4 destinations, ICMPv6 for IPv6 ones
	ProtoTCP  = 6
	ProtoUDP  = 17

	protoICMPv6 = 58
)

// Rule allows packets to Dst, of protocol Proto (ProtoAny: any), to a
// destination port in [PortLo, PortHi] (TCP and UDP; 0, 0: any port). The
// rules' text (`198.18.2.0/24 tcp/22`) is the registry's (registry.ParseRule);
// this package only matches.
type Rule struct {
	Dst    netip.Prefix `json:"dst"`
	Proto  uint8        `json:"proto,omitempty"`
	PortLo uint16       `json:"port_lo,omitempty"`
	PortHi uint16       `json:"port_hi,omitempty"`
}

// List is a compiled, immutable set of rules: a packet is allowed if any
// rule allows it. The zero List allows nothing.
//
// Each family's rules are flattened into elementary intervals of the
// address space (the pieces between any two rule boundaries), each with the
// union of what the rules covering it allow; a lookup is one binary search
// among them. Compiling n rules costs O(n²) at worst, once per change.
type List struct {
	v4, v6 []interval // sorted by start; the last ends at the family's end
	rules  []Rule     // as compiled, for Rules
}

// interval starts at start and reaches the next interval's start; e is
// what it allows (nil: nothing).
type interval struct {
	start key
	e     *entries
}

// key is an address as a 128-bit number (IPv4 in lo).
type key struct{ hi, lo uint64 }

func (a key) less(b key) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

func keyOf(a netip.Addr) key {
	if a.Is4() {
		b := a.As4()
		return key{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return key{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

// last returns the prefix's last address as a key, and whether the next
// key exists (false at the family's end).
func last(p netip.Prefix) (k key, next key, ok bool) {
	start := keyOf(p.Masked().Addr())
	host := p.Addr().BitLen() - p.Bits()
	k = start
	switch {
	case host >= 128:
		k = key{^uint64(0), ^uint64(0)}
	case host >= 64:
		k.lo = ^uint64(0)
		k.hi |= (uint64(1) << (host - 64)) - 1
		if host == 64 {
			k.hi = start.hi
		}
	case host > 0:
		k.lo |= (uint64(1) << host) - 1
	}
	if p.Addr().Is4() {
		if k.lo == 0xffffffff {
			return k, key{}, false
		}
		return k, key{lo: k.lo + 1}, true
	}
	if k.hi == ^uint64(0) && k.lo == ^uint64(0) {
		return k, key{}, false
	}
	next = k
	next.lo++
	if next.lo == 0 {
		next.hi++
	}
	return k, next, true
}

// entries are the protocols and ports one interval allows: any protocol,
// or per protocol the port ranges (all: every port).
type entries struct {
	anyProto bool
	icmp     bool
	tcp, udp ports
}

func (e *entries) add(r Rule) {
	switch r.Proto {
	case ProtoAny:
		e.anyProto = true
	case ProtoICMP:
		e.icmp = true
	case ProtoTCP:
		e.tcp.add(r.PortLo, r.PortHi)
	case ProtoUDP:
		e.udp.add(r.PortLo, r.PortHi)
	}
}

func (e *entries) equal(o *entries) bool {
	if e == nil || o == nil {
		return e == o
	}
	return e.anyProto == o.anyProto && e.icmp == o.icmp && e.tcp.equal(&o.tcp) && e.udp.equal(&o.udp)
}

type ports struct {
	all    bool
	ranges [][2]uint16 // sorted, disjoint, merged
}

func (p *ports) equal(o *ports) bool {
	return p.all == o.all && (p.all || slices.Equal(p.ranges, o.ranges))
}

func (p *ports) add(lo, hi uint16) {
	if lo == 0 && hi == 0 {
		p.all = true
		return
	}
	p.ranges = append(p.ranges, [2]uint16{lo, hi})
}

func (p *ports) compile() {
	slices.SortFunc(p.ranges, func(a, b [2]uint16) int { return int(a[0]) - int(b[0]) })
	out := p.ranges[:0]
	for _, r := range p.ranges {
		if n := len(out); n > 0 && int(r[0]) <= int(out[n-1][1])+1 {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	p.ranges = out
}

func (p *ports) has(port uint16, known bool) bool {
	if p.all {
		return true
	}
	if !known {
		return false
	}
	i, _ := slices.BinarySearchFunc(p.ranges, port, func(r [2]uint16, port uint16) int {
		if r[1] < port {
			return -1
		}
		if r[0] > port {
			return 1
		}
		return 0
	})
	return i < len(p.ranges) && p.ranges[i][0] <= port && port <= p.ranges[i][1]
}

// Compile builds the List of rules.
func Compile(rules []Rule) (*List, error) {
	l := &List{rules: slices.Clone(rules)}
	var v4, v6 []Rule
	for _, r := range rules {
		if !r.Dst.IsValid() {
			return nil, fmt.Errorf("acl: rule without a destination")
		}
		if r.PortHi < r.PortLo || (r.PortLo == 0) != (r.PortHi == 0) {
			return nil, fmt.Errorf("acl: rule %v: bad port range", r)
		}
		if r.PortLo != 0 && r.Proto != ProtoTCP && r.Proto != ProtoUDP {
			return nil, fmt.Errorf("acl: rule %v: ports need tcp or udp", r)
		}
		switch r.Proto {
		case ProtoAny, ProtoICMP, ProtoTCP, ProtoUDP:
		default:
			return nil, fmt.Errorf("acl: rule %v: protocol %d is not tcp, udp or icmp", r, r.Proto)
		}
		r.Dst = r.Dst.Masked()
		if r.Dst.Addr().Is4() {
			v4 = append(v4, r)
		} else {
			v6 = append(v6, r)
		}
	}
	l.v4, l.v6 = flatten(v4), flatten(v6)
	return l, nil
}

// flatten turns one family's rules into elementary intervals.
func flatten(rules []Rule) []interval {
	if len(rules) == 0 {
		return nil
	}
	type span struct{ start, end key }
	spans := make([]span, len(rules))
	points := []key{{}}
	for i, r := range rules {
		end, next, ok := last(r.Dst)
		spans[i] = span{keyOf(r.Dst.Addr()), end}
		points = append(points, spans[i].start)
		if ok {
			points = append(points, next)
		}
	}
	slices.SortFunc(points, func(a, b key) int {
		switch {
		case a.less(b):
			return -1
		case b.less(a):
			return 1
		}
		return 0
	})
	points = slices.Compact(points)
	var out []interval
	for _, pt := range points {
		var e *entries
		for i, r := range rules {
			if !pt.less(spans[i].start) && !spans[i].end.less(pt) {
				if e == nil {
					e = &entries{}
				}
				e.add(r)
			}
		}
		if e != nil {
			e.tcp.compile()
			e.udp.compile()
		}
		if n := len(out); n > 0 && out[n-1].e.equal(e) {
			continue // the same as the interval before: one interval
		}
		out = append(out, interval{start: pt, e: e})
	}
	return out
}

// Rules returns the rules l was compiled from (a copy).
func (l *List) Rules() []Rule { return slices.Clone(l.rules) }

// Allow reports whether some rule allows the IP packet pkt (as it leaves
// the tunnel towards its destination). A packet too short for its header is
// not allowed. It does not allocate.
func (l *List) Allow(pkt []byte) bool {
	if len(pkt) < 1 {
		return false
	}
	var (
		dst   netip.Addr
		proto uint8
		l4    []byte
		f     []interval
	)
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return false
		}
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || len(pkt) < ihl {
			return false
		}
		dst = netip.AddrFrom4([4]byte(pkt[16:20]))
		proto = pkt[9]
		// Only the first fragment carries the ports.
		if binary.BigEndian.Uint16(pkt[6:8])&0x1fff == 0 {
			l4 = pkt[ihl:]
		}
		f = l.v4
	case 6:
		if len(pkt) < 40 {
			return false
		}
		dst = netip.AddrFrom16([16]byte(pkt[24:40]))
		proto = pkt[6] // extension headers are not followed: ports then unknown
		l4 = pkt[40:]
		f = l.v6
	default:
		return false
	}
	if len(f) == 0 {
		return false
	}
	port, known := uint16(0), false
	if (proto == ProtoTCP || proto == ProtoUDP) && len(l4) >= 4 {
		port, known = binary.BigEndian.Uint16(l4[2:4]), true
	}
	k := keyOf(dst)
	// The last interval that starts at or before k.
	lo, hi := 0, len(f)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if k.less(f[m].start) {
			hi = m
		} else {
			lo = m + 1
		}
	}
	if lo == 0 {
		return false
	}
	e := f[lo-1].e
	switch {
	case e == nil:
		return false
	case e.anyProto:
		return true
	case proto == ProtoTCP:
		return e.tcp.has(port, known)
	case proto == ProtoUDP:
		return e.udp.has(port, known)
	case proto == ProtoICMP || proto == protoICMPv6:
		return e.icmp
	}
	return false
}
