package uapi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// Fixed keys, so tables stay readable.
var (
	hexA = strings.Repeat("a1", 32)
	hexB = strings.Repeat("b2", 32)
	hexC = strings.Repeat("c3", 32)
	keyA = mustKey(hexA)
	keyB = mustKey(hexB)
	keyC = mustKey(hexC)
)

func mustKey(h string) [32]byte {
	k, ok := parseKey([]byte(h))
	if !ok {
		panic("bad test key " + h)
	}
	return k
}

func ptr[T any](v T) *T { return &v }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func parseSetString(s string) (*wgcfg.DeviceConfig, error) {
	return ParseSet(bufio.NewReader(strings.NewReader(s)))
}

func TestParseSet(t *testing.T) {
	privA := noise.PrivateKey(keyA)
	pskC := noise.PresharedKey(keyC)
	cases := []struct {
		name string
		body string
		want *wgcfg.DeviceConfig
	}{
		{"empty", "\n", &wgcfg.DeviceConfig{}},
		{"device keys", "private_key=" + hexA + "\nlisten_port=51820\nfwmark=4294967295\nreplace_peers=true\n\n",
			&wgcfg.DeviceConfig{PrivateKey: &privA, ListenPort: ptr[uint16](51820), FwMark: ptr[uint32](0xffffffff), ReplacePeers: true}},
		{"zero values", "private_key=" + strings.Repeat("0", 64) + "\nlisten_port=0\nfwmark=0\n\n",
			&wgcfg.DeviceConfig{PrivateKey: &noise.PrivateKey{}, ListenPort: ptr[uint16](0), FwMark: ptr[uint32](0)}},
		{"upper-case hex", "private_key=" + strings.ToUpper(hexA) + "\n\n", &wgcfg.DeviceConfig{PrivateKey: &privA}},
		{"last device value wins", "listen_port=1\nlisten_port=2\n\n", &wgcfg.DeviceConfig{ListenPort: ptr[uint16](2)}},
		{"what wg set sends",
			"private_key=" + hexA + "\nlisten_port=51820\npublic_key=" + hexB +
				"\nendpoint=198.18.0.2:51820\npersistent_keepalive_interval=25\nallowed_ip=100.64.0.2/32\nallowed_ip=2001:db8::2/128\n\n",
			&wgcfg.DeviceConfig{PrivateKey: &privA, ListenPort: ptr[uint16](51820), Peers: []wgcfg.PeerConfig{{
				PublicKey:           noise.PublicKey(keyB),
				Endpoint:            ptr(netip.MustParseAddrPort("198.18.0.2:51820")),
				PersistentKeepalive: ptr[uint16](25),
				AddAllowedIPs:       []netip.Prefix{pfx("100.64.0.2/32"), pfx("2001:db8::2/128")},
			}}}},
		{"every peer key",
			"public_key=" + hexB + "\nupdate_only=true\npreshared_key=" + hexC + "\nendpoint=[2001:db8::1]:51820\n" +
				"persistent_keepalive_interval=65535\nreplace_allowed_ips=true\nallowed_ip=100.64.0.0/10\nallowed_ip=-2001:db8::/32\nprotocol_version=1\n\n",
			&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{
				PublicKey:           noise.PublicKey(keyB),
				UpdateOnly:          true,
				PresharedKey:        &pskC,
				Endpoint:            ptr(netip.MustParseAddrPort("[2001:db8::1]:51820")),
				PersistentKeepalive: ptr[uint16](65535),
				ReplaceAllowedIPs:   true,
				AddAllowedIPs:       []netip.Prefix{pfx("100.64.0.0/10")},
				RemoveAllowedIPs:    []netip.Prefix{pfx("2001:db8::/32")},
			}}}},
		{"remove peer", "public_key=" + hexB + "\nremove=true\npublic_key=" + hexC + "\nremove=true\n\n",
			&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: noise.PublicKey(keyB), Remove: true}, {PublicKey: noise.PublicKey(keyC), Remove: true}}}},
		{"endpoint with zone", "public_key=" + hexB + "\nendpoint=[fe80::1%eth0]:1\n\n",
			&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: noise.PublicKey(keyB), Endpoint: ptr(netip.MustParseAddrPort("[fe80::1%eth0]:1"))}}}},
		{"allowed IPs masked, deduplicated, last line wins",
			"public_key=" + hexB + "\nallowed_ip=100.64.0.9/24\nallowed_ip=198.18.0.0/15\nallowed_ip=-198.18.1.1/15\n" +
				"allowed_ip=100.64.0.0/24\nallowed_ip=-2001:db8::/48\nallowed_ip=2001:db8::/48\n\n",
			&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{
				PublicKey:        noise.PublicKey(keyB),
				AddAllowedIPs:    []netip.Prefix{pfx("100.64.0.0/24"), pfx("2001:db8::/48")},
				RemoveAllowedIPs: []netip.Prefix{pfx("198.18.0.0/15")},
			}}}},
		{"replace_allowed_ips cancels earlier lines",
			"public_key=" + hexB + "\nallowed_ip=100.64.0.1/32\nallowed_ip=-100.64.0.2/32\nreplace_allowed_ips=true\nallowed_ip=100.64.0.3/32\n\n",
			&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{
				PublicKey: noise.PublicKey(keyB), ReplaceAllowedIPs: true, AddAllowedIPs: []netip.Prefix{pfx("100.64.0.3/32")},
			}}}},
		{"same peer twice keeps order",
			"public_key=" + hexB + "\nallowed_ip=100.64.0.1/32\npublic_key=" + hexC + "\npublic_key=" + hexB + "\nallowed_ip=-100.64.0.1/32\n\n",
			&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{
				{PublicKey: noise.PublicKey(keyB), AddAllowedIPs: []netip.Prefix{pfx("100.64.0.1/32")}},
				{PublicKey: noise.PublicKey(keyC)},
				{PublicKey: noise.PublicKey(keyB), RemoveAllowedIPs: []netip.Prefix{pfx("100.64.0.1/32")}},
			}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseSetString(c.body)
			if err != nil {
				t.Fatalf("ParseSet: %v", err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("ParseSet =\n%+v\nwant\n%+v", got, c.want)
			}
			// Whatever parses must survive WriteSet and parse back the same.
			var buf bytes.Buffer
			if err := WriteSet(&buf, got); err != nil {
				t.Fatalf("WriteSet: %v", err)
			}
			again, err := parseSetString(buf.String() + "\n")
			if err != nil {
				t.Fatalf("ParseSet(WriteSet()): %v\n%s", err, buf.String())
			}
			if !reflect.DeepEqual(again, got) {
				t.Fatalf("round trip =\n%+v\nwant\n%+v", again, got)
			}
		})
	}
}

