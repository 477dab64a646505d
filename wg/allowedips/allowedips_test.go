package allowedips

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
)

// model is the obviously-correct table the trie is checked against.
type model map[netip.Prefix]int

func (m model) lookup(a netip.Addr) (int, bool) {
	a = a.Unmap()
	best, bestBits := 0, -1
	for p, v := range m {
		if p.Contains(a) && p.Bits() > bestBits {
			best, bestBits = v, p.Bits()
		}
	}
	return best, bestBits >= 0
}

func (m model) prefixes(v int) []netip.Prefix {
	var out []netip.Prefix
	for p, o := range m {
		if o == v {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePrefixes)
	return out
}

// checkInvariants verifies the trie's shape: keys masked, children extend
// their parent on the right side, valueless nodes join exactly two subtrees,
// and the size matches.
func checkInvariants(t *testing.T, tb *Table[int]) {
	t.Helper()
	count := 0
	var walk func(n *node[int], parentBits int, width int)
	walk = func(n *node[int], parentBits int, width int) {
		if n == nil {
			return
		}
		if int(n.bits) <= parentBits && parentBits >= 0 || int(n.bits) > width {
			t.Fatalf("node %v/%d under parent of %d bits (width %d)", n.key, n.bits, parentBits, width)
		}
		if n.key.mask(int(n.bits)) != n.key {
			t.Fatalf("node key %v not masked to %d", n.key, n.bits)
		}
		if n.has {
			count++
		} else if n.child[0] == nil || n.child[1] == nil {
			t.Fatalf("valueless node %v/%d has fewer than two children", n.key, n.bits)
		}
		for i, c := range n.child {
			if c == nil {
				continue
			}
			if !n.covers(c.key) || c.key.bit(int(n.bits)) != i {
				t.Fatalf("child %v/%d misplaced under %v/%d", c.key, c.bits, n.key, n.bits)
			}
			if c.parent != n || c.is6 != n.is6 {
				t.Fatalf("child %v/%d has the wrong parent or family", c.key, c.bits)
			}
			walk(c, int(n.bits), width)
		}
	}
	walk(tb.v4, -1, 32)
	walk(tb.v6, -1, 128)
	if count != tb.Len() {
		t.Fatalf("Len() = %d, trie holds %d", tb.Len(), count)
	}
	if tb.v4 != nil && (tb.v4.parent != nil || tb.v4.is6) || tb.v6 != nil && (tb.v6.parent != nil || !tb.v6.is6) {
		t.Fatal("a root has a parent or the wrong family")
	}
	// Every value's list holds exactly the nodes it owns, linked both ways.
	listed := 0
	for v, n := range tb.owned {
		if n == nil || n.prev != nil {
			t.Fatalf("value %d's list starts wrongly", v)
		}
		for ; n != nil; n = n.next {
			if !n.has || n.val != v || n.next != nil && n.next.prev != n {
				t.Fatalf("value %d's list holds node %v/%d (has %v, val %d) or is mislinked", v, n.key, n.bits, n.has, n.val)
			}
			listed++
		}
	}
	if listed != count {
		t.Fatalf("value lists hold %d nodes, trie has %d values", listed, count)
	}
}

// randomPrefix draws prefixes from a small space so that they overlap a lot.
func randomPrefix(r *rand.Rand) netip.Prefix {
	if r.IntN(2) == 0 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], 0x64400000|uint32(r.IntN(64))<<10|uint32(r.IntN(4)))
		if r.IntN(8) == 0 {
			b[0] = byte(r.IntN(256))
		}
		return netip.PrefixFrom(netip.AddrFrom4(b), r.IntN(33)).Masked()
	}
	b := [16]byte{0x20, 0x01, 0x0d, 0xb8}
	b[4] = byte(r.IntN(4))
	b[9] = byte(r.IntN(4))
	b[15] = byte(r.IntN(4))
	if r.IntN(8) == 0 {
		b[0] = byte(r.IntN(256))
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), r.IntN(129)).Masked()
}

func randomAddr(r *rand.Rand) netip.Addr {
	p := randomPrefix(r)
	b := p.Addr().AsSlice()
	// Flip a few random low bits so the address falls inside or near p.
	for range r.IntN(3) {
		i := r.IntN(len(b))
		b[i] ^= 1 << r.IntN(8)
	}
	a, _ := netip.AddrFromSlice(b)
	if a.Is4() && r.IntN(10) == 0 {
		a = netip.AddrFrom16(a.As16()) // mapped form must behave as IPv4
	}
	return a
}

