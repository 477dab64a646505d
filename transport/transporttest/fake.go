// Package transporttest is an in-memory transport.Transport for unit tests:
// two Fakes joined like two hosts on one network, with bounded queues that
// push back on the sender instead of dropping. A side may have several
// addresses, and its sources are sticky as transport/udp's are: received
// endpoints carry the local address a datagram was sent to, and a send
// leaves from the endpoint's local address.
package transporttest

import (
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport"
)

const (
	// BatchSize is the most datagrams a Fake's ReceiveFunc returns.
	BatchSize = 128
	// DefaultQueueLen is how many datagrams a Fake holds for its receiver
	// before senders block.
	DefaultQueueLen = 1024
	// DefaultPort is the port a Fake reports when opened on port 0.
	DefaultPort = 51820
)

// The fake addresses of the two sides of a pair.
var (
	AddrA = netip.MustParseAddr("198.18.0.1")
	AddrB = netip.MustParseAddr("198.18.0.2")
)

// Fake is one side of an in-memory network of two hosts. Datagrams sent to
// the other side's endpoint (one of its addresses and the port it is open
// on) land in the other side's queue; datagrams to any other endpoint, or
// to a side that is closed, are counted and dropped, as a network would. A
// full queue blocks the sender until there is room or either side closes.
// All methods are safe for concurrent use.
type Fake struct {
	ip       netip.Addr // the first address, the "route's" source
	peer     *Fake
	queueLen int

	mu     sync.Mutex // guards the fields below
	sess   *session   // nil while closed
	port   uint16     // port of the last Open
	mark   uint32
	onSend func(b []byte, to transport.Endpoint)
	held   chan struct{} // non-nil while HoldSends is in force; closed by its release
	extra  []netip.Addr  // addresses added with AddAddr

	txDatagrams, rxDatagrams, sendWaits       atomic.Uint64
	dropUnknownEndpoint, dropPeerClosed, drop atomic.Uint64
	sourceCleared                             atomic.Uint64
}

// IfIndex is the interface index a Fake reports for every datagram.
const IfIndex = 1

var (
	_ transport.Transport = (*Fake)(nil)
	_ metrics.Reporter    = (*Fake)(nil)
)

// session is one Open of a Fake: its receive queue, a free list of
// datagram buffers, and done, closed by Close.
type session struct {
	f    *Fake
	port uint16
	q    chan datagram
	free chan []byte
	done chan struct{}
}

type datagram struct {
	b    []byte
	from netip.AddrPort
	to   netip.Addr // the receiver's address it was sent to
}

// NewPair returns two joined, closed Fakes at AddrA and AddrB with
// DefaultQueueLen.
func NewPair() (a, b *Fake) { return NewPairWithQueue(DefaultQueueLen) }

// NewPairWithQueue is NewPair with each side's receive queue holding
// queueLen datagrams (at least 1).
func NewPairWithQueue(queueLen int) (a, b *Fake) {
	queueLen = max(queueLen, 1)
	a = &Fake{ip: AddrA, queueLen: queueLen}
	b = &Fake{ip: AddrB, queueLen: queueLen}
	a.peer, b.peer = b, a
	return a, b
}

// LocalAddr is the endpoint this side receives at when open on port; port
// 0 means the port it is (or was last) open on, DefaultPort if never.
func (f *Fake) LocalAddr(port uint16) netip.AddrPort {
	if port == 0 {
		f.mu.Lock()
		port = f.port
		f.mu.Unlock()
	}
	if port == 0 {
		port = DefaultPort
	}
	return netip.AddrPortFrom(f.ip, port)
}

// AddAddr gives this side another address: datagrams sent to it arrive,
// and sends may leave from it.
func (f *Fake) AddAddr(a netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a = a.Unmap()
	if a != f.ip && !slices.Contains(f.extra, a) {
		f.extra = append(f.extra, a)
	}
}

