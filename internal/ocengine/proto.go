// Package ocengine runs the OpenConnect protocol (package openconnect) in
// a confined engine process, as package engine runs WireGuard: the front
// (front.go, in the gateway's process) owns the TUN device, the TCP and
// UDP sockets of the TLS port and every decision about who may log in;
// the engine (engine.go) does TLS, HTTP, the XML login exchange, CSTP,
// DTLS and the data path, and asks the front for a verdict on each login.
// The engine never sees how passwords are stored, and holds no session
// the front could not give again: a restarted engine resumes every
// client that comes back with its cookie (the front keeps the cookies).
//
// This file is the protocol between the two, over package ctl.
package ocengine

import (
	"net/netip"
	"time"

	"github.com/ptun-vpn/ptun/internal/ipc"
	"github.com/ptun-vpn/ptun/wg/acl"
)

// Requests between front and engine (ctl.Msg.Op).
const (
	// engine → front
	OpLogin  = "oc-login"  // LoginRequest → Grant; EACCES refused, EAGAIN rate-limited
	OpResume = "oc-resume" // ResumeRequest → Grant; ENOENT unknown cookie
	OpEnded  = "oc-ended"  // notice, EndedNotice: a session ended for good

	// front → engine
	OpRevoke   = "oc-revoke"   // RevokeRequest: end a device's sessions
	OpRules    = "oc-rules"    // RulesRequest: a device's rules changed
	OpSessions = "oc-sessions" // → []SessionInfo
)

// Setup is the front's first request, with the flow's files followed by
// the TLS listener and, if DTLS is on, the UDP socket.
type Setup struct {
	Flow      ipc.Setup `json:"flow"`
	FlowFiles int       `json:"flow_files"`
	DTLS      bool      `json:"dtls"`
	Verbose   bool      `json:"verbose,omitempty"`

	Name    string `json:"name"` // the server's name for clients
	CertPEM []byte `json:"cert_pem"`
	KeyPEM  []byte `json:"key_pem"`

	MTU         int           `json:"mtu"`
	DPD         time.Duration `json:"dpd"`
	DTLSDPD     time.Duration `json:"dtls_dpd"`
	Keepalive   time.Duration `json:"keepalive"`
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
	CookieTTL   time.Duration `json:"cookie_ttl"`
}

// LoginRequest is a login the engine asks the front to decide.
type LoginRequest struct {
	Login    string `json:"login"`
	Password string `json:"password"`
	From     string `json:"from"` // the client's address and port
}

// ResumeRequest asks for the grant of a cookie the engine does not know.
type ResumeRequest struct {
	Cookie string `json:"cookie"`
}

// Grant is the front's answer to a login or a resume: who the session
// is, what it gets pushed and what it may reach.
type Grant struct {
	Cookie   string `json:"cookie"`
	User     string `json:"user"`
	Device   string `json:"device"` // user/name
	DeviceID int64  `json:"device_id"`

	Addresses []netip.Prefix `json:"addresses"` // each with its pool's length
	Routes    []netip.Prefix `json:"routes,omitempty"`
	DNS       []netip.Addr   `json:"dns,omitempty"`
	Search    []string       `json:"search,omitempty"`
	Banner    string         `json:"banner,omitempty"`

	Access Access `json:"access"`
}

// Access is what a device may reach through the tunnel.
type Access struct {
	All   bool       `json:"all,omitempty"`
	Rules []acl.Rule `json:"rules,omitempty"`
}

// EndedNotice tells the front a session is over (logged out, revoked or
// expired): its cookie will not be resumed.
type EndedNotice struct {
	Cookie   string `json:"cookie_sha256"` // hex
	DeviceID int64  `json:"device_id"`
	Reason   string `json:"reason"`
}

// RevokeRequest ends the sessions of a device.
type RevokeRequest struct {
	DeviceID int64 `json:"device_id"`
}

// RulesRequest gives a device's sessions new access rules.
type RulesRequest struct {
	DeviceID int64  `json:"device_id"`
	Access   Access `json:"access"`
}

// SessionInfo is one live session, for listings and metrics.
type SessionInfo struct {
	Cookie    string       `json:"cookie_sha256"` // hex
	User      string       `json:"user"`
	Device    string       `json:"device"`
	DeviceID  int64        `json:"device_id"`
	Addresses []netip.Addr `json:"addresses"`
	Path      string       `json:"path"` // "dtls", "cstp" or "" while the client is away
	Started   time.Time    `json:"started"`
	LastRx    time.Time    `json:"last_rx"`

	RxBytes     uint64 `json:"rx_bytes,omitzero"`
	TxBytes     uint64 `json:"tx_bytes,omitzero"`
	RxPackets   uint64 `json:"rx_packets,omitzero"`
	TxPackets   uint64 `json:"tx_packets,omitzero"`
	DTLSRxBytes uint64 `json:"dtls_rx_bytes,omitzero"`
	DTLSTxBytes uint64 `json:"dtls_tx_bytes,omitzero"`
	Drops       uint64 `json:"drops,omitzero"`
	DropACL     uint64 `json:"drop_acl,omitzero"`
}
