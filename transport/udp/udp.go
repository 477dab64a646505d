// Package udp is ptun's batched UDP transport: one IPv4 and one IPv6 socket
// on the same port, read with recvmmsg and written with sendmmsg, with UDP
// GRO on receive and UDP GSO on send when the kernel supports them.
//
// Sources are sticky: each received datagram reports the local address it
// was sent to (IP_PKTINFO, IPV6_RECVPKTINFO), and a send to that
// transport.Endpoint leaves from the same address (an IP_PKTINFO or
// IPV6_PKTINFO control message), so that on a host with several addresses
// a peer hears replies from the address it wrote to.
//
// Every offload has a kill switch (Options, or the PTUN_DISABLE_UDP_GSO,
// PTUN_DISABLE_UDP_GRO and PTUN_DISABLE_STICKY environment variables), and
// GSO turns itself off for good when the kernel rejects a segmented send. Nothing is dropped
// silently: a full send buffer blocks the sender (bounded), and datagrams
// the kernel finally refuses are counted by reason in Stats.
package udp

import (
	"errors"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
)

// BatchSize is the most datagrams one ReceiveFunc call returns, and the
// batch Send handles in one sendmmsg.
const BatchSize = 64

// DefaultSocketBuffer is the SO_RCVBUF/SO_SNDBUF size asked for when
// Options.SocketBuffer is 0: enough for a bulk flow's bandwidth-delay
// product, so bursts queue in the kernel instead of being dropped there.
const DefaultSocketBuffer = 7 << 20

// ErrNoSocket is returned by Send when the transport has no socket for the
// destination's address family (for example an IPv6 endpoint on a host
// without IPv6). The datagrams are counted as dropped; the caller should use
// another endpoint.
var ErrNoSocket = errors.New("udp: no socket for the destination's address family")

// Options configure a Transport. The zero value is the fast default.
type Options struct {
	// DisableGSO turns UDP generic segmentation offload off for sends.
	DisableGSO bool
	// DisableGRO turns UDP generic receive offload off for receives.
	DisableGRO bool
	// DisableSticky turns sticky sources off: received endpoints carry no
	// local address and sends ignore the one they are given, so the
	// route picks every source.
	DisableSticky bool
	// DisableAQM turns off the CoDel management of the receive queue
	// (see aqm.go), leaving the socket buffer to fill and drop its tail.
	DisableAQM bool
	// AQMTarget and AQMInterval are CoDel's parameters; 0 means
	// DefaultAQMTarget and DefaultAQMInterval.
	AQMTarget, AQMInterval time.Duration
	// SocketBuffer is the receive and send buffer size in bytes; 0 means
	// DefaultSocketBuffer and a negative value keeps the kernel's default.
	SocketBuffer int
	// Logf receives rare events (offload fallbacks, undersized buffers);
	// nil is silent. It is never called per packet.
	Logf func(format string, args ...any)
	// Sockets, if not nil, opens the sockets and sets their mark: the
	// privileged steps, which an engine without privileges asks its front
	// to take. nil takes them in this process.
	Sockets SocketOpener
}

// SocketOpener takes the privileged steps of a Transport's sockets for a
// process that holds no privilege.
type SocketOpener interface {
	// Open returns a non-blocking UDP socket of one family (v6: IPv6
	// only), bound to port (0: any) on the wildcard address, with SO_MARK
	// mark and send and receive buffers of bufSize bytes (< 0: the
	// kernel's default), set beyond the sysctl limits where needed. Errors
	// keep their syscall.Errno (EADDRINUSE, EAFNOSUPPORT) in the chain.
	Open(v6 bool, port uint16, mark uint32, bufSize int) (*os.File, error)
	// SetMark sets SO_MARK on the socket f, which the caller keeps.
	SetMark(f *os.File, mark uint32) error
}

// OptionsFromEnv returns o with the kill switches from the environment
// applied: PTUN_DISABLE_UDP_GSO=1 sets DisableGSO, PTUN_DISABLE_UDP_GRO=1
// DisableGRO, PTUN_DISABLE_STICKY=1 DisableSticky and PTUN_DISABLE_AQM=1
// DisableAQM; PTUN_AQM_TARGET and
// PTUN_AQM_INTERVAL (Go durations such as 2ms) set CoDel's parameters.
// Other values leave o's setting alone.
func OptionsFromEnv(o Options) Options {
	if envOn("PTUN_DISABLE_UDP_GSO") {
		o.DisableGSO = true
	}
	if envOn("PTUN_DISABLE_UDP_GRO") {
		o.DisableGRO = true
	}
	if envOn("PTUN_DISABLE_STICKY") {
		o.DisableSticky = true
	}
	if envOn("PTUN_DISABLE_AQM") {
		o.DisableAQM = true
	}
	if d, err := time.ParseDuration(os.Getenv("PTUN_AQM_TARGET")); err == nil && d > 0 {
		o.AQMTarget = d
	}
	if d, err := time.ParseDuration(os.Getenv("PTUN_AQM_INTERVAL")); err == nil && d > 0 {
		o.AQMInterval = d
	}
	return o
}

