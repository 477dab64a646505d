// Package wgcfg is the configuration and state model of a WireGuard
// device: what a set request changes (DeviceConfig, PeerConfig), what a
// get request answers (DeviceState, PeerState), and the errno-carrying
// Error both answer with. It is a leaf: the device (package wg), the UAPI
// text codec (package uapi), ptun's front and its engine all speak it, and
// it knows none of them.
package wgcfg

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// DeviceConfig is a set of configuration changes (a UAPI set=1 request, a
// control-channel set, a registry update): fully validated by whoever
// built it. Pointer fields are nil when the request did not mention them.
//
// In JSON (the front and its engine exchange these types), fields at their
// zero value are left out, and decode to it: an idle peer takes a third of
// the bytes, and a set or get of thousands of peers a third of the
// garbage. A pointer is left out only when nil (omitempty, never
// omitzero): a pointer to a zero key or port is a change.
type DeviceConfig struct {
	// PrivateKey replaces the device's private key; an all-zero key
	// removes it.
	PrivateKey *noise.PrivateKey `json:",omitempty"`
	// ListenPort rebinds the UDP port; 0 picks any free port.
	ListenPort *uint16 `json:",omitempty"`
	// FwMark sets SO_MARK on the device's sockets; 0 clears it.
	FwMark *uint32 `json:",omitempty"`
	// ReplacePeers removes every existing peer before Peers are applied.
	ReplacePeers bool `json:",omitempty"`
	// Peers are the peer changes in request order. The same public key may
	// appear more than once; the entries are then applied one after the
	// other.
	Peers []PeerConfig `json:",omitempty"`
}

// PeerConfig is the part of a set=1 request about one peer.
//
// A handler applies it as: Remove (which ignores every other field), else
// create the peer unless it exists or UpdateOnly is set, then PresharedKey,
// Endpoint, PersistentKeepalive, and the allowed IPs in the order
// ReplaceAllowedIPs, RemoveAllowedIPs, AddAllowedIPs.
type PeerConfig struct {
	PublicKey noise.PublicKey
	// Remove removes the peer if it exists.
	Remove bool `json:",omitempty"`
	// UpdateOnly changes the peer only if it exists already; it is never
	// created.
	UpdateOnly bool `json:",omitempty"`
	// PresharedKey replaces the preshared key; all-zero means none.
	PresharedKey *noise.PresharedKey `json:",omitempty"`
	// Endpoint is the peer's new address.
	Endpoint *netip.AddrPort `json:",omitempty"`
	// PersistentKeepalive is the keepalive interval in seconds; 0 is off.
	PersistentKeepalive *uint16 `json:",omitempty"`
	// Access, if not nil, replaces the rules of what the peer may send to
	// (package wg/acl): a packet it sends into the tunnel that no rule
	// allows is dropped and counted (drop_acl). An empty list allows
	// nothing. ClearAccess removes the rules: the peer may send anywhere
	// (its allowed IPs still bound its sources). Neither can be said in the
	// UAPI's text; ptun's gateway sets them.
	Access      *AccessRules `json:",omitempty"`
	ClearAccess bool         `json:",omitempty"`
	// ReplaceAllowedIPs removes all the peer's allowed IPs first.
	ReplaceAllowedIPs bool `json:",omitempty"`
	// AddAllowedIPs are prefixes the peer takes (from any other owner);
	// RemoveAllowedIPs are prefixes it gives up if it owns them. ParseSet
	// returns them masked, without duplicates and disjoint: when a request
	// names one prefix more than once, its last line wins, and a
	// replace_allowed_ips line cancels the allowed_ip lines before it.
	AddAllowedIPs, RemoveAllowedIPs []netip.Prefix `json:",omitempty"`
}

// DeviceState is what a get=1 request answers.
type DeviceState struct {
	PrivateKey noise.PrivateKey `json:",omitzero"` // all-zero when the device has none
	ListenPort uint16           `json:",omitempty"`
	FwMark     uint32           `json:",omitempty"`
	Peers      []PeerState      `json:",omitempty"`
}

// PeerState is one peer in a DeviceState.
type PeerState struct {
	PublicKey           noise.PublicKey
	PresharedKey        noise.PresharedKey `json:",omitzero"` // all-zero when none
	Endpoint            netip.AddrPort     `json:",omitzero"` // invalid (zero) when unknown
	LastHandshake       time.Time          `json:",omitzero"` // zero when there has been none
	TxBytes, RxBytes    uint64             `json:",omitempty"`
	PersistentKeepalive uint16             `json:",omitempty"` // seconds; 0 is off
	AllowedIPs          []netip.Prefix     `json:",omitempty"`
	Access              *AccessRules       `json:",omitempty"` // nil: no rules, the peer may send anywhere
}

// EndpointChanges is what a device reports of its peers' endpoints: the
// peers whose remote endpoint changed after the generation asked about,
// and the generation to ask about next time.
type EndpointChanges struct {
	Gen   uint64         `json:"gen"`
	Peers []PeerEndpoint `json:"peers,omitempty"`
}

// PeerEndpoint is one peer's current remote endpoint.
type PeerEndpoint struct {
	PublicKey noise.PublicKey `json:"public_key"`
	Endpoint  netip.AddrPort  `json:"endpoint"`
}

// AccessRules are a peer's access rules.
type AccessRules struct {
	Rules []acl.Rule `json:"rules"`
}

// Error is a failed request with the errno that the answer's errno= line
// carries. Handlers return it to choose the errno; any other error is
// answered as EIO (or as the syscall.Errno found in its chain).
type Error struct {
	Errno syscall.Errno
	Err   error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "wgcfg: " + e.Errno.Error()
	}
	return e.Err.Error() + " (" + e.Errno.Error() + ")"
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is e's Errno, so errors.Is(err, syscall.EINVAL)
// works.
func (e *Error) Is(target error) bool {
	errno, ok := target.(syscall.Errno)
	return ok && errno == e.Errno
}

// Errno returns the errno err is answered with: an *Error's, else the first
// syscall.Errno in its chain, else def.
func Errno(err error, def syscall.Errno) syscall.Errno {
	var ue *Error
	if errors.As(err, &ue) && ue.Errno != 0 {
		return ue.Errno
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && errno != 0 {
		return errno
	}
	return def
}

// CheckInterfaceName accepts the names Linux accepts for a network
// interface: 1 to 15 bytes, not "." or "..", without '/', ':', white space
// or NUL. Every part of ptun that takes an interface name checks it here.
func CheckInterfaceName(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n\r\v\f\x00") {
		return fmt.Errorf("%q is not a valid interface name (1-15 characters, no '/', ':' or white space)", name)
	}
	return nil
}
