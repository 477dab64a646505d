// Package allowedips is WireGuard's cryptokey routing table: a longest-prefix
// match from IP prefixes to the peer that owns them, used both to pick the
// peer an outgoing packet is sent to (by destination) and to check that an
// incoming packet came from a peer allowed to use its source address.
package allowedips

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
	"sync"
)

// Table maps IPv4 and IPv6 prefixes to values of type T (typically a peer
// pointer), each prefix owned by at most one value.
//
// The zero value is an empty table ready for use. A Table is safe for
// concurrent use: writers take an exclusive lock, lookups take only the read
// lock and never allocate. A Table must not be copied after first use.
//
// Besides the trie, the table keeps for every value the list of the nodes
// it owns, so that removing or listing one value's prefixes costs time in
// the number of that value's prefixes, not in the size of the table (a
// gateway with 10,000 peers removes or lists one peer without walking the
// others').
type Table[T comparable] struct {
	mu    sync.RWMutex
	v4    *node[T]       // guarded by mu; keys in the high 32 bits of key.hi
	v6    *node[T]       // guarded by mu
	size  int            // guarded by mu; number of prefixes held
	owned map[T]*node[T] // guarded by mu; first node of each value's list (see node.prev, node.next)
}

// key is an address or a masked prefix as a 128-bit big-endian integer.
// IPv4 addresses sit in the top 32 bits of hi.
type key struct{ hi, lo uint64 }

// node is one vertex of a path-compressed binary trie. The node stands for
// the prefix key/bits; every node below it extends that prefix, child[0]
// with a 0 bit at position bits and child[1] with a 1 bit. A node without a
// value (has == false) only joins two subtrees and always has both
// children.
//
// The fields lookups read come first, to share a cache line.
type node[T comparable] struct {
	child      [2]*node[T]
	key        key   // masked to bits
	bits       uint8 // prefix length
	has        bool  // whether val is set
	is6        bool  // in the IPv6 trie
	val        T
	parent     *node[T] // nil at a root
	prev, next *node[T] // the other nodes owned by val, while has
}

func keyFrom4(b []byte) key {
	return key{hi: uint64(binary.BigEndian.Uint32(b)) << 32}
}

func keyFrom16(b []byte) key {
	return key{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:16])}
}

// keyOf returns a's key and its family's trie width; a must be valid and
// already unmapped if it is to be treated as IPv4.
func keyOf(a netip.Addr) (key, int) {
	if a.Is4() {
		b := a.As4()
		return keyFrom4(b[:]), 32
	}
	b := a.As16()
	return keyFrom16(b[:]), 128
}

// mask returns k with every bit from position n on cleared.
func (k key) mask(n int) key {
	switch {
	case n <= 0:
		return key{}
	case n < 64:
		return key{hi: k.hi &^ (^uint64(0) >> n)}
	case n == 64:
		return key{hi: k.hi}
	case n < 128:
		return key{hi: k.hi, lo: k.lo &^ (^uint64(0) >> (n - 64))}
	default:
		return k
	}
}

// bit returns the bit of k at position i (0 is the most significant).
func (k key) bit(i int) int {
	if i < 64 {
		return int(k.hi>>(63-i)) & 1
	}
	return int(k.lo>>(127-i)) & 1
}

// commonBits returns how many leading bits a and b share (at most 128).
func commonBits(a, b key) int {
	if x := a.hi ^ b.hi; x != 0 {
		return bits.LeadingZeros64(x)
	}
	if x := a.lo ^ b.lo; x != 0 {
		return 64 + bits.LeadingZeros64(x)
	}
	return 128
}

// covers reports whether a lies inside n's prefix.
func (n *node[T]) covers(a key) bool {
	return a.mask(int(n.bits)) == n.key
}

func (t *Table[T]) root(is4 bool) **node[T] {
	if is4 {
		return &t.v4
	}
	return &t.v6
}

