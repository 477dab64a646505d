package acl

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func rule(dst string, proto uint8, lo, hi uint16) Rule {
	return Rule{Dst: netip.MustParsePrefix(dst), Proto: proto, PortLo: lo, PortHi: hi}
}

// packet4 is an IPv4 packet to dst of protocol proto, with dport for TCP
// and UDP.
func packet4(dst string, proto uint8, dport uint16) []byte {
	p := make([]byte, 40)
	p[0] = 0x45
	p[9] = proto
	a := netip.MustParseAddr(dst).As4()
	copy(p[16:20], a[:])
	binary.BigEndian.PutUint16(p[22:24], dport)
	return p
}

func packet6(dst string, proto uint8, dport uint16) []byte {
	p := make([]byte, 60)
	p[0] = 0x60
	p[6] = proto
	a := netip.MustParseAddr(dst).As16()
	copy(p[24:40], a[:])
	binary.BigEndian.PutUint16(p[42:44], dport)
	return p
}

func TestAllow(t *testing.T) {
	rules := []Rule{
		rule("198.18.2.0/24", ProtoTCP, 22, 22), rule("198.18.2.53/32", ProtoUDP, 53, 53), rule("198.18.3.0/24", ProtoAny, 0, 0),
		rule("198.18.2.0/24", ProtoICMP, 0, 0), rule("198.18.2.0/24", ProtoTCP, 8000, 8010),
		rule("198.18.2.0/24", ProtoTCP, 8011, 8020), rule("2001:db8:2::/64", ProtoTCP, 443, 443),
	}
	l, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	frag := packet4("198.18.2.5", ProtoTCP, 22)
	binary.BigEndian.PutUint16(frag[6:8], 100) // a later fragment: no ports
	for _, c := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"ssh to the /24", packet4("198.18.2.5", ProtoTCP, 22), true},
		{"http to the /24", packet4("198.18.2.5", ProtoTCP, 80), false},
		{"udp 22 to the /24", packet4("198.18.2.5", ProtoUDP, 22), false},
		{"dns to the resolver", packet4("198.18.2.53", ProtoUDP, 53), true},
		{"dns to another host", packet4("198.18.2.54", ProtoUDP, 53), false},
		{"anything to the open /24", packet4("198.18.3.9", ProtoUDP, 9), true},
		{"ping the /24", packet4("198.18.2.5", ProtoICMP, 0), true},
		{"outside every rule", packet4("198.18.9.9", ProtoTCP, 22), false},
		{"merged range, low end", packet4("198.18.2.5", ProtoTCP, 8000), true},
		{"merged range, across the join", packet4("198.18.2.5", ProtoTCP, 8011), true},
		{"merged range, high end", packet4("198.18.2.5", ProtoTCP, 8020), true},
		{"past the range", packet4("198.18.2.5", ProtoTCP, 8021), false},
		{"a later fragment has no port", frag, false},
		{"https over IPv6", packet6("2001:db8:2::7", ProtoTCP, 443), true},
		{"ssh over IPv6", packet6("2001:db8:2::7", ProtoTCP, 22), false},
		{"too short", []byte{0x45, 0}, false},
		{"not IP", []byte{0x10, 0, 0, 0}, false},
	} {
		if got := l.Allow(c.pkt); got != c.want {
			t.Errorf("%s: Allow = %v, want %v", c.name, got, c.want)
		}
	}
	empty, _ := Compile(nil)
	if empty.Allow(packet4("198.18.2.5", ProtoTCP, 22)) {
		t.Error("an empty list allowed a packet")
	}
}

func TestCompileRefuses(t *testing.T) {
	for _, r := range []Rule{
		{},
		{Dst: netip.MustParsePrefix("198.18.2.0/24"), Proto: ProtoICMP, PortLo: 1, PortHi: 1},
		{Dst: netip.MustParsePrefix("198.18.2.0/24"), Proto: ProtoTCP, PortLo: 5, PortHi: 4},
		{Dst: netip.MustParsePrefix("198.18.2.0/24"), Proto: 99},
	} {
		if _, err := Compile([]Rule{r}); err == nil {
			t.Errorf("Compile(%+v) accepted", r)
		}
	}
}

// naive is the obvious matcher Allow must agree with.
func naive(rules []Rule, pkt []byte) bool {
	var (
		ihl       int
		dst       netip.Addr
		proto     uint8
		firstFrag = true
	)
	switch {
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		ihl, dst, proto = 40, netip.AddrFrom16([16]byte(pkt[24:40])), pkt[6]
	case len(pkt) >= 20 && pkt[0]>>4 == 4 && int(pkt[0]&0xf)*4 >= 20 && len(pkt) >= int(pkt[0]&0xf)*4:
		ihl = int(pkt[0]&0xf) * 4
		dst, proto = netip.AddrFrom4([4]byte(pkt[16:20])), pkt[9]
		firstFrag = binary.BigEndian.Uint16(pkt[6:8])&0x1fff == 0
	default:
		return false
	}
	for _, r := range rules {
		if !r.Dst.Contains(dst) {
			continue
		}
		switch {
		case r.Proto == ProtoAny:
			return true
		case r.Proto == ProtoICMP && (proto == ProtoICMP || proto == 58):
			return true
		case r.Proto == proto && (proto == ProtoTCP || proto == ProtoUDP):
			if r.PortLo == 0 {
				return true
			}
			if firstFrag && len(pkt) >= ihl+4 {
				port := binary.BigEndian.Uint16(pkt[ihl+2 : ihl+4])
				if r.PortLo <= port && port <= r.PortHi {
					return true
				}
			}
		}
	}
	return false
}

