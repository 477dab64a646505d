package ipc

import (
	"sync/atomic"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/tun"
)

// SourceCheck reports whether the front may write the IP packet pkt, which
// an engine handed over, to the TUN: whether its source address is one of
// the peers' allowed IPs. It must not allocate or keep pkt.
type SourceCheck func(pkt []byte) bool

// SourceChecker is implemented by the links whose packets from the engine
// pass through the front (shm, seqpacket). Until SetSourceCheck is called
// with a check, every packet from the engine is refused; the front sets one
// from the configuration it holds, and again whenever it changes. In fd
// mode the engine writes to the TUN itself and nothing can be checked.
type SourceChecker interface {
	SetSourceCheck(SourceCheck)
}

// sourceFilter is the SourceChecker of a relaying link.
type sourceFilter struct {
	check     atomic.Pointer[SourceCheck]
	refused   atomic.Uint64 // a source no peer may use
	malformed atomic.Uint64 // too short to have a source
}

func (f *sourceFilter) SetSourceCheck(c SourceCheck) { f.check.Store(&c) }

// allow checks one frame, whose IP packet starts hdr bytes in.
func (f *sourceFilter) allow(frame []byte, hdr int) bool {
	if len(frame) < hdr+20 {
		f.malformed.Add(1)
		return false
	}
	c := f.check.Load()
	if c == nil || *c == nil || !(*c)(frame[hdr:]) {
		f.refused.Add(1)
		return false
	}
	return true
}

func (f *sourceFilter) stats() []metrics.Counter {
	return []metrics.Counter{
		{Name: "drop_front_source", Value: f.refused.Load()},
		{Name: "drop_front_malformed", Value: f.malformed.Load()},
	}
}

// frameHeader is the size of what precedes the IP packet in a frame of
// format ft.
func frameHeader(ft tun.Format) int {
	if ft.VnetHdr {
		return tun.VirtioNetHdrLen
	}
	return 0
}