func TestAgainstModel(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 42))
		var tb Table[int]
		m := model{}
		for step := range 3000 {
			switch op := r.IntN(10); {
			case op < 5:
				p, v := randomPrefix(r), 1+r.IntN(4)
				tb.Insert(p, v)
				m[p] = v
			case op < 8:
				p, v := randomPrefix(r), 1+r.IntN(4)
				if r.IntN(2) == 0 && len(m) > 0 { // pick an existing one half the time
					for q, o := range m {
						p, v = q, o
						break
					}
					if r.IntN(3) == 0 {
						v = 5 // wrong owner: must not remove
					}
				}
				owner, ok := m[p]
				want := ok && owner == v
				if got := tb.Remove(p, v); got != want {
					t.Fatalf("seed %d step %d: Remove(%v, %d) = %v, want %v", seed, step, p, v, got, want)
				}
				if want {
					delete(m, p)
				}
			case op < 9 && step%50 == 0:
				v := 1 + r.IntN(4)
				tb.RemoveValue(v)
				for p, o := range m {
					if o == v {
						delete(m, p)
					}
				}
			default:
				for range 20 {
					a := randomAddr(r)
					gv, gok := tb.Lookup(a)
					wv, wok := m.lookup(a)
					if gv != wv || gok != wok {
						t.Fatalf("seed %d step %d: Lookup(%v) = %d,%v want %d,%v", seed, step, a, gv, gok, wv, wok)
					}
				}
			}
			if step%100 == 0 {
				checkInvariants(t, &tb)
			}
		}
		checkInvariants(t, &tb)
		if tb.Len() != len(m) {
			t.Fatalf("seed %d: Len() = %d, want %d", seed, tb.Len(), len(m))
		}
		for v := 1; v <= 4; v++ {
			if got, want := tb.Prefixes(v), m.prefixes(v); !slices.Equal(got, want) {
				t.Fatalf("seed %d: Prefixes(%d) = %v, want %v", seed, v, got, want)
			}
		}
	}
}

func TestEdges(t *testing.T) {
	var tb Table[string]
	if _, ok := tb.Lookup(netip.MustParseAddr("198.18.0.1")); ok {
		t.Fatal("empty table matched")
	}
	if _, ok := tb.Lookup(netip.Addr{}); ok {
		t.Fatal("invalid address matched")
	}
	tb.Insert(netip.MustParsePrefix("0.0.0.0/0"), "default4")
	tb.Insert(netip.MustParsePrefix("::/0"), "default6")
	tb.Insert(netip.MustParsePrefix("100.64.0.1/32"), "host4")
	tb.Insert(netip.MustParsePrefix("255.255.255.255/32"), "bcast")
	tb.Insert(netip.MustParsePrefix("2001:db8::1/128"), "host6")
	tb.Insert(netip.MustParsePrefix("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), "ones")
	tb.Insert(netip.MustParsePrefix("100.64.0.77/10"), "pool") // masked to 100.64.0.0/10
	tb.Insert(netip.Prefix{}, "invalid")                       // ignored

	cases := []struct {
		addr string
		want string
	}{
		{"0.0.0.0", "default4"},
		{"198.18.0.1", "default4"},
		{"100.64.0.1", "host4"},
		{"100.64.0.2", "pool"},
		{"100.127.255.255", "pool"},
		{"100.128.0.0", "default4"},
		{"255.255.255.255", "bcast"},
		{"255.255.255.254", "default4"},
		{"::ffff:100.64.0.1", "host4"}, // mapped is IPv4
		{"::", "default6"},
		{"2001:db8::1", "host6"},
		{"2001:db8::2", "default6"},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ones"},
		{"fe80::1%eth0", "default6"},
	}
	for _, c := range cases {
		got, ok := tb.Lookup(netip.MustParseAddr(c.addr))
		if !ok || got != c.want {
			t.Errorf("Lookup(%s) = %q,%v want %q", c.addr, got, ok, c.want)
		}
	}
	if got := tb.Prefixes("pool"); !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}) {
		t.Errorf("Prefixes(pool) = %v", got)
	}
	if tb.Len() != 7 {
		t.Errorf("Len() = %d, want 7", tb.Len())
	}
	if !tb.Remove(netip.MustParsePrefix("0.0.0.0/0"), "default4") {
		t.Fatal("Remove /0 failed")
	}
	if _, ok := tb.Lookup(netip.MustParseAddr("198.18.0.1")); ok {
		t.Error("matched after removing the IPv4 default")
	}
	if got, _ := tb.Lookup(netip.MustParseAddr("2001:db8::3")); got != "default6" {
		t.Errorf("IPv6 default lost: %q", got)
	}
	if tb.Remove(netip.MustParsePrefix("::/0"), "other") {
		t.Error("Remove by a non-owner succeeded")
	}
	if tb.Remove(netip.Prefix{}, "invalid") {
		t.Error("Remove of an invalid prefix succeeded")
	}
}

