package wg

import (
	"encoding/binary"
	"weak"

	"github.com/ptun-vpn/ptun/wg/acl"
)

// accessLists shares compiled access lists among peers. A gateway gives
// every device of the same groups the same rules, and a compiled list is
// immutable, so a thousand devices can share one list instead of holding a
// thousand equal ones (about 400 bytes each for a group without rules of
// its own, more with them), and a rule change compiles each distinct list
// once. Entries are weak: a list no peer uses any more is collected, and
// its entry swept on a later insert.
type accessLists struct {
	m       map[string]weak.Pointer[acl.List] // by accessKey
	sweepAt int                               // sweep dead entries once m is this long
}

// compileAccess returns the compiled list for rules: one a peer already
// uses if the rules are the same (in the same order), else a new one.
// configMu is held.
func (d *Device) compileAccess(rules []acl.Rule) (*acl.List, error) {
	a := &d.accessLists
	key := accessKey(rules)
	if l := a.m[key].Value(); l != nil {
		return l, nil
	}
	l, err := acl.Compile(rules)
	if err != nil {
		return nil, err
	}
	if a.m == nil {
		a.m = make(map[string]weak.Pointer[acl.List])
	}
	a.m[key] = weak.Make(l)
	if len(a.m) >= a.sweepAt {
		for k, wp := range a.m {
			if wp.Value() == nil {
				delete(a.m, k)
			}
		}
		a.sweepAt = 2*len(a.m) + 64
	}
	return l, nil
}

// accessKey encodes rules, in order, as a map key: 22 bytes per rule.
func accessKey(rules []acl.Rule) string {
	b := make([]byte, 0, 22*len(rules))
	for _, r := range rules {
		addr := r.Dst.Addr().As16()
		fam := byte(6)
		if r.Dst.Addr().Is4() {
			fam = 4
		}
		b = append(b, addr[:]...)
		b = append(b, fam, byte(r.Dst.Bits()), r.Proto)
		b = binary.BigEndian.AppendUint16(b, r.PortLo)
		b = binary.BigEndian.AppendUint16(b, r.PortHi)
	}
	return string(b)
}