// canonical returns p masked and whether it is usable. An IPv6 prefix stays
// IPv6 even if it is IPv4-mapped, as in the kernel's table.
func canonical(p netip.Prefix) (netip.Prefix, bool) {
	p = p.Masked()
	return p, p.IsValid()
}

// Insert makes v the owner of p, taking it from any previous owner. p is
// masked first (100.64.0.9/24 means 100.64.0.0/24); an invalid p is ignored.
func (t *Table[T]) Insert(p netip.Prefix, v T) {
	p, ok := canonical(p)
	if !ok {
		return
	}
	k, _ := keyOf(p.Addr())
	plen := p.Bits()
	is6 := !p.Addr().Is4()

	t.mu.Lock()
	defer t.mu.Unlock()
	slot := t.root(!is6)
	var parent *node[T]
	for {
		n := *slot
		if n == nil {
			leaf := &node[T]{key: k, bits: uint8(plen), is6: is6, parent: parent}
			*slot = leaf
			t.own(leaf, v)
			return
		}
		c := min(commonBits(k, n.key), int(n.bits), plen)
		if c == int(n.bits) {
			if c == plen { // same prefix: replace the owner
				if n.has {
					if n.val == v {
						return
					}
					t.disown(n)
				}
				t.own(n, v)
				return
			}
			parent, slot = n, &n.child[k.bit(c)]
			continue
		}
		// p and n diverge before n's end: put a node at their fork.
		leaf := &node[T]{key: k, bits: uint8(plen), is6: is6}
		t.own(leaf, v)
		if c == plen { // p contains n
			leaf.child[n.key.bit(c)] = n
			leaf.parent, n.parent = parent, leaf
			*slot = leaf
			return
		}
		fork := &node[T]{key: k.mask(c), bits: uint8(c), is6: is6, parent: parent}
		fork.child[k.bit(c)] = leaf
		fork.child[n.key.bit(c)] = n
		leaf.parent, n.parent = fork, fork
		*slot = fork
		return
	}
}

// own gives n (which has no value) to v and puts it on v's list.
func (t *Table[T]) own(n *node[T], v T) {
	if t.owned == nil {
		t.owned = make(map[T]*node[T])
	}
	n.has, n.val = true, v
	n.prev, n.next = nil, t.owned[v]
	if n.next != nil {
		n.next.prev = n
	}
	t.owned[v] = n
	t.size++
}

// disown takes n's value away and takes n off its value's list; the trie's
// shape is left to tidy.
func (t *Table[T]) disown(n *node[T]) {
	if n.prev != nil {
		n.prev.next = n.next
	} else if n.next != nil {
		t.owned[n.val] = n.next
	} else {
		delete(t.owned, n.val)
	}
	if n.next != nil {
		n.next.prev = n.prev
	}
	var zero T
	n.has, n.val, n.prev, n.next = false, zero, nil, nil
	t.size--
}

// slotOf returns the pointer that points at n: its parent's child slot or
// its family's root.
func (t *Table[T]) slotOf(n *node[T]) **node[T] {
	if n.parent == nil {
		return t.root(!n.is6)
	}
	if n.parent.child[0] == n {
		return &n.parent.child[0]
	}
	return &n.parent.child[1]
}

// remove disowns n and tidies the trie around it, so that every valueless
// node keeps two children. At most n and its parent leave the trie.
func (t *Table[T]) remove(n *node[T]) {
	t.disown(n)
	for n != nil && !n.has && (n.child[0] == nil || n.child[1] == nil) {
		parent := n.parent
		c := n.child[0]
		if c == nil {
			c = n.child[1]
		}
		*t.slotOf(n) = c
		n.parent, n.child = nil, [2]*node[T]{}
		if c != nil {
			c.parent = parent
			return // the parent keeps as many children as before
		}
		n = parent // it lost a child: it may now join too few
	}
}

