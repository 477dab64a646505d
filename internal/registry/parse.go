package registry

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// ParseName checks a user, group, device or gateway name: 1 to 64
// characters, each an ASCII letter, a digit, '.', '_' or '-'. It returns
// the name unchanged (names are case-sensitive).
func ParseName(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: empty name: give 1 to 64 letters, digits, '.', '_' or '-'", ErrInvalid)
	}
	if len(s) > 64 {
		return "", fmt.Errorf("%w: name %.20q… is %d characters long: use at most 64", ErrInvalid, s, len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return "", fmt.Errorf("%w: name %q has %q at byte %d: use only letters, digits, '.', '_' or '-'", ErrInvalid, s, c, i)
		}
	}
	return s, nil
}

// ParsePool parses a pool's CIDR: a masked IPv4 prefix of /30 or shorter or
// a masked IPv6 prefix of /126 or shorter (smaller ones leave no address for
// a device once the reserved ones are taken).
func ParsePool(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: pool %q is not a CIDR (e.g. 100.80.0.0/16 or 2001:db8:80::/64)", ErrInvalid, s)
	}
	return checkPool(p)
}

func checkPool(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%w: no pool prefix given", ErrInvalid)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%w: pool %s is an IPv4-mapped IPv6 prefix: give it as IPv4", ErrInvalid, p)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%w: pool %s has host bits set: did you mean %s?", ErrInvalid, p, p.Masked())
	}
	if p.Addr().Is4() && p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("%w: pool %s is too small: an IPv4 pool needs at least a /30 (network, gateway, device, broadcast)", ErrInvalid, p)
	}
	if p.Addr().Is6() && p.Bits() > 126 {
		return netip.Prefix{}, fmt.Errorf("%w: pool %s is too small: an IPv6 pool needs at least a /126", ErrInvalid, p)
	}
	return p, nil
}

// ParseRule parses an access rule as the CLI writes it: a destination (a
// CIDR, or one address), then optionally a protocol, tcp and udp with an
// optional port or port range:
//
//	198.18.2.0/24
//	198.18.2.0/24 icmp
//	198.18.2.10 tcp/22
//	2001:db8:2::/64 udp/5000-5100
//	198.18.2.0/24 tcp
//
// The group is not part of the text; Rule.String gives the text back.
func ParseRule(s string) (Rule, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 || len(fields) > 2 {
		return Rule{}, fmt.Errorf("%w: rule %q: write DEST [tcp[/PORT[-PORT]] | udp[/PORT[-PORT]] | icmp], e.g. 198.18.2.0/24 tcp/22", ErrInvalid, s)
	}
	var r Rule
	dest, err := parseDest(fields[0])
	if err != nil {
		return Rule{}, err
	}
	r.Dest = dest
	if len(fields) == 2 {
		proto, ports, hasPorts := strings.Cut(fields[1], "/")
		switch Proto(proto) {
		case ProtoTCP, ProtoUDP, ProtoICMP:
			r.Proto = Proto(proto)
		default:
			return Rule{}, fmt.Errorf("%w: rule %q: protocol %q: use tcp, udp or icmp", ErrInvalid, s, proto)
		}
		if hasPorts {
			if r.Proto == ProtoICMP {
				return Rule{}, fmt.Errorf("%w: rule %q: icmp has no ports: write just icmp", ErrInvalid, s)
			}
			from, to, isRange := strings.Cut(ports, "-")
			if r.PortFrom, err = parsePort(from); err != nil {
				return Rule{}, fmt.Errorf("rule %q: %w", s, err)
			}
			r.PortTo = r.PortFrom
			if isRange {
				if r.PortTo, err = parsePort(to); err != nil {
					return Rule{}, fmt.Errorf("rule %q: %w", s, err)
				}
			}
		}
	}
	return checkRule(r)
}

func parseDest(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%w: destination %q is not a CIDR or an address (e.g. 198.18.2.0/24)", ErrInvalid, s)
		}
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: destination %q is not a CIDR or an address (e.g. 198.18.2.0/24)", ErrInvalid, s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%w: destination %s has host bits set: did you mean %s?", ErrInvalid, p, p.Masked())
	}
	return p, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != s {
		return 0, fmt.Errorf("%w: port %q: use a number from 1 to 65535", ErrInvalid, s)
	}
	return uint16(n), nil
}