func TestReplaceAndRemoveValue(t *testing.T) {
	var tb Table[int]
	p := netip.MustParsePrefix("100.64.1.0/24")
	tb.Insert(p, 1)
	tb.Insert(netip.MustParsePrefix("100.64.1.0/25"), 1)
	tb.Insert(netip.MustParsePrefix("2001:db8::/64"), 1)
	tb.Insert(netip.MustParsePrefix("2001:db8::/48"), 2)
	tb.Insert(p, 2) // replace: 2 now owns the /24
	if tb.Len() != 4 {
		t.Fatalf("Len() = %d after replace, want 4", tb.Len())
	}
	if got := tb.Prefixes(1); !slices.Equal(got, []netip.Prefix{
		netip.MustParsePrefix("100.64.1.0/25"), netip.MustParsePrefix("2001:db8::/64"),
	}) {
		t.Fatalf("Prefixes(1) = %v", got)
	}
	if tb.Remove(p, 1) {
		t.Fatal("old owner removed a replaced prefix")
	}
	if v, _ := tb.Lookup(netip.MustParseAddr("100.64.1.200")); v != 2 {
		t.Fatalf("Lookup after replace = %d, want 2", v)
	}
	tb.RemoveValue(1)
	checkInvariants(t, &tb)
	if got := tb.Prefixes(1); len(got) != 0 {
		t.Fatalf("Prefixes(1) after RemoveValue = %v", got)
	}
	if v, _ := tb.Lookup(netip.MustParseAddr("100.64.1.1")); v != 2 {
		t.Fatalf("Lookup after RemoveValue = %d, want 2", v)
	}
	if v, _ := tb.Lookup(netip.MustParseAddr("2001:db8::1")); v != 2 {
		t.Fatalf("IPv6 lookup after RemoveValue = %d, want 2", v)
	}
	tb.RemoveValue(2)
	if tb.Len() != 0 || tb.v4 != nil || tb.v6 != nil {
		t.Fatalf("table not empty after removing everything: len %d", tb.Len())
	}
}

func TestMappedPrefixStaysIPv6(t *testing.T) {
	var tb Table[int]
	tb.Insert(netip.MustParsePrefix("::ffff:100.64.0.1/128"), 1)
	if _, ok := tb.Lookup(netip.MustParseAddr("100.64.0.1")); ok {
		t.Error("IPv4 address matched an IPv6 (mapped) prefix")
	}
	pkt := make([]byte, 40)
	pkt[0] = 6 << 4
	copy(pkt[24:40], netip.MustParseAddr("::ffff:100.64.0.1").AsSlice())
	if v, ok := tb.LookupPacketDst(pkt); !ok || v != 1 {
		t.Errorf("IPv6 packet to the mapped address: %d,%v", v, ok)
	}
}

func ipv4Packet(src, dst string) []byte {
	pkt := make([]byte, 20)
	pkt[0] = 0x45
	copy(pkt[12:16], netip.MustParseAddr(src).AsSlice())
	copy(pkt[16:20], netip.MustParseAddr(dst).AsSlice())
	return pkt
}

func ipv6Packet(src, dst string) []byte {
	pkt := make([]byte, 40)
	pkt[0] = 0x60
	copy(pkt[8:24], netip.MustParseAddr(src).AsSlice())
	copy(pkt[24:40], netip.MustParseAddr(dst).AsSlice())
	return pkt
}

