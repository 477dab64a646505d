package wg

import (
	"sync/atomic"

	"github.com/ptun-vpn/ptun/metrics"
)

// dropReason says why the device dropped a packet. Every drop inside the
// device is counted under exactly one reason; none is silent.
type dropReason int

const (
	dropNoRoute              dropReason = iota // TUN packet whose destination no peer's allowed IPs cover
	dropNoEndpoint                             // peer has no known endpoint yet
	dropMalformed                              // datagram too short or with a bad header
	dropUnknownType                            // message type not 1-4
	dropUnknownIndex                           // transport data for a session we don't have
	dropExpiredSession                         // session past its time or message limit
	dropBadMAC                                 // transport data failed authentication
	dropReplay                                 // counter seen before or left of the window
	dropBadInnerPacket                         // decrypted payload is not a valid IP packet
	dropSourceNotAllowed                       // inner source not in the sending peer's allowed IPs
	dropStagedQueueFull                        // no session yet and the per-peer wait queue was full
	dropHandshakeGiveUp                        // staged packets discarded when a handshake attempt gave up
	dropHandshakeQueueFull                     // handshake messages arriving faster than they are processed
	dropHandshakeMAC1                          // handshake message with a bad mac1
	dropHandshakeInvalid                       // handshake message that failed to decrypt/authenticate
	dropHandshakeUnknownPeer                   // initiation from a static key that is not a peer
	dropHandshakeReplay                        // initiation timestamp not newer than the last one
	dropHandshakeFlood                         // initiations from one peer closer than 20 ms
	dropCookieInvalid                          // cookie reply that did not authenticate
	dropTUNWrite                               // the kernel rejected a decrypted packet (see tun counters)
	dropControlSendFull                        // a control message (handshake, cookie reply, keepalive) found the control queue full
	dropStagedTotalFull                        // no session yet and all peers together hold maxStagedTotal packets
	dropPeerKeyUnusable                        // packet routed to a peer whose public key is of low order
	dropHandshakeInternal                      // a handshake step failed on our side (crypto/rand, AEAD setup)
	dropHandshakeStale                         // handshake finished after its peer was removed or a key changed
	dropACL                                    // a packet from a peer to a destination its access rules do not allow
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"drop_no_route", "drop_no_endpoint", "drop_malformed", "drop_unknown_type",
	"drop_unknown_index", "drop_expired_session", "drop_bad_mac", "drop_replay",
	"drop_bad_inner_packet", "drop_source_not_allowed", "drop_staged_queue_full",
	"drop_handshake_give_up", "drop_handshake_queue_full", "drop_handshake_mac1",
	"drop_handshake_invalid", "drop_handshake_unknown_peer", "drop_handshake_replay",
	"drop_handshake_flood", "drop_cookie_invalid", "drop_tun_write", "drop_control_send_full",
	"drop_staged_total_full", "drop_peer_key_unusable", "drop_handshake_internal", "drop_handshake_stale",
	"drop_acl",
}

// counters are the device's event counts. Each is one atomic add on the
// data path.
type counters struct {
	drops [numDropReasons]atomic.Uint64

	handshakesInitiated  atomic.Uint64
	handshakesCompleted  atomic.Uint64 // as initiator or responder
	cookieRepliesSent    atomic.Uint64
	keepalivesSent       atomic.Uint64
	keepalivesReceived   atomic.Uint64
	tunReadBatches       atomic.Uint64
	tunReadPackets       atomic.Uint64
	transportRecvBatches atomic.Uint64
	transportRecvPackets atomic.Uint64

	rebindRestoreFailures atomic.Uint64 // a failed listen-port change whose restore failed too: no sockets
}

func (c *counters) drop(r dropReason) { c.drops[r].Add(1) }

func (c *counters) dropN(r dropReason, n int) { c.drops[r].Add(uint64(n)) }

func (c *counters) snapshot() []metrics.Counter {
	out := make([]metrics.Counter, 0, numDropReasons+9)
	for i := range c.drops {
		out = append(out, metrics.Counter{Name: dropNames[i], Value: c.drops[i].Load()})
	}
	return append(out,
		metrics.Counter{Name: "handshakes_initiated", Value: c.handshakesInitiated.Load()},
		metrics.Counter{Name: "handshakes_completed", Value: c.handshakesCompleted.Load()},
		metrics.Counter{Name: "cookie_replies_sent", Value: c.cookieRepliesSent.Load()},
		metrics.Counter{Name: "keepalives_sent", Value: c.keepalivesSent.Load()},
		metrics.Counter{Name: "keepalives_received", Value: c.keepalivesReceived.Load()},
		metrics.Counter{Name: "tun_read_batches", Value: c.tunReadBatches.Load()},
		metrics.Counter{Name: "tun_read_packets", Value: c.tunReadPackets.Load()},
		metrics.Counter{Name: "transport_recv_batches", Value: c.transportRecvBatches.Load()},
		metrics.Counter{Name: "transport_recv_packets", Value: c.transportRecvPackets.Load()},
		metrics.Counter{Name: "rebind_restore_failures", Value: c.rebindRestoreFailures.Load()},
	)
}