func TestParseSetErrors(t *testing.T) {
	peer := "public_key=" + hexB + "\n"
	cases := []struct {
		name  string
		body  string
		errno syscall.Errno
	}{
		{"no equals sign", "private_key\n\n", syscall.EINVAL},
		{"unknown device key", "listen_prot=1\n\n", syscall.EINVAL},
		{"unknown peer key", peer + "endpoint_v2=1\n\n", syscall.EINVAL},
		{"empty key", "=1\n\n", syscall.EINVAL},
		{"short private key", "private_key=" + hexA[:62] + "\n\n", syscall.EINVAL},
		{"long private key", "private_key=" + hexA + "00\n\n", syscall.EINVAL},
		{"non-hex private key", "private_key=" + strings.Repeat("zz", 32) + "\n\n", syscall.EINVAL},
		{"base64 private key", "private_key=oaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaE=\n\n", syscall.EINVAL},
		{"port too big", "listen_port=65536\n\n", syscall.EINVAL},
		{"negative port", "listen_port=-1\n\n", syscall.EINVAL},
		{"signed port", "listen_port=+1\n\n", syscall.EINVAL},
		{"empty port", "listen_port=\n\n", syscall.EINVAL},
		{"hex port", "listen_port=0x10\n\n", syscall.EINVAL},
		{"fwmark too big", "fwmark=4294967296\n\n", syscall.EINVAL},
		{"replace_peers false", "replace_peers=false\n\n", syscall.EINVAL},
		{"device key after peer", peer + "listen_port=1\n\n", syscall.EINVAL},
		{"private key after peer", peer + "private_key=" + hexA + "\n\n", syscall.EINVAL},
		{"peer key before public_key", "endpoint=198.18.0.1:1\n\n", syscall.EINVAL},
		{"allowed_ip before public_key", "allowed_ip=100.64.0.0/10\n\n", syscall.EINVAL},
		{"protocol_version before public_key", "protocol_version=1\n\n", syscall.EINVAL},
		{"bad public key", "public_key=" + hexB[:10] + "\n\n", syscall.EINVAL},
		{"remove not true", peer + "remove=1\n\n", syscall.EINVAL},
		{"update_only not true", peer + "update_only=yes\n\n", syscall.EINVAL},
		{"bad preshared key", peer + "preshared_key=xyz\n\n", syscall.EINVAL},
		{"endpoint without port", peer + "endpoint=198.18.0.1\n\n", syscall.EINVAL},
		{"endpoint v6 without brackets", peer + "endpoint=2001:db8::1:51820\n\n", syscall.EINVAL},
		{"endpoint port too big", peer + "endpoint=198.18.0.1:65536\n\n", syscall.EINVAL},
		{"endpoint host name", peer + "endpoint=example.com:51820\n\n", syscall.EINVAL},
		{"keepalive too big", peer + "persistent_keepalive_interval=65536\n\n", syscall.EINVAL},
		{"keepalive negative", peer + "persistent_keepalive_interval=-1\n\n", syscall.EINVAL},
		{"replace_allowed_ips not true", peer + "replace_allowed_ips=false\n\n", syscall.EINVAL},
		{"allowed_ip without length", peer + "allowed_ip=100.64.0.1\n\n", syscall.EINVAL},
		{"allowed_ip length too big", peer + "allowed_ip=100.64.0.1/33\n\n", syscall.EINVAL},
		{"allowed_ip v6 length too big", peer + "allowed_ip=2001:db8::/129\n\n", syscall.EINVAL},
		{"allowed_ip double minus", peer + "allowed_ip=--100.64.0.0/10\n\n", syscall.EINVAL},
		{"allowed_ip empty", peer + "allowed_ip=\n\n", syscall.EINVAL},
		{"allowed_ip with zone", peer + "allowed_ip=fe80::1%eth0/64\n\n", syscall.EINVAL},
		{"protocol version 2", peer + "protocol_version=2\n\n", syscall.EPROTO},
		{"line too long", "listen_port=" + strings.Repeat("1", 2000) + "\n\n", syscall.EINVAL},
		{"carriage return", "listen_port=1\r\n\n", syscall.EINVAL},
		{"error then good lines", "bogus\nlisten_port=1\n\n", syscall.EINVAL},
		{"cut short", "listen_port=1\n", syscall.EIO},
		{"cut mid-line", "listen_port=1", syscall.EIO},
		{"nothing", "", syscall.EIO},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseSetString(c.body)
			if err == nil {
				t.Fatalf("ParseSet accepted it: %+v", cfg)
			}
			var ue *wgcfg.Error
			if !errors.As(err, &ue) {
				t.Fatalf("error %v (%T) is not *wgcfg.Error", err, err)
			}
			if ue.Errno != c.errno || !errors.Is(err, c.errno) {
				t.Fatalf("errno %d (%v), want %d; error %v", ue.Errno, ue.Errno, c.errno, err)
			}
			if strings.Contains(err.Error(), hexA) || strings.Contains(err.Error(), hexA[:62]) {
				t.Fatalf("error message leaks key material: %v", err)
			}
		})
	}
}

