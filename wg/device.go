// Package wg is the WireGuard protocol engine: peers, sessions, the
// handshake and timers, cryptokey routing, and the run-to-completion data
// path between a tun.Device and a transport.Transport.
//
// The data path has one goroutine per direction and socket: the TUN reader
// reads a batch, routes each packet to its peer, encrypts in place and sends
// the batch; each transport receiver reads a batch, decrypts in place,
// checks it and writes the batch to the TUN. No packet is handed from one
// goroutine to another on the way, so per-flow order is kept; every drop is
// counted by reason.
//
// Besides the data path, one routine handles handshake messages, one sends
// control messages (handshake messages, cookie replies, keepalives and the
// packets a new session releases: see control.go), one runs the timers and
// one refreshes the MTU. Only the data path's own sends and the control
// routine ever wait on a full send buffer.
package wg

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/tun"
	"github.com/ptun-vpn/ptun/wg/allowedips"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wg/wire"
)

// headroom is the space left before each packet read from the TUN, where
// the transport header is written; the ciphertext then lands in place.
const headroom = wire.TransportHeaderSize

// bufSize is the size of every data-path buffer: the largest packet or
// datagram, the headroom, and room for padding and the tag.
const bufSize = headroom + tun.MaxSegmentSize + 64

// Options configure a Device. The zero value is usable.
type Options struct {
	Logf   func(format string, args ...any) // nil: silent
	Timers Timers                           // zero: DefaultTimers()
	// ListenPort is the port New binds (0: a random one). An engine whose
	// front grants sockets only on the configured port starts on it.
	ListenPort uint16

	// For tests: smaller bounds, to reach them with few packets. Zero
	// means the default.
	controlQueueLen int   // controlQueueLen
	maxStagedTotal  int64 // maxStagedTotal
}

// Device is a WireGuard interface: a TUN device, a transport and the peers.
type Device struct {
	tun       tun.Device
	transport transport.Transport
	logf      func(format string, args ...any)
	timers    Timers

	configMu    sync.Mutex  // serialises Set, transport rebinding and Close
	accessLists accessLists // guarded by configMu

	local   atomic.Pointer[noise.Local]         // nil until a private key is set
	cookies atomic.Pointer[noise.CookieChecker] // follows local

	peers struct {
		sync.RWMutex // guards byKey
		byKey        map[noise.PublicKey]*Peer
	}
	allowed allowedips.Table[*Peer]
	indices indexTable

	// endpoints numbers the changes of the peers' remote endpoints, so
	// that EndpointChanges reports only what changed since the caller last
	// asked. Lock order: peers, then endpoints.
	endpoints struct {
		sync.Mutex        // guards gen and every peer's endpointGen
		gen        uint64 // the latest change's number
	}

	// transport state, guarded by configMu for writes
	bound      bool           // the transport is open; false only after a rebind whose restore failed too
	listenPort uint16         // the port bound; 0 while not bound
	fwmark     uint32         // the mark configured, in force on the sockets while bound
	recvDone   sync.WaitGroup // receive routines of the current binding
	rxBufsMu   sync.Mutex
	rxBufs     []*bufferSet // receive buffer sets left by routines of earlier bindings; freed by Close

	tunWriteMu sync.Mutex   // serialises TUN writes from the receive routines
	cachedMTU  atomic.Int32 // the TUN MTU, refreshed by routineMTU

	handshakes     chan handshakeMessage
	underLoadUntil atomic.Int64 // Unix nanoseconds; see underLoad

	control      chan controlMsg     // to routineControl
	keepaliveBuf [headroom + 16]byte // routineControl's keepalive

	stagedTotal    atomic.Int64 // packets staged across all peers
	maxStagedTotal int64

	// Data-path errors that can repeat on every batch are rate limited.
	logs struct{ tunRead, tunWrite, receive, send logLimiter }

	counters counters

	closed    chan struct{}
	closeOnce sync.Once
	routines  sync.WaitGroup
	closeErr  error
}