// checkRule validates a Rule built in Go (AddRule calls it too).
func checkRule(r Rule) (Rule, error) {
	if !r.Dest.IsValid() {
		return Rule{}, fmt.Errorf("%w: rule has no destination", ErrInvalid)
	}
	if r.Dest.Addr().Is4In6() || r.Dest.Addr().Zone() != "" {
		return Rule{}, fmt.Errorf("%w: rule destination %s: give IPv4 destinations as IPv4, without a zone", ErrInvalid, r.Dest)
	}
	if r.Dest.Masked() != r.Dest {
		return Rule{}, fmt.Errorf("%w: destination %s has host bits set: did you mean %s?", ErrInvalid, r.Dest, r.Dest.Masked())
	}
	switch r.Proto {
	case ProtoAny, ProtoICMP:
		if r.PortFrom != 0 || r.PortTo != 0 {
			return Rule{}, fmt.Errorf("%w: rule for %s: ports need tcp or udp", ErrInvalid, r.Dest)
		}
	case ProtoTCP, ProtoUDP:
		if (r.PortFrom == 0) != (r.PortTo == 0) || r.PortFrom > r.PortTo {
			return Rule{}, fmt.Errorf("%w: rule for %s: port range %d-%d: give FROM-TO with 1 <= FROM <= TO", ErrInvalid, r.Dest, r.PortFrom, r.PortTo)
		}
	default:
		return Rule{}, fmt.Errorf("%w: rule for %s: protocol %q: use tcp, udp or icmp", ErrInvalid, r.Dest, r.Proto)
	}
	return r, nil
}

// String formats the rule as ParseRule reads it.
func (r Rule) String() string {
	var b strings.Builder
	if r.Dest.IsSingleIP() {
		b.WriteString(r.Dest.Addr().String())
	} else {
		b.WriteString(r.Dest.String())
	}
	if r.Proto != ProtoAny {
		b.WriteByte(' ')
		b.WriteString(string(r.Proto))
		if r.PortFrom != 0 {
			fmt.Fprintf(&b, "/%d", r.PortFrom)
			if r.PortTo != r.PortFrom {
				fmt.Fprintf(&b, "-%d", r.PortTo)
			}
		}
	}
	return b.String()
}

// ParseEndpoint checks a gateway endpoint: HOST:PORT where HOST is an IP
// address ([v6]:port for IPv6) or a DNS name, and PORT is 1 to 65535.
func ParseEndpoint(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("%w: endpoint %q: write HOST:PORT, e.g. 198.18.0.1:51820 or [2001:db8::1]:51820", ErrInvalid, s)
	}
	if _, err := parsePort(port); err != nil {
		return "", fmt.Errorf("endpoint %q: %w", s, err)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "", fmt.Errorf("%w: endpoint %q: an address with a zone cannot be reached by devices", ErrInvalid, s)
		}
		return netip.AddrPortFrom(a, mustPort(port)).String(), nil
	}
	if !validHostname(host) {
		return "", fmt.Errorf("%w: endpoint %q: host %q is neither an IP address nor a DNS name", ErrInvalid, s, host)
	}
	return net.JoinHostPort(host, port), nil
}

func mustPort(s string) uint16 {
	n, _ := strconv.ParseUint(s, 10, 16)
	return uint16(n)
}

func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// An invite secret is PREFIX.SECRET, both unpadded base64url: PREFIX is 6
// random bytes (8 characters, public: the database looks the invite up by
// it), SECRET is 32 random bytes (43 characters). Only SHA-256(SECRET) is
// stored. This is the PREFIX.SECRET of internal/enroll's "v1.PREFIX.SECRET"
// invite token.
const (
	invitePrefixBytes = 6
	inviteSecretBytes = 32
)

func formatInviteSecret(prefix []byte, secret []byte) string {
	return base64.RawURLEncoding.EncodeToString(prefix) + "." + base64.RawURLEncoding.EncodeToString(secret)
}

// parseInviteSecret splits an invite secret into its prefix (as stored) and
// its secret bytes. It does not touch the database.
func parseInviteSecret(s string) (prefix string, secret []byte, err error) {
	p, sec, ok := strings.Cut(strings.TrimSpace(s), ".")
	if !ok || len(p) != base64.RawURLEncoding.EncodedLen(invitePrefixBytes) || len(sec) != base64.RawURLEncoding.EncodedLen(inviteSecretBytes) {
		return "", nil, fmt.Errorf("%w: malformed invite secret: paste the whole enrollment URL the administrator gave you", ErrInviteRefused)
	}
	if pb, err := base64.RawURLEncoding.Strict().DecodeString(p); err != nil || len(pb) != invitePrefixBytes {
		return "", nil, fmt.Errorf("%w: malformed invite prefix: paste the whole enrollment URL the administrator gave you", ErrInviteRefused)
	}
	secret, err = base64.RawURLEncoding.Strict().DecodeString(sec)
	if err != nil || len(secret) != inviteSecretBytes {
		return "", nil, fmt.Errorf("%w: malformed invite secret: paste the whole enrollment URL the administrator gave you", ErrInviteRefused)
	}
	return p, secret, nil
}