func TestLookupPacket(t *testing.T) {
	var tb Table[int]
	tb.Insert(netip.MustParsePrefix("100.64.0.2/32"), 1)
	tb.Insert(netip.MustParsePrefix("100.64.0.3/32"), 2)
	tb.Insert(netip.MustParsePrefix("2001:db8::2/128"), 3)
	tb.Insert(netip.MustParsePrefix("2001:db8::3/128"), 4)

	v4 := ipv4Packet("100.64.0.2", "100.64.0.3")
	v6 := ipv6Packet("2001:db8::2", "2001:db8::3")
	check := func(name string, v int, ok bool, want int, wantOK bool) {
		t.Helper()
		if v != want || ok != wantOK {
			t.Errorf("%s = %d,%v want %d,%v", name, v, ok, want, wantOK)
		}
	}
	v, ok := tb.LookupPacketSrc(v4)
	check("v4 src", v, ok, 1, true)
	v, ok = tb.LookupPacketDst(v4)
	check("v4 dst", v, ok, 2, true)
	v, ok = tb.LookupPacketSrc(v6)
	check("v6 src", v, ok, 3, true)
	v, ok = tb.LookupPacketDst(v6)
	check("v6 dst", v, ok, 4, true)

	for _, bad := range [][]byte{nil, {}, v4[:19], v6[:39], {0x50, 0, 0, 0}, append([]byte{0x00}, v4[1:]...)} {
		if _, ok := tb.LookupPacketDst(bad); ok {
			t.Errorf("LookupPacketDst(% x) matched", bad)
		}
		if _, ok := tb.LookupPacketSrc(bad); ok {
			t.Errorf("LookupPacketSrc(% x) matched", bad)
		}
	}
	// A 40-byte buffer whose version nibble says 4 is read as IPv4.
	long4 := append(ipv4Packet("100.64.0.2", "100.64.0.3"), make([]byte, 20)...)
	v, ok = tb.LookupPacketDst(long4)
	check("v4 dst, long", v, ok, 2, true)
}

func TestConcurrentLookupAndUpdate(t *testing.T) {
	var tb Table[int]
	for i := range 256 {
		tb.Insert(netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i), 0}), 24), i%7)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pkt := ipv4Packet("100.64.0.1", "100.64.0.1")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				pkt[18] = byte(i + g)
				tb.LookupPacketDst(pkt)
				tb.Lookup(netip.AddrFrom4([4]byte{100, 64, byte(i), 9}))
			}
		}()
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(r.IntN(256)), byte(r.IntN(256))}), 16+r.IntN(17)).Masked()
		tb.Insert(p, r.IntN(7))
		tb.Remove(p, r.IntN(7))
		if r.IntN(100) == 0 {
			tb.RemoveValue(r.IntN(7))
		}
	}
	close(stop)
	wg.Wait()
	checkInvariants(t, &tb)
}

func thousandPrefixes() (*Table[int], []netip.Addr) {
	r := rand.New(rand.NewPCG(7, 7))
	tb := new(Table[int])
	var addrs []netip.Addr
	for i := range 1000 {
		if i%2 == 0 {
			a := netip.AddrFrom4([4]byte{100, byte(64 + r.IntN(64)), byte(r.IntN(256)), byte(r.IntN(256))})
			tb.Insert(netip.PrefixFrom(a, 16+r.IntN(17)), i)
			addrs = append(addrs, a)
		} else {
			b := [16]byte{0x20, 0x01, 0x0d, 0xb8}
			for j := 4; j < 16; j++ {
				b[j] = byte(r.IntN(256))
			}
			a := netip.AddrFrom16(b)
			tb.Insert(netip.PrefixFrom(a, 32+r.IntN(97)), i)
			addrs = append(addrs, a)
		}
	}
	return tb, addrs
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tb, addrs := thousandPrefixes()
	pkt4 := ipv4Packet("100.64.0.1", "100.65.1.1")
	pkt6 := ipv6Packet("2001:db8::1", "2001:db8::2")
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		tb.Lookup(addrs[i%len(addrs)])
		tb.LookupPacketDst(pkt4)
		tb.LookupPacketSrc(pkt6)
		i++
	})
	if allocs != 0 {
		t.Fatalf("lookups allocate %v times per run", allocs)
	}
}

func BenchmarkLookup(b *testing.B) {
	tb, addrs := thousandPrefixes()
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		tb.Lookup(addrs[i%len(addrs)])
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}

