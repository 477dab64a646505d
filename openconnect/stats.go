package openconnect

import (
	"sort"
	"sync/atomic"
)

// Reasons a connection, a session or a packet was refused or ended, as
// counted in Stats.
const (
	ReasonTLSHandshake  = "tls_handshake"   // the TLS handshake failed or timed out
	ReasonSetupTimeout  = "setup_timeout"   // the setup phase took longer than SetupTimeout
	ReasonSetupLimit    = "setup_limit"     // too many connections in their setup phase
	ReasonBadRequest    = "bad_request"     // a malformed HTTP request
	ReasonOversized     = "oversized"       // a line, header block or body over its limit
	ReasonBadAuthBody   = "bad_auth_body"   // a malformed config-auth document or form
	ReasonAuthError     = "auth_error"      // the authenticator could not decide
	ReasonBadConnect    = "bad_connect"     // a malformed CONNECT
	ReasonBadCookie     = "bad_cookie"      // a CONNECT with an unknown or ended cookie
	ReasonBadFrame      = "bad_frame"       // a malformed CSTP frame (ends that connection)
	ReasonBadType       = "bad_type"        // a frame type not negotiated (compressed) or unknown
	ReasonQueueFull     = "queue_full"      // a packet to a client found its send queue full
	ReasonNoPath        = "no_path"         // a packet to a client that had no connection
	ReasonWriteFailed   = "write_failed"    // a write to a client failed (a CSTP connection ends; DTLS is left for CSTP)
	ReasonDeadPeer      = "dead_peer"       // nothing from a client for twice its DPD interval
	ReasonDTLSUnknown   = "dtls_unknown"    // a datagram from a source with no DTLS session
	ReasonDTLSHandshake = "dtls_handshake"  // a DTLS handshake failed
	ReasonDTLSBadRecord = "dtls_bad_record" // a malformed DTLS record, or a frame with no or an unknown type
	ReasonDTLSBadMAC    = "dtls_bad_mac"    // a DTLS record that failed authentication (dropped; the path goes on)
	ReasonDTLSReplay    = "dtls_replay"     // a DTLS record seen before, or too old for the replay window
)

var reasons = [...]string{
	ReasonTLSHandshake, ReasonSetupTimeout, ReasonSetupLimit, ReasonBadRequest, ReasonOversized,
	ReasonBadAuthBody, ReasonAuthError, ReasonBadConnect, ReasonBadCookie, ReasonBadFrame,
	ReasonBadType, ReasonQueueFull, ReasonNoPath, ReasonWriteFailed, ReasonDeadPeer,
	ReasonDTLSUnknown, ReasonDTLSHandshake, ReasonDTLSBadRecord, ReasonDTLSBadMAC, ReasonDTLSReplay,
}

var reasonIndex = func() map[string]int {
	m := make(map[string]int, len(reasons))
	for i, r := range reasons {
		m[r] = i
	}
	return m
}()

// Stats are a server's counters. Per-session figures are on Session.
type Stats struct {
	Logins       atomic.Uint64
	LoginsFailed atomic.Uint64
	byReason     [len(reasons)]atomic.Uint64
}

func (s *Stats) count(reason string) {
	if i, ok := reasonIndex[reason]; ok {
		s.byReason[i].Add(1)
	}
}

// Reasons returns every reason's count, the zeros too.
func (s *Stats) Reasons() map[string]uint64 {
	m := make(map[string]uint64, len(reasons))
	for i, r := range reasons {
		m[r] = s.byReason[i].Load()
	}
	return m
}

// ReasonNames lists the reasons in a stable order.
func ReasonNames() []string {
	r := append([]string(nil), reasons[:]...)
	sort.Strings(r)
	return r
}

// PathCounters count one path's traffic of a session.
type PathCounters struct {
	RxPackets, RxBytes, TxPackets, TxBytes atomic.Uint64
}
