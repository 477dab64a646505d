package wg

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// maxStaged is how many packets a peer holds while it has no session; more
// are dropped and counted (dropStagedQueueFull).
const maxStaged = 256

// maxStagedTotal is how many packets all peers together hold while they
// have no session (about 12 MiB of full-size packets); more are dropped and
// counted (dropStagedTotalFull). Without it a gateway of 10,000 peers
// without sessions could hold 2.5 million packets.
const maxStagedTotal = 8192

// Peer is one remote WireGuard peer.
type Peer struct {
	dev       *Device
	publicKey noise.PublicKey
	cookies   *noise.CookieGenerator

	// endpoint is nil until configured or learned; it follows the latest
	// authenticated packet, with the local address that packet arrived on
	// (replies leave from it). A configured endpoint has no local address.
	endpoint atomic.Pointer[transport.Endpoint]
	// endpointGen is the device's endpoint generation when the endpoint's
	// remote address last changed (0: never set). Guarded by
	// dev.endpoints; see Device.EndpointChanges.
	endpointGen uint64

	keypairs keypairs

	handshake struct {
		sync.Mutex      // guards every field below
		psk             noise.PresharedKey
		initiator       *noise.InitiatorState // non-nil while our initiation awaits its response
		localIndex      uint32                // the index of that initiation
		lastInitiation  time.Time             // when we last made an initiation
		retryAt         time.Time             // when to retransmit it: RekeyTimeout plus a jitter drawn once per initiation
		lastResponse    time.Time             // when we last answered the peer's initiation
		attemptsStarted time.Time             // first initiation of the current attempt; zero when none
		lastTimestamp   noise.Timestamp       // newest initiation timestamp accepted from the peer
		lastConsumed    time.Time             // when we last accepted an initiation from the peer
	}

	// sendMu serialises sending to this peer so that staged packets and new
	// ones leave in the order they were read (per-flow order).
	sendMu sync.Mutex
	staged [][]byte // guarded by sendMu; packets waiting for a session, with headroom

	persistentKeepalive atomic.Uint32 // seconds; 0 = off
	// access is what the peer may send to (nil: anywhere). Compiled by
	// Set, read per packet by the receive path.
	access atomic.Pointer[acl.List]

	controlPending atomic.Uint32 // bit 1<<controlKind set while such a request for this peer is queued

	// Timer state: Unix nanoseconds, written on the data path once per
	// batch, read by the device's ticker.
	lastSent           atomic.Int64 // any authenticated packet sent
	lastReceived       atomic.Int64 // any authenticated packet received
	lastDataReceived   atomic.Int64 // a non-keepalive data packet received
	awaitingReplySince atomic.Int64 // first data sent since the last receive; 0 when none
	lastHandshake      atomic.Int64 // last completed handshake
	rxBytes, txBytes   atomic.Uint64

	removed atomic.Bool

	// unusableKey: the public key is of low order, so no handshake can
	// complete; packets routed to the peer are dropped and counted.
	unusableKey bool
}

func newPeer(d *Device, pk noise.PublicKey) *Peer {
	return &Peer{dev: d, publicKey: pk, cookies: noise.NewCookieGenerator(pk), unusableKey: pk.IsLowOrder()}
}

// Endpoint returns the peer's current endpoint's remote address, if any.
func (p *Peer) Endpoint() (netip.AddrPort, bool) {
	ep := p.endpoint.Load()
	if ep == nil {
		return netip.AddrPort{}, false
	}
	return ep.Remote, true
}

// sendEndpoint returns the peer's current endpoint with its local address,
// if any.
func (p *Peer) sendEndpoint() (transport.Endpoint, bool) {
	ep := p.endpoint.Load()
	if ep == nil {
		return transport.Endpoint{}, false
	}
	return *ep, true
}

// setEndpoint records the endpoint of the latest authenticated packet, or
// a configured one. It allocates, and takes the device's endpoints lock,
// only when the endpoint changes (roaming).
func (p *Peer) setEndpoint(ep transport.Endpoint) {
	ep.Remote = netip.AddrPortFrom(ep.Remote.Addr().Unmap(), ep.Remote.Port())
	if cur := p.endpoint.Load(); cur != nil && *cur == ep {
		return
	}
	changed := new(transport.Endpoint) // allocated here only, not on every call
	*changed = ep
	d := p.dev
	d.endpoints.Lock()
	if cur := p.endpoint.Swap(changed); cur == nil || cur.Remote != ep.Remote {
		d.endpoints.gen++
		p.endpointGen = d.endpoints.gen
	}
	d.endpoints.Unlock()
}

// setConfiguredEndpoint records an endpoint from configuration: it has no
// local address, so the route picks the source until the peer is heard.
func (p *Peer) setConfiguredEndpoint(remote netip.AddrPort) {
	p.setEndpoint(transport.EndpointFrom(remote))
}