// RemoveAddr takes an address added with AddAddr away again: datagrams to
// it are dropped as to an unknown endpoint, and a send from it leaves from
// the first address instead (counted as fake_sticky_source_cleared).
func (f *Fake) RemoveAddr(a netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.extra = slices.DeleteFunc(f.extra, func(x netip.Addr) bool { return x == a.Unmap() })
}

// hasAddr reports whether a is one of this side's addresses.
func (f *Fake) hasAddr(a netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return a == f.ip || slices.Contains(f.extra, a)
}

// Mark returns the mark last set with SetMark.
func (f *Fake) Mark() uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mark
}

// OnSend makes every datagram this side sends (delivered or not) visible
// to fn, called in Send's goroutine before delivery, with the endpoint Send
// was given. b is valid only during the call. nil stops observing.
func (f *Fake) OnSend(fn func(b []byte, to transport.Endpoint)) {
	f.mu.Lock()
	f.onSend = fn
	f.mu.Unlock()
}

// HoldSends makes every Send on this side block, as on a full socket send
// buffer, until the returned release is called (then the datagrams go on)
// or this side closes (then Send returns net.ErrClosed). Each blocked Send
// counts once in fake_send_waits, so a test can wait until a sender is
// stuck. release may be called more than once.
func (f *Fake) HoldSends() (release func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	f.held = ch
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			if f.held == ch {
				f.held = nil
			}
			f.mu.Unlock()
			close(ch)
		})
	}
}

func (f *Fake) current() (*session, func([]byte, transport.Endpoint)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sess, f.onSend
}

// Open implements transport.Transport with a single ReceiveFunc. Port 0
// means DefaultPort.
func (f *Fake) Open(port uint16) ([]transport.ReceiveFunc, uint16, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sess != nil {
		return nil, 0, transport.ErrAlreadyOpen
	}
	if port == 0 {
		port = DefaultPort
	}
	s := &session{
		f:    f,
		port: port,
		q:    make(chan datagram, f.queueLen),
		free: make(chan []byte, f.queueLen),
		done: make(chan struct{}),
	}
	f.sess, f.port = s, port
	return []transport.ReceiveFunc{s.receive}, port, nil
}

// Close implements transport.Transport. Queued datagrams are discarded;
// blocked receivers return net.ErrClosed and blocked senders return.
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sess != nil {
		close(f.sess.done)
		f.sess = nil
	}
	return nil
}

// SetMark records mark; it has no other effect.
func (f *Fake) SetMark(mark uint32) error {
	f.mu.Lock()
	f.mark = mark
	f.mu.Unlock()
	return nil
}

// BatchSize implements transport.Transport.
func (f *Fake) BatchSize() int { return BatchSize }

// Send implements transport.Transport. It copies each datagram into the
// peer's queue, blocking while the queue is full. It returns net.ErrClosed
// when this side is closed (before or while blocked); datagrams to an
// unknown endpoint or a closed peer are counted and dropped without error.
// They leave from ep.Local when it is set; when it is not (or no longer)
// one of this side's addresses they leave from the first address, and
// Send returns transport.ErrSourceCleared after counting it, as
// transport/udp does.
func (f *Fake) Send(bufs [][]byte, ep transport.Endpoint) error {
	s, observe := f.current()
	if s == nil {
		f.drop.Add(uint64(len(bufs)))
		return net.ErrClosed
	}
	f.mu.Lock()
	held := f.held
	f.mu.Unlock()
	if held != nil {
		f.sendWaits.Add(1)
		select {
		case <-held:
		case <-s.done:
			f.drop.Add(uint64(len(bufs)))
			return net.ErrClosed
		}
	}
	if observe != nil {
		for _, b := range bufs {
			observe(b, ep)
		}
	}
	src, cleared := f.ip, false
	if local := ep.Local.Unmap(); local.IsValid() {
		if f.hasAddr(local) {
			src = local
		} else {
			cleared = true
			f.sourceCleared.Add(1)
		}
	}
	done := func(err error) error {
		if err == nil && cleared {
			return transport.ErrSourceCleared
		}
		return err
	}
	to := netip.AddrPortFrom(ep.Remote.Addr().Unmap(), ep.Remote.Port())
	if !f.peer.hasAddr(to.Addr()) {
		f.dropUnknownEndpoint.Add(uint64(len(bufs)))
		return done(nil)
	}
	ps, _ := f.peer.current()
	if ps == nil || ps.port != to.Port() {
		// The peer's host is there but nothing listens on that port.
		f.dropPeerClosed.Add(uint64(len(bufs)))
		return done(nil)
	}
	from := netip.AddrPortFrom(src, s.port)
	for i, b := range bufs {
		switch ps.deliver(b, from, to.Addr(), s.done, &f.sendWaits) {
		case errSenderClosed:
			f.drop.Add(uint64(len(bufs) - i))
			return net.ErrClosed
		case errReceiverClosed:
			f.dropPeerClosed.Add(uint64(len(bufs) - i))
			return done(nil)
		}
		f.txDatagrams.Add(1)
	}
	return done(nil)
}