func BenchmarkLookupPacketDst(b *testing.B) {
	tb, addrs := thousandPrefixes()
	pkts := make([][]byte, len(addrs))
	for i, a := range addrs {
		if a.Is4() {
			pkts[i] = ipv4Packet("100.64.0.1", a.String())
		} else {
			pkts[i] = ipv6Packet("2001:db8::1", a.String())
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		tb.LookupPacketDst(pkts[i%len(pkts)])
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkLookupParallel(b *testing.B) {
	tb, addrs := thousandPrefixes()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			tb.Lookup(addrs[i%len(addrs)])
			i++
		}
	})
}

// FuzzLookupPacket feeds arbitrary bytes as packets: no panic, and any match
// must be what Lookup gives for the address at the documented offset.
func FuzzLookupPacket(f *testing.F) {
	f.Add(ipv4Packet("100.64.0.2", "100.64.0.3"))
	f.Add(ipv6Packet("2001:db8::2", "2001:db8::3"))
	f.Add([]byte{0x45, 0, 0})
	f.Add([]byte{0x60})
	f.Add([]byte{})
	var tb Table[int]
	tb.Insert(netip.MustParsePrefix("100.64.0.0/10"), 1)
	tb.Insert(netip.MustParsePrefix("100.64.0.2/32"), 2)
	tb.Insert(netip.MustParsePrefix("0.0.0.0/1"), 3)
	tb.Insert(netip.MustParsePrefix("2001:db8::/32"), 4)
	tb.Insert(netip.MustParsePrefix("2001:db8::3/128"), 5)
	tb.Insert(netip.MustParsePrefix("8000::/1"), 6)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		for _, dir := range []struct {
			name       string
			fn         func([]byte) (int, bool)
			off4, off6 int
		}{
			{"dst", tb.LookupPacketDst, 16, 24},
			{"src", tb.LookupPacketSrc, 12, 8},
		} {
			v, ok := dir.fn(pkt)
			var want int
			var wantOK bool
			switch {
			case len(pkt) >= 20 && pkt[0]>>4 == 4:
				want, wantOK = tb.Lookup(netip.AddrFrom4([4]byte(pkt[dir.off4 : dir.off4+4])))
			case len(pkt) >= 40 && pkt[0]>>4 == 6:
				a := netip.AddrFrom16([16]byte(pkt[dir.off6 : dir.off6+16]))
				if a.Is4In6() {
					// Packet lookups keep the packet's family; Lookup would unmap.
					want, wantOK = 0, false
				} else {
					want, wantOK = tb.Lookup(a)
				}
			}
			if v != want || ok != wantOK {
				t.Fatalf("%s: got %d,%v want %d,%v for % x", dir.name, v, ok, want, wantOK, pkt)
			}
		}
	})
}

// tenThousandPeers is a gateway's table: 10,000 peers (values 1..10000),
// each owning a /32 and a /128 of the tunnel pools and a /24 of its own.
func tenThousandPeers() *Table[int] {
	var tb Table[int]
	for v := 1; v <= 10000; v++ {
		var a4 [4]byte
		binary.BigEndian.PutUint32(a4[:], 0x64400000|uint32(v)) // 100.64.0.0/10
		tb.Insert(netip.PrefixFrom(netip.AddrFrom4(a4), 32), v)
		binary.BigEndian.PutUint32(a4[:], 0xc6000000|uint32(v)<<8) // 198.x.y.0/24
		tb.Insert(netip.PrefixFrom(netip.AddrFrom4(a4), 24), v)
		a16 := [16]byte{0x20, 0x01, 0x0d, 0xb8}
		binary.BigEndian.PutUint32(a16[12:], uint32(v))
		tb.Insert(netip.PrefixFrom(netip.AddrFrom16(a16), 128), v)
	}
	return &tb
}

// BenchmarkRemovePeer10k removes one peer's prefixes from a table of
// 10,000 peers and puts them back: the cost of removing a peer on a
// gateway, which must not grow with the number of other peers.
func BenchmarkRemovePeer10k(b *testing.B) {
	tb := tenThousandPeers()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		v := 1 + i%10000
		i++
		ps := tb.Prefixes(v)
		tb.RemoveValue(v)
		for _, p := range ps {
			tb.Insert(p, v)
		}
	}
}

// BenchmarkPrefixes10k lists one peer's prefixes in a table of 10,000
// peers, as a wg show of one peer does (for every peer, wg show does it
// 10,000 times).
func BenchmarkPrefixes10k(b *testing.B) {
	tb := tenThousandPeers()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if len(tb.Prefixes(1+i%10000)) != 3 {
			b.Fatal("wrong prefix count")
		}
		i++
	}
}