// clearLocal drops the local address of the endpoint ep, which the host no
// longer has, unless the endpoint has changed since.
func (p *Peer) clearLocal(ep transport.Endpoint) {
	cur := p.endpoint.Load()
	if cur == nil || *cur != ep {
		return
	}
	cleared := ep.WithoutLocal()
	p.endpoint.CompareAndSwap(cur, &cleared)
}

// installSession makes kp this peer's session and points its index at it.
// An initiator's session is usable at once; a responder's waits as next
// until the initiator's first packet confirms it (whitepaper §5.4.6).
//
// local and psk are what the handshake was made with. If the peer was
// removed, or the device's key or the peer's preshared key changed, while
// the handshake ran, the session is refused and its index freed: the change
// cleared the sessions (under the keypairs lock, after making the change),
// so checking under that lock sees every change that could have missed kp.
// It reports whether kp was installed.
func (p *Peer) installSession(kp *keypair, local *noise.Local, psk noise.PresharedKey) bool {
	d := p.dev
	kps := &p.keypairs
	kps.Lock()
	defer kps.Unlock()
	p.handshake.Lock()
	stale := p.removed.Load() || d.local.Load() != local || p.handshake.psk != psk
	p.handshake.Unlock()
	if stale {
		d.indices.remove(kp.localIndex)
		d.counters.drop(dropHandshakeStale)
		return false
	}
	d.indices.set(kp.localIndex, indexEntry{peer: p, kp: kp})
	cur := kps.current.Load()
	if kp.initiator {
		if kps.next != nil {
			d.dropSession(kps.previous)
			kps.previous = kps.next
			kps.next = nil
			d.dropSession(cur)
		} else {
			d.dropSession(kps.previous)
			kps.previous = cur
		}
		kps.current.Store(kp)
	} else {
		d.dropSession(kps.next)
		kps.next = kp
		d.dropSession(kps.previous)
		kps.previous = nil
	}
	return true
}

// confirmNext promotes next to current when the initiator's first packet
// arrives on it: only then is the responder's handshake complete (latest
// handshake, handshakes_completed). It reports whether kp was next.
func (p *Peer) confirmNext(kp *keypair, now time.Time) bool {
	kps := &p.keypairs
	kps.Lock()
	defer kps.Unlock()
	if kps.next != kp {
		return false
	}
	p.dev.dropSession(kps.previous)
	kps.previous = kps.current.Load()
	kps.current.Store(kp)
	kps.next = nil
	p.lastHandshake.Store(now.UnixNano())
	p.dev.counters.handshakesCompleted.Add(1)
	return true
}

// wipeSessionsOlderThan forgets every session if the newest of them was
// made before cutoff (no handshake renewed them for that long). It keeps
// lastHandshake, which wg show reports, and a handshake in flight.
func (p *Peer) wipeSessionsOlderThan(cutoff time.Time) bool {
	d := p.dev
	kps := &p.keypairs
	kps.Lock()
	defer kps.Unlock()
	cur := kps.current.Load()
	var newest time.Time
	found := false
	for _, kp := range []*keypair{kps.previous, cur, kps.next} {
		if kp != nil {
			found = true
			if kp.created.After(newest) {
				newest = kp.created
			}
		}
	}
	if !found || !newest.Before(cutoff) {
		return false
	}
	d.dropSession(kps.previous)
	d.dropSession(cur)
	d.dropSession(kps.next)
	kps.previous, kps.next = nil, nil
	kps.current.Store(nil)
	return true
}

// clearSessions forgets every session and the pending handshake.
func (p *Peer) clearSessions() {
	d := p.dev
	kps := &p.keypairs
	kps.Lock()
	d.dropSession(kps.previous)
	d.dropSession(kps.current.Load())
	d.dropSession(kps.next)
	kps.previous, kps.next = nil, nil
	kps.current.Store(nil)
	kps.Unlock()

	p.cancelHandshake()
}

// sendableSession returns the current session if it may still encrypt.
func (p *Peer) sendableSession(now time.Time) *keypair {
	kp := p.keypairs.current.Load()
	if kp == nil || kp.sendCounter.Load() >= rejectAfterMessages || now.Sub(kp.created) >= p.dev.timers.RejectAfterTime {
		return nil
	}
	return kp
}

// cancelHandshake forgets the initiation we sent, if any, and ends the
// current attempt.
func (p *Peer) cancelHandshake() {
	hs := &p.handshake
	hs.Lock()
	if hs.initiator != nil {
		p.dev.indices.removeHandshake(hs.localIndex, p)
		hs.initiator = nil
	}
	hs.attemptsStarted = time.Time{}
	hs.Unlock()
}
