// Package occlient runs the client side of the OpenConnect protocol
// (package openconnect) in a confined engine process, for `ptun connect`:
// the front (package internal/client, in the ptun daemon) owns the TUN
// device, the host's routes, DNS and kill switch, and the TCP and UDP
// sockets to the server, which it dials itself, marked so that they pass
// the tunnel's policy routing and kill switch; the engine (engine.go, `ptun
// --oc-client-engine-of IFNAME`) does TLS, the login exchange, CONNECT,
// CSTP and DTLS and the data path between the packet flow and the session,
// and asks the front for each socket it needs (OpDial). The engine parses
// everything the server sends; it holds no privilege and can reach nothing
// but the one server the front dials for it.
//
// This file is the protocol between the two, over package ctl.
package occlient

import (
	"net/netip"
	"time"

	"github.com/ptun-vpn/ptun/internal/ipc"
)

// Requests between front and engine (ctl.Msg.Op).
const (
	// engine → front
	OpDial  = "oc-dial"  // DialRequest → one connected socket (fd)
	OpUp    = "oc-up"    // notice, UpNotice: a session is up (first, or again after a reconnect)
	OpDown  = "oc-down"  // notice, DownNotice: the session ended; the engine reconnects unless Final
	OpPath  = "oc-path"  // notice, a string body: outgoing packets moved to "dtls" or "cstp"
	OpStats = "oc-stats" // front → engine: → Info
)

// Setup is the front's first request, with the packet flow's files.
type Setup struct {
	Flow      ipc.Setup `json:"flow"`
	FlowFiles int       `json:"flow_files"`
	Verbose   bool      `json:"verbose,omitempty"`

	// Server is the address and port the front dials (the engine asks
	// for it by this address); ServerName the name of the server's URL,
	// sent in SNI and the Host header, and checked in its certificate
	// when there is no Pin.
	Server     netip.AddrPort `json:"server"`
	ServerName string         `json:"server_name"`
	// Pin, if set, is the only check of the server's certificate
	// (pin-sha256:BASE64). Without it the certificate must chain to one
	// of RootsPEM: the front reads the system's roots for the engine,
	// which has no filesystem.
	Pin      string `json:"pin,omitempty"`
	RootsPEM []byte `json:"roots_pem,omitempty"`

	// User and Password log in; the password comes only in the first
	// engine's setup. Cookie, when set, is a session's cookie to connect
	// with instead (an engine started again after one died): no login.
	User     string `json:"user"`
	Password string `json:"password,omitempty"`
	Cookie   string `json:"cookie,omitempty"`

	Hostname    string `json:"hostname,omitempty"` // X-CSTP-Hostname
	DisableDTLS bool   `json:"disable_dtls,omitempty"`
	// MTU is the interface's MTU before the server pushed one.
	MTU int `json:"mtu"`
	// Reconnect bounds the wait between two reconnection attempts
	// (default 30 s); ReconnectMin is the first wait (default 1 s).
	Reconnect    time.Duration `json:"reconnect,omitempty"`
	ReconnectMin time.Duration `json:"reconnect_min,omitempty"`
}

// DialRequest asks the front for a connected socket: TCP to the server's
// address and port, or UDP to the server's address (the DTLS port is the
// server's to choose).
type DialRequest struct {
	Network string         `json:"network"` // "tcp" or "udp"
	Address netip.AddrPort `json:"address"`
}

// Tunnel is what the server pushed, as the front applies it.
type Tunnel struct {
	Address4 netip.Prefix `json:"address4,omitzero"`
	Address6 netip.Prefix `json:"address6,omitzero"`
	// Include lists the routes through the tunnel (none: all traffic);
	// Exclude those kept out of it.
	Include  []netip.Prefix `json:"include,omitempty"`
	Exclude  []netip.Prefix `json:"exclude,omitempty"`
	DNS      []netip.Addr   `json:"dns,omitempty"`
	Search   []string       `json:"search,omitempty"`
	SplitDNS []string       `json:"split_dns,omitempty"`
	MTU      int            `json:"mtu"`
	// DTLSPort is the server's UDP port for DTLS (0: none offered).
	DTLSPort uint16 `json:"dtls_port,omitempty"`
	Banner   string `json:"banner,omitempty"`
}

// UpNotice says a session is up.
type UpNotice struct {
	Tunnel Tunnel `json:"tunnel"`
	// Cookie is the session's: a new engine connects with it.
	Cookie string `json:"cookie"`
	Path   string `json:"path"` // "cstp" until DTLS is up
}

// DownNotice says the session ended, and why.
type DownNotice struct {
	Reason string `json:"reason"`
	// Final: the server refused the cookie (or the login): the engine
	// gives up and nothing is retried.
	Final bool `json:"final,omitempty"`
}

// Info is the engine's answer to OpStats.
type Info struct {
	Up         bool   `json:"up"`
	Path       string `json:"path,omitempty"`
	Reconnects uint64 `json:"reconnects"`
	// Counters of the current session and of the data path.
	Counters map[string]uint64 `json:"counters,omitempty"`
}
