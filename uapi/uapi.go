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
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// ErrTooLarge is wrapped in the *wgcfg.Error a parser returns when a request or
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
	// Get returns the device's state. The wgcfg.DeviceState belongs to the
	// caller.
	Get() (*wgcfg.DeviceState, error)
	// Set applies cfg all or nothing: if it returns an error, the device
	// is exactly as before. cfg is fully validated by ParseSet. Set must
	// not keep cfg after returning.
	Set(cfg *wgcfg.DeviceConfig) error
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