// A failed request is read to its blank line, so the next one parses.
func TestParseSetConsumesFailedRequest(t *testing.T) {
	r := bufio.NewReader(strings.NewReader(
		"bogus=1\nlisten_port=99999\nline " + strings.Repeat("x", 5000) + "\n\nlisten_port=7\n\n"))
	if _, err := ParseSet(r); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("first request: %v, want EINVAL", err)
	}
	cfg, err := ParseSet(r)
	if err != nil || cfg.ListenPort == nil || *cfg.ListenPort != 7 {
		t.Fatalf("second request: %+v, %v", cfg, err)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("stream not at its end: %v", err)
	}
}

func TestParseSetTooLarge(t *testing.T) {
	old := requestLimit
	requestLimit = 64 << 10
	t.Cleanup(func() { requestLimit = old })
	line := "allowed_ip=100.64.0.0/10\n"
	body := "public_key=" + hexB + "\n" + strings.Repeat(line, requestLimit/len(line)+1) + "\n"
	_, err := parseSetString(body)
	if !errors.Is(err, ErrTooLarge) || !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("err = %v, want ErrTooLarge/EMSGSIZE", err)
	}
}

func TestParseSetManyAllowedIPs(t *testing.T) {
	// Large gateways send tens of thousands of allowed_ip lines; resolving
	// them must stay linear.
	var b strings.Builder
	b.WriteString("public_key=" + hexB + "\n")
	for i := range 50000 {
		a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		b.WriteString("allowed_ip=" + netip.PrefixFrom(a, 32).String() + "\n")
	}
	b.WriteString("\n")
	cfg, err := parseSetString(b.String())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(cfg.Peers[0].AddAllowedIPs); n != 50000 {
		t.Fatalf("%d allowed IPs, want 50000", n)
	}
}

