// Package uapi speaks WireGuard's cross-platform userspace API
// (https://www.wireguard.com/xplatform/), the protocol the wg tool and
// wireguard-go use over /var/run/wireguard/IFNAME.sock: a `get=1` request
// answers the device's state as key=value lines, a `set=1` request carries
// key=value lines that change it, and every answer ends with an `errno=N`
// line and a blank line.
//
// The package holds the parser and writer for both directions, a server
// (Listen, Serve) that hands parsed requests to a Handler, and a client (Get,
// Set, SetRaw, Stats). It knows nothing about the device itself.
package uapi

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// DeviceConfig is one parsed set=1 request: the changes it asks for, fully
// validated. Pointer fields are nil when the request did not mention them.
type DeviceConfig struct {
	// PrivateKey replaces the device's private key; an all-zero key
	// removes it.
	PrivateKey *noise.PrivateKey
	// ListenPort rebinds the UDP port; 0 picks any free port.
	ListenPort *uint16
	// FwMark sets SO_MARK on the device's sockets; 0 clears it.
	FwMark *uint32
	// ReplacePeers removes every existing peer before Peers are applied.
	ReplacePeers bool
	// Peers are the peer changes in request order. The same public key may
	// appear more than once; the entries are then applied one after the
	// other.
	Peers []PeerConfig
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
	Remove bool
	// UpdateOnly changes the peer only if it exists already; it is never
	// created.
	UpdateOnly bool
	// PresharedKey replaces the preshared key; all-zero means none.
	PresharedKey *noise.PresharedKey
	// Endpoint is the peer's new address.
	Endpoint *netip.AddrPort
	// PersistentKeepalive is the keepalive interval in seconds; 0 is off.
	PersistentKeepalive *uint16
	// ReplaceAllowedIPs removes all the peer's allowed IPs first.
	ReplaceAllowedIPs bool
	// AddAllowedIPs are prefixes the peer takes (from any other owner);
	// RemoveAllowedIPs are prefixes it gives up if it owns them. ParseSet
	// returns them masked, without duplicates and disjoint: when a request
	// names one prefix more than once, its last line wins, and a
	// replace_allowed_ips line cancels the allowed_ip lines before it.
	AddAllowedIPs, RemoveAllowedIPs []netip.Prefix
}

// DeviceState is what a get=1 request answers.
type DeviceState struct {
	PrivateKey noise.PrivateKey // all-zero when the device has none
	ListenPort uint16
	FwMark     uint32
	Peers      []PeerState
}

// PeerState is one peer in a DeviceState.
type PeerState struct {
	PublicKey           noise.PublicKey
	PresharedKey        noise.PresharedKey // all-zero when none
	Endpoint            netip.AddrPort     // invalid (zero) when unknown
	LastHandshake       time.Time          // zero when there has been none
	TxBytes, RxBytes    uint64
	PersistentKeepalive uint16 // seconds; 0 is off
	AllowedIPs          []netip.Prefix
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
		return "uapi: " + e.Errno.Error()
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

// ErrTooLarge is wrapped in the *Error a parser returns when a request or
// answer exceeds MaxRequestSize (or the answer limit). The rest of the
// message was not read, so the stream cannot be resynchronised: answer if
// possible, then close the connection.
var ErrTooLarge = errors.New("uapi: message too large")

// MaxRequestSize bounds one request (the set=1 line through the blank line)
// so that a client cannot make the server hold unbounded memory. A set=1
// naming tens of thousands of peers still fits.
const MaxRequestSize = 8 << 20

// requestLimit is the limit in force: MaxRequestSize, lowered by tests.
var requestLimit = MaxRequestSize

// maxAnswerSize bounds one get=1 or stats=1 answer read by the client.
const maxAnswerSize = 256 << 20

// maxLineLen bounds one line. The longest line the protocol defines (an
// endpoint with an IPv6 zone) is under 100 bytes.
const maxLineLen = 1024

// Handler is implemented by the WireGuard device. Serve calls it from one
// goroutine at a time.
type Handler interface {
	// Get returns the device's state. The DeviceState belongs to the
	// caller.
	Get() (*DeviceState, error)
	// Set applies cfg all or nothing: if it returns an error, the device
	// is exactly as before. cfg is fully validated by ParseSet. Set must
	// not keep cfg after returning.
	Set(cfg *DeviceConfig) error
}

// StatsHandler is an optional extension of Handler: a `stats=1` request
// (ptun's own; the wg tool never sends it) answers one name=value line per
// counter, then errno=0. A Handler without it answers stats=1 with
// EOPNOTSUPP.
type StatsHandler interface {
	Stats() []metrics.Counter
}

// SocketDir is the directory holding the UAPI sockets, where the wg tool
// looks for them. Tests point it elsewhere; change it only before any
// Listen or SocketPath call.
var SocketDir = "/var/run/wireguard"

// SocketPath returns the UAPI socket path of interface ifname.
func SocketPath(ifname string) string {
	return filepath.Join(SocketDir, ifname+".sock")
}

// errnoOf returns the errno an error is answered with.
func errnoOf(err error) syscall.Errno {
	var ue *Error
	if errors.As(err, &ue) && ue.Errno != 0 {
		return ue.Errno
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && errno != 0 {
		return errno
	}
	return syscall.EIO
}

// appendErrno appends the errno= line and the blank line that end every
// answer.
//
// The sign differs by request because the wg tool reads them differently:
// after a set it takes the number as a negative return code (as the kernel
// and wireguard-go answer, errno=-22 for EINVAL), while after a get it
// accepts only digits and negates them itself.
func appendErrno(b []byte, errno syscall.Errno, negative bool) []byte {
	b = append(b, "errno="...)
	if negative && errno != 0 {
		b = append(b, '-')
	}
	b = strconv.AppendUint(b, uint64(errno), 10)
	return append(b, "\n\n"...)
}