// New starts a device on t and tr. It binds the transport to
// opts.ListenPort (change it with Set) and starts the data path; packets flow once a private
// key and peers are configured. Close stops it; Done reports when it stopped
// by itself (the TUN went away).
func New(t tun.Device, tr transport.Transport, opts Options) (*Device, error) {
	d := &Device{
		tun:            t,
		transport:      tr,
		logf:           opts.Logf,
		timers:         opts.Timers,
		handshakes:     make(chan handshakeMessage, handshakeQueueLen),
		control:        make(chan controlMsg, cmp.Or(opts.controlQueueLen, controlQueueLen)),
		maxStagedTotal: cmp.Or(opts.maxStagedTotal, maxStagedTotal),
		closed:         make(chan struct{}),
	}
	if d.logf == nil {
		d.logf = func(string, ...any) {}
	}
	if d.timers == (Timers{}) {
		d.timers = DefaultTimers()
	}
	d.peers.byKey = make(map[noise.PublicKey]*Peer)
	d.indices.m = make(map[uint32]indexEntry)

	d.configMu.Lock()
	err := d.bind(opts.ListenPort, 0)
	d.configMu.Unlock()
	if err != nil {
		return nil, err
	}
	d.refreshMTU()
	d.routines.Add(5)
	go d.routineReadFromTUN()
	go d.routineHandshakes()
	go d.routineControl()
	go d.routineTimers()
	go d.routineMTU()
	return d, nil
}

// bind opens the transport on port with mark (0: none) and starts a receive
// routine per socket. It either succeeds or leaves the transport closed.
// configMu must be held and the transport closed.
func (d *Device) bind(port uint16, mark uint32) error {
	fns, actual, err := d.transport.Open(port)
	if err != nil {
		return err
	}
	if mark != 0 {
		if err := d.transport.SetMark(mark); err != nil {
			d.transport.Close()
			return err
		}
	}
	d.bound, d.listenPort = true, actual
	for _, fn := range fns {
		d.recvDone.Add(1)
		go d.routineReceive(fn)
	}
	return nil
}

// takeRxBufs returns a set of n receive buffers: one a routine of an earlier
// binding left, or a new one. Reusing them keeps a rebind from allocating
// (and touching) another set of 64 KiB buffers per socket.
func (d *Device) takeRxBufs(n int) *bufferSet {
	d.rxBufsMu.Lock()
	defer d.rxBufsMu.Unlock()
	for i, set := range d.rxBufs {
		if len(set.bufs) >= n {
			d.rxBufs = append(d.rxBufs[:i], d.rxBufs[i+1:]...)
			return set
		}
	}
	return newBufferSet(n)
}

// putRxBufs gives back a set taken with takeRxBufs.
func (d *Device) putRxBufs(set *bufferSet) {
	d.rxBufsMu.Lock()
	d.rxBufs = append(d.rxBufs, set)
	d.rxBufsMu.Unlock()
}

// freeRxBufs frees the receive buffer sets once no receive routine runs.
func (d *Device) freeRxBufs() {
	d.rxBufsMu.Lock()
	defer d.rxBufsMu.Unlock()
	for _, set := range d.rxBufs {
		set.free()
	}
	d.rxBufs = nil
}

// rebind moves the transport to port with mark. On failure it restores the
// old port and mark and returns the error, leaving the device as it was. If
// the restore fails too, the device is left without sockets and says so:
// it reports listen port 0, counts rebind_restore_failures, and the error
// tells the caller to set a listen port again.
func (d *Device) rebind(port uint16, mark uint32) error {
	oldPort, oldMark, wasBound := d.listenPort, d.fwmark, d.bound
	d.transport.Close()
	d.recvDone.Wait()
	d.bound, d.listenPort = false, 0
	err := d.bind(port, mark)
	if err == nil || !wasBound {
		return err
	}
	if err2 := d.bind(oldPort, oldMark); err2 != nil {
		d.counters.rebindRestoreFailures.Add(1)
		d.logf("cannot restore listen port %d: %v; the device has no socket until a listen port is set", oldPort, err2)
		return fmt.Errorf("%w (and restoring listen port %d failed: %v; the device has no socket until a listen port is set)", err, oldPort, err2)
	}
	return err
}