func sampleState() *wgcfg.DeviceState {
	return &wgcfg.DeviceState{
		PrivateKey: noise.PrivateKey(keyA),
		ListenPort: 51820,
		FwMark:     0x1234,
		Peers: []wgcfg.PeerState{
			{
				PublicKey:           noise.PublicKey(keyB),
				PresharedKey:        noise.PresharedKey(keyC),
				Endpoint:            netip.MustParseAddrPort("198.18.0.2:51820"),
				LastHandshake:       time.Unix(1700000000, 123456789),
				TxBytes:             1 << 40,
				RxBytes:             42,
				PersistentKeepalive: 25,
				AllowedIPs:          []netip.Prefix{pfx("100.64.0.2/32"), pfx("2001:db8::2/128")},
			},
			{PublicKey: noise.PublicKey(keyC)},
		},
	}
}

func TestWriteGet(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteGet(&buf, sampleState()); err != nil {
		t.Fatal(err)
	}
	want := "private_key=" + hexA + "\nlisten_port=51820\nfwmark=4660\n" +
		"public_key=" + hexB + "\npreshared_key=" + hexC + "\nprotocol_version=1\nendpoint=198.18.0.2:51820\n" +
		"last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456789\ntx_bytes=1099511627776\nrx_bytes=42\n" +
		"persistent_keepalive_interval=25\nallowed_ip=100.64.0.2/32\nallowed_ip=2001:db8::2/128\n" +
		"public_key=" + hexC + "\npreshared_key=" + strings.Repeat("0", 64) + "\nprotocol_version=1\n" +
		"last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"
	if buf.String() != want {
		t.Fatalf("WriteGet =\n%s\nwant\n%s", buf.String(), want)
	}

	// An empty device: no private key, no fwmark line.
	buf.Reset()
	if err := WriteGet(&buf, &wgcfg.DeviceState{}); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "listen_port=0\n" {
		t.Fatalf("empty device: %q", buf.String())
	}

	bad := sampleState()
	bad.Peers[0].AllowedIPs = append(bad.Peers[0].AllowedIPs, netip.Prefix{})
	buf.Reset()
	if err := WriteGet(&buf, bad); !errors.Is(err, syscall.EINVAL) || buf.Len() != 0 {
		t.Fatalf("invalid prefix: err %v, wrote %d bytes", err, buf.Len())
	}
}

func TestWriteSetRejectsInvalid(t *testing.T) {
	for _, cfg := range []*wgcfg.DeviceConfig{
		{Peers: []wgcfg.PeerConfig{{Endpoint: &netip.AddrPort{}}}},
		{Peers: []wgcfg.PeerConfig{{AddAllowedIPs: []netip.Prefix{{}}}}},
		{Peers: []wgcfg.PeerConfig{{RemoveAllowedIPs: []netip.Prefix{{}}}}},
	} {
		var buf bytes.Buffer
		if err := WriteSet(&buf, cfg); !errors.Is(err, syscall.EINVAL) || buf.Len() != 0 {
			t.Errorf("WriteSet(%+v): err %v, wrote %q", cfg, err, buf.String())
		}
	}
}

