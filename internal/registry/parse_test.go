package registry

import (
	"encoding/base64"
	"errors"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
)

func TestParseName(t *testing.T) {
	for _, ok := range []string{"a", "alice", "Bob.Smith_2-x", strings.Repeat("z", 64), "-", "..."} {
		if got, err := ParseName(ok); err != nil || got != ok {
			t.Errorf("ParseName(%q) = %q, %v", ok, got, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("z", 65), "al ice", "alice/laptop", "é", "a\x00", "a\n", "a:b"} {
		if _, err := ParseName(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseName(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestParsePool(t *testing.T) {
	for s, want := range map[string]string{"100.80.0.0/16": "100.80.0.0/16", " 2001:db8:80::/64 ": "2001:db8:80::/64", "100.64.0.0/30": "100.64.0.0/30", "2001:db8::/126": "2001:db8::/126"} {
		if p, err := ParsePool(s); err != nil || p.String() != want {
			t.Errorf("ParsePool(%q) = %v, %v", s, p, err)
		}
	}
	for _, bad := range []string{"", "100.80.0.0", "100.80.0.1/16", "100.64.0.0/31", "100.64.0.0/32", "2001:db8::/127", "::ffff:100.64.0.0/120", "fe80::%eth0/64", "x/8"} {
		if _, err := ParsePool(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePool(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestUsableRange(t *testing.T) {
	for _, c := range []struct {
		pool, first, last string
		n                 int64
	}{
		{"100.64.0.0/30", "100.64.0.2", "100.64.0.2", 1},
		{"100.64.0.0/24", "100.64.0.2", "100.64.0.254", 253},
		{"2001:db8::/126", "2001:db8::2", "2001:db8::3", 2},
		{"2001:db8::/120", "2001:db8::2", "2001:db8::ff", 254},
	} {
		first, last, n := usableRange(netip.MustParsePrefix(c.pool))
		if first.String() != c.first || last.String() != c.last || n.Cmp(big.NewInt(c.n)) != 0 {
			t.Errorf("%s: %s-%s (%s), want %s-%s (%d)", c.pool, first, last, n, c.first, c.last, c.n)
		}
	}
	_, _, n := usableRange(netip.MustParsePrefix("2001:db8::/64"))
	if want := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 64), big.NewInt(2)); n.Cmp(want) != 0 {
		t.Errorf("a /64: %s usable, want %s", n, want)
	}
}

func TestParseRule(t *testing.T) {
	for s, want := range map[string]Rule{
		"198.18.2.0/24":                 {Dest: netip.MustParsePrefix("198.18.2.0/24")},
		"198.18.2.10 tcp/22":            {Dest: netip.MustParsePrefix("198.18.2.10/32"), Proto: ProtoTCP, PortFrom: 22, PortTo: 22},
		"2001:db8:2::/64 udp/5000-5100": {Dest: netip.MustParsePrefix("2001:db8:2::/64"), Proto: ProtoUDP, PortFrom: 5000, PortTo: 5100},
		"198.18.2.0/24  icmp":           {Dest: netip.MustParsePrefix("198.18.2.0/24"), Proto: ProtoICMP},
		"0.0.0.0/0 tcp":                 {Dest: netip.MustParsePrefix("0.0.0.0/0"), Proto: ProtoTCP},
	} {
		got, err := ParseRule(s)
		if err != nil || got != want {
			t.Errorf("ParseRule(%q) = %+v, %v; want %+v", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "198.18.2.0/24 tcp/22 x", "198.18.2.1/24", "198.18.2.0/24 sctp", "198.18.2.0/24 icmp/8",
		"198.18.2.0/24 tcp/0", "198.18.2.0/24 tcp/65536", "198.18.2.0/24 tcp/20-10", "198.18.2.0/24 tcp/", "198.18.2.0/24 tcp/022",
		"198.18.2.0/24 tcp/1-", "fe80::1%eth0 tcp/22", "host tcp/22"} {
		if _, err := ParseRule(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseRule(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	for s, want := range map[string]string{"198.18.0.1:51820": "198.18.0.1:51820", "[2001:db8::1]:443": "[2001:db8::1]:443",
		"vpn.example.com:51820": "vpn.example.com:51820", "[::ffff:198.18.0.1]:1": "[::ffff:198.18.0.1]:1"} {
		if got, err := ParseEndpoint(s); err != nil || got != want {
			t.Errorf("ParseEndpoint(%q) = %q, %v; want %q", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "198.18.0.1", "198.18.0.1:0", "198.18.0.1:70000", ":51820", "[fe80::1%eth0]:1", "bad_host:1", "-a.example:1", "a..b:1"} {
		if _, err := ParseEndpoint(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseEndpoint(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestParseInviteSecret(t *testing.T) {
	prefix := []byte{0xab, 2, 3, 4, 5, 6}
	secret := make([]byte, inviteSecretBytes)
	secret[0] = 9
	s := formatInviteSecret(prefix, secret)
	p, got, err := parseInviteSecret(s)
	if err != nil || p != "qwIDBAUG" || string(got) != string(secret) || len(s) != 8+1+43 {
		t.Fatalf("parseInviteSecret(%q) = %q, %x, %v", s, p, got, err)
	}
	for _, bad := range []string{"", s[:len(s)-1], s + "A", "qwIDBAU=" + s[8:], strings.Replace(s, ".", "_", 1), s[:10] + "*" + s[11:],
		"qwIDBAUGx" + s[8:], s[:len(s)-1] + "B" /* non-zero padding bits */} {
		if _, _, err := parseInviteSecret(bad); !errors.Is(err, ErrInviteRefused) {
			t.Errorf("parseInviteSecret(%q) = %v, want ErrInviteRefused", bad, err)
		}
	}
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"alice", "", "a b", strings.Repeat("x", 64), strings.Repeat("x", 65), "é", "a.b_c-d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseName(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseName(%q): %v is not ErrInvalid", s, err)
			}
			return
		}
		if got != s || len(s) < 1 || len(s) > 64 || strings.ContainsAny(s, " /\x00\n:") {
			t.Fatalf("ParseName(%q) accepted %q", s, got)
		}
	})
}

func FuzzParsePool(f *testing.F) {
	for _, s := range []string{"100.80.0.0/16", "2001:db8:80::/64", "100.64.0.0/30", "2001:db8::/126", "100.64.0.0/31", "::ffff:1.2.3.0/120", "1.2.3.4/24", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePool(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParsePool(%q): %v is not ErrInvalid", s, err)
			}
			return
		}
		first, last, n := usableRange(p)
		if n.Sign() <= 0 || !p.Contains(first) || !p.Contains(last) || first == p.Addr() || last.Less(first) {
			t.Fatalf("pool %s: usable %s-%s (%s)", p, first, last, n)
		}
		again, err := ParsePool(p.String())
		if err != nil || again != p {
			t.Fatalf("ParsePool(%q) = %v, but its String %q gives %v, %v", s, p, p.String(), again, err)
		}
	})
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"198.18.2.0/24", "198.18.2.10 tcp/22", "2001:db8:2::/64 udp/5000-5100", "198.18.2.0/24 icmp",
		"0.0.0.0/0 tcp", "198.18.2.0/24 tcp/20-10", "198.18.2.0/24 icmp/8", "::/0 udp/1-65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseRule(%q): %v is not ErrInvalid", s, err)
			}
			return
		}
		again, err := ParseRule(r.String())
		if err != nil || again != r {
			t.Fatalf("ParseRule(%q) = %+v, String %q parses to %+v, %v", s, r, r.String(), again, err)
		}
		if _, err := checkRule(r); err != nil {
			t.Fatalf("ParseRule(%q) returned a rule checkRule refuses: %v", s, err)
		}
	})
}

func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"198.18.0.1:51820", "[2001:db8::1]:443", "vpn.example.com:51820", "x:0", "[fe80::1%eth0]:1", ":1", "a..b:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ep, err := ParseEndpoint(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseEndpoint(%q): %v is not ErrInvalid", s, err)
			}
			return
		}
		again, err := ParseEndpoint(ep)
		if err != nil || again != ep {
			t.Fatalf("ParseEndpoint(%q) = %q, which gives %q, %v", s, ep, again, err)
		}
	})
}

func FuzzParseInviteSecret(f *testing.F) {
	f.Add(formatInviteSecret(make([]byte, invitePrefixBytes), make([]byte, inviteSecretBytes)))
	f.Add("qwIDBAUG." + strings.Repeat("A", 43))
	f.Add("")
	f.Add("not-a-secret")
	f.Fuzz(func(t *testing.T, s string) {
		prefix, secret, err := parseInviteSecret(s)
		if err != nil {
			if !errors.Is(err, ErrInviteRefused) {
				t.Fatalf("parseInviteSecret(%q): %v is not ErrInviteRefused", s, err)
			}
			return
		}
		pb, err := base64.RawURLEncoding.DecodeString(prefix)
		if err != nil || len(pb) != invitePrefixBytes || len(secret) != inviteSecretBytes {
			t.Fatalf("parseInviteSecret(%q) = %q, %d bytes", s, prefix, len(secret))
		}
		if formatInviteSecret(pb, secret) != strings.TrimSpace(s) {
			t.Fatalf("parseInviteSecret(%q) does not round-trip", s)
		}
	})
}

// TestInviteSecretIsAnEnrollToken checks the contract with internal/enroll:
// "v1." + a secret from CreateInvite is a token that ParseToken reads back
// into the same prefix and secret.
func TestInviteSecretIsAnEnrollToken(t *testing.T) {
	reg, err := OpenSQLite(bg, t.TempDir()+"/r.db", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	must(reg.AddUser(bg, "alice"))(t)
	inv, secret, err := reg.CreateInvite(bg, "alice", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	prefix, sec, err := enroll.ParseToken("v1." + secret)
	if err != nil || prefix != inv.Prefix || prefix+"."+sec != secret {
		t.Fatalf("enroll.ParseToken(v1.%s) = %q, %q, %v", secret, prefix, sec, err)
	}
}
