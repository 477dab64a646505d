package wgcfg

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
)

func roundTrip[T any](t *testing.T, v T) (T, []byte) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return out, b
}

// TestJSONRoundTrip: what the front and its engine exchange decodes to
// what was encoded, zero values left out included; a pointer to a zero
// value (remove the key, any port, no keepalive) is kept, not left out.
func TestJSONRoundTrip(t *testing.T) {
	var zeroKey noise.PrivateKey
	var zeroPSK noise.PresharedKey
	var port, keepalive uint16 = 0, 0
	var mark uint32
	ep := netip.MustParseAddrPort("198.18.0.2:51820")
	cfgs := []DeviceConfig{
		{},
		{PrivateKey: &zeroKey, ListenPort: &port, FwMark: &mark, ReplacePeers: true},
		{Peers: []PeerConfig{
			{PublicKey: noise.PublicKey{1}, Remove: true},
			{PublicKey: noise.PublicKey{2}, UpdateOnly: true, PresharedKey: &zeroPSK, Endpoint: &ep,
				PersistentKeepalive: &keepalive, ClearAccess: true, ReplaceAllowedIPs: true,
				AddAllowedIPs:    []netip.Prefix{netip.MustParsePrefix("100.80.0.1/32")},
				RemoveAllowedIPs: []netip.Prefix{netip.MustParsePrefix("2001:db8::/64")}},
			{PublicKey: noise.PublicKey{3}, Access: &AccessRules{Rules: []acl.Rule{}}},
			{PublicKey: noise.PublicKey{4}, Access: &AccessRules{Rules: []acl.Rule{{Dst: netip.MustParsePrefix("198.18.2.0/24"), Proto: acl.ProtoTCP, PortLo: 22, PortHi: 22}}}},
		}},
	}
	for _, c := range cfgs {
		got, b := roundTrip(t, c)
		if !reflect.DeepEqual(got, c) {
			t.Errorf("%s\ndecodes to %+v\nwant       %+v", b, got, c)
		}
	}
	st := DeviceState{PrivateKey: noise.PrivateKey{9}, ListenPort: 51820, FwMark: 3, Peers: []PeerState{
		{PublicKey: noise.PublicKey{1}},
		{PublicKey: noise.PublicKey{2}, PresharedKey: noise.PresharedKey{5}, Endpoint: ep,
			LastHandshake: time.Unix(1700000000, 5).UTC(), TxBytes: 1, RxBytes: 2, PersistentKeepalive: 25,
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.80.0.1/32")}, Access: &AccessRules{Rules: []acl.Rule{}}},
	}}
	got, b := roundTrip(t, st)
	if !reflect.DeepEqual(got, st) {
		t.Errorf("%s\ndecodes to %+v\nwant       %+v", b, got, st)
	}
	if got, _ := roundTrip(t, DeviceState{}); !reflect.DeepEqual(got, DeviceState{}) {
		t.Errorf("the empty state decodes to %+v", got)
	}
}

// TestJSONIdlePeerIsSmall: an idle peer, as a gateway sets it and as a get
// answers it, takes few bytes (every field at its zero value left out).
func TestJSONIdlePeerIsSmall(t *testing.T) {
	pfx := []netip.Prefix{netip.MustParsePrefix("100.80.0.1/32")}
	_, set := roundTrip(t, PeerConfig{PublicKey: noise.PublicKey{1}, ReplaceAllowedIPs: true, AddAllowedIPs: pfx})
	_, get := roundTrip(t, PeerState{PublicKey: noise.PublicKey{1}, AllowedIPs: pfx})
	if len(set) > 120 || len(get) > 100 {
		t.Errorf("an idle peer takes %d bytes to set (%s) and %d to get (%s)", len(set), set, len(get), get)
	}
}