func randomRules(rng *rand.Rand, n int) []Rule {
	rules := make([]Rule, n)
	for i := range rules {
		a := [4]byte{198, 18, byte(rng.IntN(4)), byte(rng.IntN(256))}
		bits := 16 + rng.IntN(17)
		r := Rule{Dst: netip.PrefixFrom(netip.AddrFrom4(a), bits).Masked()}
		if rng.IntN(5) == 0 { // some IPv6: 2001:db8:X::/Y
			a6 := netip.MustParseAddr(fmt.Sprintf("2001:db8:%x::%x", rng.IntN(4), rng.IntN(65536))).As16()
			r.Dst = netip.PrefixFrom(netip.AddrFrom16(a6), 32+rng.IntN(97)).Masked()
		}
		switch rng.IntN(4) {
		case 1:
			r.Proto = ProtoICMP
		case 2, 3:
			r.Proto = []uint8{ProtoTCP, ProtoUDP}[rng.IntN(2)]
			if rng.IntN(3) > 0 {
				lo := uint16(1 + rng.IntN(2000))
				r.PortLo, r.PortHi = lo, lo+uint16(rng.IntN(50))
			}
		}
		rules[i] = r
	}
	return rules
}

// FuzzAllow: Allow never panics on any packet and agrees with the naive
// matcher on IPv4 packets, for random rule sets.
func FuzzAllow(f *testing.F) {
	f.Add(uint64(1), packet4("198.18.2.5", ProtoTCP, 22))
	f.Add(uint64(2), packet6("2001:db8::1", ProtoUDP, 53))
	f.Add(uint64(3), []byte{0x4f})
	f.Fuzz(func(t *testing.T, seed uint64, pkt []byte) {
		rules := randomRules(rand.New(rand.NewPCG(seed, seed)), 1+int(seed%50))
		l, err := Compile(rules)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := l.Allow(pkt), naive(rules, pkt); got != want {
			t.Fatalf("Allow = %v, naive = %v for %x with %v", got, want, pkt, rules)
		}
	})
}

// TestAllowAgreesWithNaive checks many random packets against random rule
// sets, 1,000 rules included.
func TestAllowAgreesWithNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{1, 10, 1000} {
		rules := randomRules(rng, n)
		l, err := Compile(rules)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20000 {
			proto, port := []uint8{ProtoTCP, ProtoUDP, ProtoICMP, 47}[rng.IntN(4)], uint16(rng.IntN(2100))
			pkt := packet4(fmt.Sprintf("198.18.%d.%d", rng.IntN(4), rng.IntN(256)), proto, port)
			if i%3 == 0 {
				if proto == ProtoICMP {
					proto = 58
				}
				pkt = packet6(fmt.Sprintf("2001:db8:%x::%x", rng.IntN(4), rng.IntN(65536)), proto, port)
			}
			if got, want := l.Allow(pkt), naive(rules, pkt); got != want {
				t.Fatalf("%d rules: Allow = %v, naive = %v for %x", n, got, want, pkt)
			}
		}
	}
}

// BenchmarkAllow measures one packet's check against 0, 10, 100 and 1,000
// rules: the cost the gateway's data path pays per packet.
func BenchmarkAllow(b *testing.B) {
	for _, n := range []int{0, 10, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 2))
			l, err := Compile(hostRules(n))
			if err != nil {
				b.Fatal(err)
			}
			pkts := make([][]byte, 256)
			for i := range pkts {
				pkts[i] = packet4(fmt.Sprintf("198.18.%d.%d", rng.IntN(4), rng.IntN(256)), ProtoTCP, uint16(1+rng.IntN(1000)))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				l.Allow(pkts[i%len(pkts)])
			}
		})
	}
}

// hostRules is n rules as a gateway would have them: single hosts and /24s
// across 198.18.0.0/15, each to one TCP port or port range, so that none
// merge.
func hostRules(n int) []Rule {
	rules := make([]Rule, n)
	for i := range rules {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i/65536%2), byte(i / 256 % 256), byte(i % 256)})
		bits := 32
		if i%10 == 0 {
			bits = 24
		}
		lo := uint16(1 + i%1000)
		rules[i] = Rule{Dst: netip.PrefixFrom(a, bits).Masked(), Proto: ProtoTCP, PortLo: lo, PortHi: lo + uint16(i%3)}
	}
	return rules
}

func TestAllowDoesNotAllocate(t *testing.T) {
	l, _ := Compile(randomRules(rand.New(rand.NewPCG(3, 3)), 1000))
	pkt := packet4("198.18.2.5", ProtoTCP, 22)
	if n := testing.AllocsPerRun(1000, func() { l.Allow(pkt) }); n != 0 {
		t.Fatalf("Allow allocates %v times per packet", n)
	}
}