// Done is closed when the device has stopped.
func (d *Device) Done() <-chan struct{} { return d.closed }

// Close stops the device, closes the transport and the TUN, and waits for
// every routine to end.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		close(d.closed)
		// The TUN closes first: a receive routine may be blocked writing
		// to it (backpressure), and must be released before we wait.
		err2 := d.tun.Close()
		d.configMu.Lock()
		err1 := d.transport.Close()
		d.recvDone.Wait()
		// No receive routine runs, and none can start: a Set after
		// closed is refused.
		d.freeRxBufs()
		d.configMu.Unlock()
		d.routines.Wait()
		d.closeErr = errors.Join(err1, err2)
	})
	return d.closeErr
}

// isClosed reports whether Close has begun.
func (d *Device) isClosed() bool {
	select {
	case <-d.closed:
		return true
	default:
		return false
	}
}

// Stats returns the device's counters and its queues' depths now
// (queue_*), followed by the TUN's and the transport's, when they count.
func (d *Device) Stats() []metrics.Counter {
	out := d.counters.snapshot()
	out = append(out,
		metrics.Counter{Name: "queue_staged_packets", Value: uint64(max(0, d.stagedTotal.Load()))},
		metrics.Counter{Name: "queue_handshakes", Value: uint64(len(d.handshakes))},
		metrics.Counter{Name: "queue_control", Value: uint64(len(d.control))})
	if r, ok := d.tun.(metrics.Reporter); ok {
		out = append(out, r.Stats()...)
	}
	if r, ok := d.transport.(metrics.Reporter); ok {
		out = append(out, r.Stats()...)
	}
	return out
}

// dropSession forgets kp's index. kp may be nil.
func (d *Device) dropSession(kp *keypair) {
	if kp != nil {
		d.indices.remove(kp.localIndex)
	}
}

// peerList returns a snapshot of the peers, for work that must not hold
// the peers lock (timers, removal, UAPI get).
func (d *Device) peerList() []*Peer {
	d.peers.RLock()
	defer d.peers.RUnlock()
	peers := make([]*Peer, 0, len(d.peers.byKey))
	for _, p := range d.peers.byKey {
		peers = append(peers, p)
	}
	return peers
}

// lookupPeer returns the peer with public key pk, or nil.
func (d *Device) lookupPeer(pk noise.PublicKey) *Peer {
	d.peers.RLock()
	p := d.peers.byKey[pk]
	d.peers.RUnlock()
	return p
}

// sendTo sends bufs to p's endpoint, counting failures. When the
// endpoint's local address is gone, the transport sends from another and
// the endpoint forgets it.
func (d *Device) sendTo(p *Peer, bufs [][]byte) error {
	ep, ok := p.sendEndpoint()
	if !ok {
		d.counters.dropN(dropNoEndpoint, len(bufs))
		return errNoEndpoint
	}
	// A failed Send is counted by the transport, which alone knows how
	// many datagrams it dropped and why (drop_udp_send_<errno>).
	err := d.transport.Send(bufs, ep)
	if err == transport.ErrSourceCleared {
		p.clearLocal(ep)
		return nil
	}
	return err
}

// sendToEndpoint sends bufs to ep, which belongs to no peer (a cookie
// reply); a source address that is gone is no error.
func (d *Device) sendToEndpoint(bufs [][]byte, ep transport.Endpoint) error {
	if err := d.transport.Send(bufs, ep); err != transport.ErrSourceCleared {
		return err
	}
	return nil
}

var errNoEndpoint = errors.New("peer has no endpoint")

// stopFromRoutine closes the device, from one of its own routines, when
// its TUN goes away.
func (d *Device) stopFromRoutine(reason error) {
	if d.isClosed() {
		return
	}
	d.logf("device stopping: %v", reason)
	go d.Close()
}

// isClosedErr reports whether err means the TUN or socket is gone for good.
func isClosedErr(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}

func (d *Device) String() string { return fmt.Sprintf("device(%s)", d.tun.Name()) }