// Inject queues b on this side as if it came from from to its first
// address, blocking while the queue is full. It returns net.ErrClosed if
// this side is closed.
func (f *Fake) Inject(b []byte, from netip.AddrPort) error {
	s, _ := f.current()
	if s == nil {
		return net.ErrClosed
	}
	if s.deliver(b, from, f.ip, nil, &f.sendWaits) != nil {
		return net.ErrClosed
	}
	return nil
}

type deliverError int

func (deliverError) Error() string { return "transporttest: closed" }

const (
	errSenderClosed deliverError = iota + 1
	errReceiverClosed
)

// deliver copies b, from from to the local address to, into s's queue,
// waiting for room (counted in waits) until s or the sender's session
// (senderDone, may be nil) closes.
func (s *session) deliver(b []byte, from netip.AddrPort, to netip.Addr, senderDone chan struct{}, waits *atomic.Uint64) error {
	var buf []byte
	select {
	case buf = <-s.free:
	default:
	}
	d := datagram{b: append(buf[:0], b...), from: from, to: to}
	select {
	case s.q <- d:
		return nil
	default:
	}
	waits.Add(1)
	select {
	case s.q <- d:
		return nil
	case <-s.done:
		return errReceiverClosed
	case <-senderDone:
		return errSenderClosed
	}
}

// receive is the session's ReceiveFunc: it waits for one datagram, then
// takes whatever else is queued, up to a batch.
func (s *session) receive(bufs [][]byte, sizes []int, eps []transport.Endpoint) (int, error) {
	room := min(len(bufs), len(sizes), len(eps), BatchSize)
	if room == 0 {
		return 0, io.ErrShortBuffer
	}
	select {
	case <-s.done:
		return 0, net.ErrClosed
	default:
	}
	var d datagram
	select {
	case d = <-s.q:
	case <-s.done:
		return 0, net.ErrClosed
	}
	n := 0
	for more := true; more; {
		sizes[n] = copy(bufs[n], d.b)
		eps[n] = transport.Endpoint{Remote: d.from, Local: d.to, IfIndex: IfIndex}
		n++
		select {
		case s.free <- d.b:
		default:
		}
		more = false
		if n < room {
			select {
			case d = <-s.q:
				more = true
			default:
			}
		}
	}
	s.f.rxDatagrams.Add(uint64(n))
	return n, nil
}

// Stats returns the fake's counters: datagrams each way, how often a
// sender had to wait for room, sends whose local address was not this
// side's, and drops by reason.
func (f *Fake) Stats() []metrics.Counter {
	return []metrics.Counter{
		{Name: "fake_tx_datagrams", Value: f.txDatagrams.Load()},
		{Name: "fake_rx_datagrams", Value: f.rxDatagrams.Load()},
		{Name: "fake_send_waits", Value: f.sendWaits.Load()},
		{Name: "fake_sticky_source_cleared", Value: f.sourceCleared.Load()},
		{Name: "drop_unknown_endpoint", Value: f.dropUnknownEndpoint.Load()},
		{Name: "drop_peer_closed", Value: f.dropPeerClosed.Load()},
		{Name: "drop_closed", Value: f.drop.Load()},
	}
}