func TestParseGet(t *testing.T) {
	var buf bytes.Buffer
	st := sampleState()
	if err := WriteGet(&buf, st); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("errno=0\n\n")
	got, err := ParseGet(bufio.NewReader(&buf))
	if err != nil {
		t.Fatal(err)
	}
	if !statesEqual(got, st) {
		t.Fatalf("ParseGet =\n%+v\nwant\n%+v", got, st)
	}

	errCases := []struct {
		name  string
		body  string
		errno syscall.Errno
	}{
		{"device error", "errno=22\n\n", syscall.EINVAL},
		{"negative device error", "errno=-98\n\n", syscall.EADDRINUSE},
		{"no errno", "listen_port=1\n\n", syscall.EPROTO},
		{"bad port", "listen_port=x\nerrno=0\n\n", syscall.EPROTO},
		{"bad key", "public_key=00\nerrno=0\n\n", syscall.EPROTO},
		{"bad nsec", "public_key=" + hexB + "\nlast_handshake_time_nsec=1000000000\nerrno=0\n\n", syscall.EPROTO},
		{"protocol 2", "public_key=" + hexB + "\nprotocol_version=2\nerrno=0\n\n", syscall.EPROTO},
		{"no equals", "junk\nerrno=0\n\n", syscall.EPROTO},
		{"cut short", "listen_port=1\n", syscall.EIO},
	}
	for _, c := range errCases {
		_, err := ParseGet(bufio.NewReader(strings.NewReader(c.body)))
		if !errors.Is(err, c.errno) {
			t.Errorf("%s: err %v, want errno %d", c.name, err, c.errno)
		}
	}
	// Unknown keys are skipped, as wg does.
	got, err = ParseGet(bufio.NewReader(strings.NewReader("listen_port=5\nfuture_key=1\nerrno=0\n\n")))
	if err != nil || got.ListenPort != 5 {
		t.Fatalf("unknown key: %+v, %v", got, err)
	}
}

// statesEqual compares states, handshake times by instant.
func statesEqual(a, b *wgcfg.DeviceState) bool {
	if a.PrivateKey != b.PrivateKey || a.ListenPort != b.ListenPort || a.FwMark != b.FwMark || len(a.Peers) != len(b.Peers) {
		return false
	}
	for i := range a.Peers {
		p, q := a.Peers[i], b.Peers[i]
		if !p.LastHandshake.Equal(q.LastHandshake) {
			return false
		}
		p.LastHandshake, q.LastHandshake = time.Time{}, time.Time{}
		if len(p.AllowedIPs) == 0 && len(q.AllowedIPs) == 0 {
			p.AllowedIPs, q.AllowedIPs = nil, nil
		}
		if !reflect.DeepEqual(p, q) {
			return false
		}
	}
	return true
}

// bigSet is a set=1 body for a gateway: 1000 peers with two allowed IPs each.
func bigSet() string {
	var b strings.Builder
	b.WriteString("private_key=" + hexA + "\nlisten_port=51820\nreplace_peers=true\n")
	for i := range 1000 {
		k := keyB
		k[0], k[1] = byte(i), byte(i>>8)
		b.WriteString("public_key=" + noise.PublicKey(k).Hex() + "\nendpoint=198.18.0.2:51820\nreplace_allowed_ips=true\n")
		a := netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
		b.WriteString("allowed_ip=" + netip.PrefixFrom(a, 32).String() + "\nallowed_ip=2001:db8::" + strconv.FormatUint(uint64(i), 16) + "/128\n")
	}
	b.WriteString("\n")
	return b.String()
}

func BenchmarkParseSet(b *testing.B) {
	body := bigSet()
	if _, err := parseSetString(body); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	r := strings.NewReader(body)
	br := bufio.NewReader(r)
	for b.Loop() {
		r.Reset(body)
		br.Reset(r)
		if _, err := ParseSet(br); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteGet(b *testing.B) {
	cfg, err := parseSetString(bigSet())
	if err != nil {
		b.Fatal(err)
	}
	st := &wgcfg.DeviceState{PrivateKey: *cfg.PrivateKey, ListenPort: 51820}
	for _, p := range cfg.Peers {
		st.Peers = append(st.Peers, wgcfg.PeerState{PublicKey: p.PublicKey, Endpoint: *p.Endpoint, AllowedIPs: p.AddAllowedIPs})
	}
	var buf bytes.Buffer
	WriteGet(&buf, st)
	b.SetBytes(int64(buf.Len()))
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := WriteGet(&buf, st); err != nil {
			b.Fatal(err)
		}
	}
}
