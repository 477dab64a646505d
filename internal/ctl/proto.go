package ctl

import (
	"encoding/json"
	"fmt"
	"syscall"

	"github.com/ptun-vpn/ptun/internal/ipc"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// The front/engine protocol: the operations either side may ask of the
// other, and their bodies. Both sides import it from here; neither imports
// the other.
//
// The front asks: setup (a Setup body and the packet flow's fds),
// get (answers a Config body), set (a wgcfg.DeviceConfig body), endpoints
// (an EndpointsRequest; answers wgcfg.EndpointChanges), stats (answers
// []metrics.Counter), ping (the watchdog's heartbeat) and mtu (a notice
// with an int32 body: the interface's MTU changed).
// The engine asks: socket (a SocketRequest; answers one fd), setmark (a
// uint32 body and one fd), mtu (answers an int) and log (a notice whose Text
// is one line).
const (
	OpSetup     = "setup"
	OpGet       = "get"
	OpSet       = "set"
	OpEndpoints = "endpoints"
	OpStats     = "stats"
	OpPing      = "ping"
	OpSocket    = "socket"
	OpSetMark   = "setmark"
	OpMTU       = "mtu"
	OpLog       = "log"
	// OpHold (front → engine, a bool body): stop reading the packet
	// flow (true) or read it again (false); see tun.Hold.
	OpHold = "hold"
)

// Setup is the body of a setup request: the packet flow whose descriptors
// come with it, and the listen port to bind first (the configured one, so
// that the engine asks for no socket the front would refuse).
type Setup struct {
	Flow       ipc.Setup `json:"flow"`
	ListenPort uint16    `json:"listen_port"`
	// Verbose asks the engine for its detailed log lines too: the front
	// decides, so the engine reads nothing from its environment for it.
	Verbose bool `json:"verbose,omitempty"`
	// Held: start with the packet flow held (OpHold true), as the engine
	// this one replaces had it.
	Held bool `json:"held,omitempty"`
}

// EndpointsRequest is the body of an endpoints request: the generation of
// the last answer (0 for the first), so that only the peers whose endpoint
// changed since come back.
type EndpointsRequest struct {
	Since uint64 `json:"since"`
}

// SocketRequest is the body of a socket request: the address family and
// port of one UDP socket. The front chooses everything else (buffer sizes,
// fwmark) from the configuration it holds.
type SocketRequest struct {
	V6   bool   `json:"v6"`
	Port uint16 `json:"port"`
}

// Body marshals v as a request's or reply's body. It panics on a value
// that cannot be marshalled, which is a bug at the call site (every body is
// one of the plain types above).
func Body(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("ctl: body %T: %v", v, err))
	}
	return b
}

// Decode unmarshals a body into v; malformed JSON is EINVAL.
func Decode(body json.RawMessage, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("ctl: malformed body: %v: %w", err, syscall.EINVAL)
	}
	return nil
}

// Counters decodes a stats answer.
func Counters(rep *Msg) ([]metrics.Counter, error) {
	var cs []metrics.Counter
	if err := Decode(rep.Body, &cs); err != nil {
		return nil, err
	}
	return cs, nil
}

// Endpoints decodes an endpoints answer.
func Endpoints(rep *Msg) (*wgcfg.EndpointChanges, error) {
	ch := &wgcfg.EndpointChanges{}
	if err := Decode(rep.Body, ch); err != nil {
		return nil, err
	}
	return ch, nil
}

// State decodes a get answer.
func State(rep *Msg) (*wgcfg.DeviceState, error) {
	st := &wgcfg.DeviceState{}
	if err := Decode(rep.Body, st); err != nil {
		return nil, err
	}
	return st, nil
}
