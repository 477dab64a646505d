package wg

import (
	"net/netip"
	"testing"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// TestEndpointChanges: the device reports the peers whose remote endpoint
// changed after the generation asked about, once; a change of the local
// address alone (sticky sources) is no change; a peer without an endpoint
// is never reported.
func TestEndpointChanges(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	d := a.dev
	pb := d.lookupPeer(b.priv.PublicKey())
	var silent noise.PublicKey
	silent[0] = 9
	if err := d.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: silent}}}); err != nil {
		t.Fatal(err)
	}

	all := d.EndpointChanges(0)
	if len(all.Peers) != 1 || all.Peers[0].PublicKey != pb.publicKey || all.Peers[0].Endpoint != b.ep {
		t.Fatalf("every endpoint: %+v, want b's alone at %v", all, b.ep)
	}
	if again := d.EndpointChanges(all.Gen); len(again.Peers) != 0 || again.Gen != all.Gen {
		t.Fatalf("nothing changed, yet: %+v", again)
	}

	// The same remote from another local address: no change to report.
	pb.setEndpoint(transport.Endpoint{Remote: b.ep, Local: netip.MustParseAddr("198.18.0.7")})
	if ch := d.EndpointChanges(all.Gen); len(ch.Peers) != 0 {
		t.Fatalf("a local address change was reported: %+v", ch)
	}

	roamed := netip.MustParseAddrPort("198.18.0.5:40000")
	pb.setEndpoint(transport.EndpointFrom(roamed))
	ch := d.EndpointChanges(all.Gen)
	if len(ch.Peers) != 1 || ch.Peers[0].Endpoint != roamed || ch.Gen <= all.Gen {
		t.Fatalf("after roaming: %+v, want b at %v", ch, roamed)
	}
	if again := d.EndpointChanges(ch.Gen); len(again.Peers) != 0 {
		t.Fatalf("reported twice: %+v", again)
	}
}