func (o Options) aqm() (target, interval time.Duration) {
	target, interval = o.AQMTarget, o.AQMInterval
	if target <= 0 {
		target = DefaultAQMTarget
	}
	if interval <= 0 {
		interval = DefaultAQMInterval
	}
	return target, interval
}

func envOn(name string) bool {
	v := strings.TrimSpace(os.Getenv(name))
	return v == "1" || strings.EqualFold(v, "true")
}

func (o Options) socketBuffer() int {
	if o.SocketBuffer == 0 {
		return DefaultSocketBuffer
	}
	return o.SocketBuffer
}

func (o Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// maxErrno bounds the per-errno drop counters; Linux errnos are all below it.
const maxErrno = 160

// counters are a Transport's event counts; each is one atomic add per batch
// (or per drop) on the data path. They survive Close and reopen.
type counters struct {
	rxDatagrams atomic.Uint64
	rxSyscalls  atomic.Uint64
	rxGRO       atomic.Uint64 // received messages that held more than one datagram
	txDatagrams atomic.Uint64
	txSyscalls  atomic.Uint64
	txGSO       atomic.Uint64 // sent messages that held more than one datagram
	txWaits     atomic.Uint64 // times a send waited for room in the send buffer

	gsoDisabled atomic.Uint64 // GSO turned off after the kernel rejected a segmented send
	groDisabled atomic.Uint64 // sockets on which GRO was wanted but could not be enabled

	stickyUnavailable   atomic.Uint64 // sockets on which packet info could not be enabled
	stickySourceCleared atomic.Uint64 // sends whose local source was gone, sent from the route's source

	dropRecvTruncated atomic.Uint64
	dropAQM           atomic.Uint64 // datagrams dropped by the receive queue's CoDel
	aqmUnavailable    atomic.Uint64 // sockets without receive timestamps, so without AQM
	dropSendClosed    atomic.Uint64
	dropSendNoSocket  atomic.Uint64
	dropSendErrno     [maxErrno]atomic.Uint64 // indexed by errno
	dropSendOther     atomic.Uint64           // errno >= maxErrno
}

// errnoName is the lower-case symbolic name of errno e ("eagain"), or
// "errno_N" when it has none; it is set per OS.
var errnoName = func(e int) string { return "errno_" + strconv.Itoa(e) }

func (c *counters) dropSend(errno int, n int) {
	if n <= 0 {
		return
	}
	if errno > 0 && errno < maxErrno {
		c.dropSendErrno[errno].Add(uint64(n))
	} else {
		c.dropSendOther.Add(uint64(n))
	}
}

// snapshot lists the totals and fallbacks always, then the drop counters
// that are not zero, sorted by name.
func (c *counters) snapshot() []metrics.Counter {
	out := []metrics.Counter{
		{Name: "udp_rx_datagrams", Value: c.rxDatagrams.Load()},
		{Name: "udp_rx_syscalls", Value: c.rxSyscalls.Load()},
		{Name: "udp_rx_gro_messages", Value: c.rxGRO.Load()},
		{Name: "udp_tx_datagrams", Value: c.txDatagrams.Load()},
		{Name: "udp_tx_syscalls", Value: c.txSyscalls.Load()},
		{Name: "udp_tx_gso_messages", Value: c.txGSO.Load()},
		{Name: "udp_tx_waits", Value: c.txWaits.Load()},
		{Name: "udp_gso_disabled", Value: c.gsoDisabled.Load()},
		{Name: "udp_gro_disabled", Value: c.groDisabled.Load()},
		{Name: "udp_sticky_unavailable", Value: c.stickyUnavailable.Load()},
		{Name: "udp_sticky_source_cleared", Value: c.stickySourceCleared.Load()},
		{Name: "udp_aqm_unavailable", Value: c.aqmUnavailable.Load()},
		{Name: "drop_udp_aqm", Value: c.dropAQM.Load()},
	}
	var drops []metrics.Counter
	add := func(name string, v uint64) {
		if v != 0 {
			drops = append(drops, metrics.Counter{Name: name, Value: v})
		}
	}
	add("drop_udp_recv_truncated", c.dropRecvTruncated.Load())
	add("drop_udp_send_closed", c.dropSendClosed.Load())
	add("drop_udp_send_no_socket", c.dropSendNoSocket.Load())
	add("drop_udp_send_other", c.dropSendOther.Load())
	for e := range c.dropSendErrno {
		if v := c.dropSendErrno[e].Load(); v != 0 {
			add("drop_udp_send_"+errnoName(e), v)
		}
	}
	sort.Slice(drops, func(i, j int) bool { return drops[i].Name < drops[j].Name })
	return append(out, drops...)
}

var _ metrics.Reporter = (*Transport)(nil)

// Stats returns a snapshot of the transport's counters: datagrams and
// syscalls in each direction (their ratio shows the batching), offload use
// and fallbacks, sticky-source fallbacks (udp_sticky_source_cleared: sends
// whose local address had gone), and drops by reason (drop_udp_send_<errno> and others).
// It is safe to call at any time.
func (t *Transport) Stats() []metrics.Counter { return t.stats.snapshot() }