// Remove removes p if v owns it and reports whether it did. p is masked
// first.
func (t *Table[T]) Remove(p netip.Prefix, v T) bool {
	p, ok := canonical(p)
	if !ok {
		return false
	}
	k, _ := keyOf(p.Addr())
	plen := p.Bits()

	t.mu.Lock()
	defer t.mu.Unlock()
	n := *t.root(p.Addr().Is4())
	for n != nil && int(n.bits) < plen && n.covers(k) {
		n = n.child[k.bit(int(n.bits))]
	}
	if n == nil || int(n.bits) != plen || n.key != k.mask(plen) || !n.has || n.val != v {
		return false
	}
	t.remove(n)
	return true
}

// RemoveValue removes every prefix v owns, in time proportional to their
// number.
func (t *Table[T]) RemoveValue(v T) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for n := t.owned[v]; n != nil; n = t.owned[v] {
		t.remove(n)
	}
}

// Lookup returns the owner of the longest prefix containing a. An
// IPv4-mapped IPv6 address (::ffff:a.b.c.d) is looked up as IPv4. It never
// allocates.
func (t *Table[T]) Lookup(a netip.Addr) (T, bool) {
	if !a.IsValid() {
		var zero T
		return zero, false
	}
	a = a.Unmap()
	k, _ := keyOf(a)
	t.mu.RLock()
	defer t.mu.RUnlock()
	return lookup(*t.root(a.Is4()), k)
}

// LookupPacketDst returns the owner of the longest prefix containing the
// destination of the IP packet pkt (IPv4 bytes 16:20, IPv6 bytes 24:40). It
// returns false if pkt is too short for its version or is neither IPv4 nor
// IPv6. The packet's own family is used: an IPv6 packet to a mapped IPv4
// address does not match IPv4 prefixes. It never allocates.
func (t *Table[T]) LookupPacketDst(pkt []byte) (T, bool) {
	return t.lookupPacket(pkt, 16, 24)
}

// LookupPacketSrc is LookupPacketDst for the packet's source address (IPv4
// bytes 12:16, IPv6 bytes 8:24).
func (t *Table[T]) LookupPacketSrc(pkt []byte) (T, bool) {
	return t.lookupPacket(pkt, 12, 8)
}

func (t *Table[T]) lookupPacket(pkt []byte, off4, off6 int) (T, bool) {
	var zero T
	if len(pkt) == 0 {
		return zero, false
	}
	var k key
	var root **node[T]
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return zero, false
		}
		k, root = keyFrom4(pkt[off4:off4+4]), &t.v4
	case 6:
		if len(pkt) < 40 {
			return zero, false
		}
		k, root = keyFrom16(pkt[off6:off6+16]), &t.v6
	default:
		return zero, false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return lookup(*root, k)
}

func lookup[T comparable](n *node[T], k key) (T, bool) {
	var best T
	found := false
	for n != nil && n.covers(k) {
		if n.has {
			best, found = n.val, true
		}
		if n.bits >= 128 {
			break
		}
		n = n.child[k.bit(int(n.bits))]
	}
	return best, found
}

// Prefixes returns the prefixes v owns, IPv4 first, each family in address
// order and shorter prefixes before longer ones at the same address. The
// slice is newly allocated and belongs to the caller. It takes time in the
// number of v's prefixes, not the table's.
func (t *Table[T]) Prefixes(v T) []netip.Prefix {
	var out []netip.Prefix
	t.mu.RLock()
	for n := t.owned[v]; n != nil; n = n.next {
		out = append(out, prefixOf(n.key, int(n.bits), !n.is6))
	}
	t.mu.RUnlock()
	slices.SortFunc(out, comparePrefixes)
	return out
}

func prefixOf(k key, plen int, is4 bool) netip.Prefix {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(k.hi>>32))
		return netip.PrefixFrom(netip.AddrFrom4(b), plen)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), plen)
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Len returns the number of prefixes in the table.
func (t *Table[T]) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.size
}
