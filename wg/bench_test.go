package wg

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/transport"
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/wire"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// benchBatches are the batch sizes of the per-batch data path benchmarks:
// one packet, a small burst, a typical recvmmsg/TUN batch, and the largest
// batch the fakes (and the Linux TUN and UDP transport) hand over.
var benchBatches = []int{1, 8, 32, 128}

// benchPacketLen is the size of every inner packet: a full packet at the
// default MTU of 1420.
const benchPacketLen = 1420

// benchTimers are long enough that no timer fires while a benchmark runs:
// no keepalive from b would teach a its real endpoint again (which would
// feed b's receive routine the datagrams the benchmark opens itself), and no
// rekey replaces the session under the benchmark.
var benchTimers = Timers{
	RekeyAfterTime:   2 * time.Hour,
	RejectAfterTime:  3 * time.Hour,
	RekeyAttemptTime: time.Hour,
	RekeyTimeout:     time.Hour,
	KeepaliveTimeout: time.Hour,
}

// blackhole is an endpoint on the fake network where nobody listens: the
// fake transport counts datagrams sent there (drop_unknown_endpoint) and
// drops them, so the send side's transport call costs almost nothing and
// b's device routines never see the benchmark's datagrams.
var blackhole = netip.MustParseAddrPort("198.18.0.99:9")

// batchBench is a pair of devices on the fakes with a session established,
// and the buffers of one batch, laid out as the device's routines lay them
// out (a bufferSet of bufSize bytes each, the packet at headroom).
type batchBench struct {
	a, b    *testNode
	pa      *Peer              // b as a peer of a
	kpB     *keypair           // b's session with a, which opens what a seals
	srcA    transport.Endpoint // where b sees a's datagrams come from
	pkt     []byte             // the plaintext inner packet, a to b
	n       int
	bufs    [][]byte
	sizes   []int
	groups  []peerBatch
	out     [][]byte
	nonce   [12]byte
	toTUN   [][]byte
	recvEps []transport.Endpoint
}

func newBatchBench(tb testing.TB, n int) *batchBench {
	tb.Helper()
	a, b := newTestPair(tb, benchTimers)
	first := ipv4Packet(a.addr, b.addr, []byte("establish the session"))
	a.tun.Inbound <- first
	expectPacket(tb, b, first)
	s := &batchBench{a: a, b: b, n: n}
	s.pa = a.dev.lookupPeer(b.priv.PublicKey())
	if s.pa.keypairs.current.Load() == nil {
		tb.Fatal("a has no session after the first packet")
	}
	s.srcA = receivedEndpoint(a, b)
	pb := b.dev.lookupPeer(a.priv.PublicKey())
	if s.kpB = pb.keypairs.current.Load(); s.kpB == nil {
		tb.Fatal("b has no confirmed session after the first packet")
	}
	// b answers the first packet with nothing (no keepalive until
	// KeepaliveTimeout, an hour here), so a learns no endpoint for b from
	// now on, and a's endpoint for b can move to the blackhole for good.
	b.dev.syncControl()
	s.pa.setConfiguredEndpoint(blackhole)
	s.pkt = ipv4Packet(a.addr, b.addr, payloadOf(benchPacketLen-28))
	// The routines' own kind of buffers (see bufferSet).
	set := newBufferSet(n)
	tb.Cleanup(set.free)
	s.bufs = set.bufs
	s.sizes = make([]int, n)
	s.groups = make([]peerBatch, 0, 8)
	s.out = make([][]byte, 0, n)
	s.toTUN = make([][]byte, 0, n)
	s.recvEps = make([]transport.Endpoint, n)
	for i := range s.recvEps {
		s.recvEps[i] = s.srcA
	}
	return s
}

func payloadOf(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + 3)
	}
	return p
}

// readTUN stands in for the TUN read: it puts the plaintext packet in every
// buffer of the batch (one 1420-byte copy each, as the kernel's read does).
func (s *batchBench) readTUN() {
	for i := range s.bufs {
		s.sizes[i] = copy(s.bufs[i][headroom:], s.pkt)
	}
}

// sealBatch is the body of routineReadFromTUN's loop after the read: route
// every packet (allowedips.LookupPacketDst, appendToGroup), then sendBatch
// per peer, which seals in place and hands the datagrams to the transport
// (here the fake, which drops them at the blackhole). It returns the sealed
// datagrams, which stay valid until the next call.
func (s *batchBench) sealBatch(tb testing.TB) [][]byte {
	d := s.a.dev
	s.groups = s.groups[:0]
	for i := 0; i < s.n; i++ {
		p, ok := d.allowed.LookupPacketDst(s.bufs[i][headroom : headroom+s.sizes[i]])
		if !ok {
			tb.Fatal("no route for the benchmark packet")
		}
		s.groups = appendToGroup(s.groups, p, i)
	}
	now := time.Now()
	s.out = s.out[:0]
	for g := range s.groups {
		s.out = d.sendBatch(s.groups[g].peer, s.bufs, s.sizes, s.groups[g].idx, s.out, s.nonce[:], now)
	}
	for g := range s.groups {
		s.groups[g].peer = nil
		s.groups[g].idx = s.groups[g].idx[:0]
	}
	return s.out
}

// openBatch is the body of routineReceive's loop after the receive, for
// the datagrams msgs (each at offset 0 of its buffer): check the message
// type and open each in place (authenticate, decrypt, replay, source
// checks). The TUN write that follows in the routine is left out. It
// returns the packets bound for the TUN, at headroom in their buffers.
func (s *batchBench) openBatch(msgs [][]byte) [][]byte {
	d := s.b.dev
	now := time.Now()
	s.toTUN = s.toTUN[:0]
	for i, msg := range msgs {
		typ, err := wire.MessageType(msg)
		if err != nil || typ != wire.TypeTransport {
			continue
		}
		if pkt, _ := d.open(msg, s.recvEps[i], s.nonce[:], now); pkt > 0 {
			s.toTUN = append(s.toTUN, msg[:headroom+pkt])
		}
	}
	return s.toTUN
}

// checkRoundTrip seals one batch, opens it at b, and checks every packet
// comes out as it went in.
func (s *batchBench) checkRoundTrip(tb testing.TB) {
	tb.Helper()
	s.readTUN()
	out := s.sealBatch(tb)
	if len(out) != s.n {
		tb.Fatalf("sealed %d of %d packets; a: %s", len(out), s.n, nonZero(s.a.dev))
	}
	got := s.openBatch(out)
	if len(got) != s.n {
		tb.Fatalf("opened %d of %d packets; b: %s", len(got), s.n, nonZero(s.b.dev))
	}
	for i, p := range got {
		if !bytes.Equal(p[headroom:], s.pkt) {
			tb.Fatalf("packet %d differs after seal and open", i)
		}
	}
}

// BenchmarkSealBatch measures the outbound data path per batch of 1420-byte
// packets, in place in the routine's own buffers: the plaintext copy that
// stands in for the TUN read, the route lookup and grouping of
// routineReadFromTUN, and the real sendBatch (session check, seal with
// padding and header, counters, timers) ending in the transport's Send,
// which the fake turns into a counted drop. bytes/s counts inner packet
// bytes.
func BenchmarkSealBatch(bm *testing.B) {
	for _, n := range benchBatches {
		bm.Run("batch="+strconv.Itoa(n), func(bm *testing.B) {
			s := newBatchBench(bm, n)
			s.checkRoundTrip(bm)
			dropped := counter(s.a.dev, "drop_unknown_endpoint")
			bm.SetBytes(int64(n * len(s.pkt)))
			bm.ReportAllocs()
			for bm.Loop() {
				s.readTUN()
				if out := s.sealBatch(bm); len(out) != n {
					bm.Fatalf("sealed %d of %d packets; a: %s", len(out), n, nonZero(s.a.dev))
				}
			}
			reportPkts(bm, n)
			// Every sealed datagram was handed to the transport.
			if got, want := counter(s.a.dev, "drop_unknown_endpoint")-dropped, uint64(bm.N*n); got != want {
				bm.Fatalf("transport got %d datagrams, want %d", got, want)
			}
		})
	}
}

// BenchmarkOpenBatch measures the inbound data path per batch of sealed
// 1420-byte packets, in place: the datagram copy that stands in for the
// socket receive, then routineReceive's per-datagram work (message type,
// open: index lookup, expiry, decrypt, replay check, endpoint and timer
// updates, inner length and source address checks). The TUN write is left
// out. Each batch is the same datagrams again, so the session's replay
// filter is reset before each (one 1 KiB clear per batch, under its lock).
// bytes/s counts inner packet bytes.
func BenchmarkOpenBatch(bm *testing.B) {
	for _, n := range benchBatches {
		bm.Run("batch="+strconv.Itoa(n), func(bm *testing.B) { benchOpenBatch(bm, n, nil) })
	}
}

// BenchmarkOpenBatchAccess is BenchmarkOpenBatch for the receive path's
// access check, as a gateway runs it: batches of 64 (transport/udp's) from
// a peer with no access rules, and from one with 100 (single hosts and
// /24s, each to a TCP port or range, and the one that allows the
// benchmark's packets). Compare the two side by side:
//
//	go test -run '^$' -bench OpenBatchAccess -count 10 ./wg | benchstat -col /rules -
func BenchmarkOpenBatchAccess(bm *testing.B) {
	for _, rules := range []int{0, 100} {
		bm.Run(fmt.Sprintf("rules=%d", rules), func(bm *testing.B) {
			var list []acl.Rule
			if rules > 0 {
				list = accessRules(rules, netip.MustParseAddr("100.64.0.2"))
			}
			benchOpenBatch(bm, 64, list)
		})
	}
}

// accessRules is n rules as a gateway has them: n-1 single hosts and /24s
// across 198.18.0.0/16, each to one TCP port or a range of them, and last
// the one that lets UDP to dst through.
func accessRules(n int, dst netip.Addr) []acl.Rule {
	rules := make([]acl.Rule, 0, n)
	for i := range n - 1 {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i / 256), byte(i % 256)})
		bits := 32
		if i%10 == 0 {
			bits = 24
		}
		lo := uint16(1 + i%1000)
		rules = append(rules, acl.Rule{Dst: netip.PrefixFrom(a, bits).Masked(), Proto: acl.ProtoTCP, PortLo: lo, PortHi: lo + uint16(i%3)})
	}
	return append(rules, acl.Rule{Dst: netip.PrefixFrom(dst, 32), Proto: acl.ProtoUDP})
}

// benchOpenBatch measures batches of n; with rules, b holds a to them.
func benchOpenBatch(bm *testing.B, n int, rules []acl.Rule) {
	s := newBatchBench(bm, n)
	if rules != nil {
		if err := s.b.dev.Set(&wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: s.a.priv.PublicKey(),
			UpdateOnly: true, Access: &wgcfg.AccessRules{Rules: rules}}}}); err != nil {
			bm.Fatal(err)
		}
	}
	s.checkRoundTrip(bm)
	s.readTUN()
	sealed := make([][]byte, n)
	for i, d := range s.sealBatch(bm) {
		sealed[i] = bytes.Clone(d)
	}
	msgs := make([][]byte, n)
	recv := func() {
		for i := range msgs {
			msgs[i] = s.bufs[i][:copy(s.bufs[i], sealed[i])]
		}
		s.kpB.replayMu.Lock()
		s.kpB.replay.Reset()
		s.kpB.replayMu.Unlock()
	}
	recv()
	for i, p := range s.openBatch(msgs) {
		if !bytes.Equal(p[headroom:], s.pkt) {
			bm.Fatalf("packet %d differs after open", i)
		}
	}
	bm.SetBytes(int64(n * len(s.pkt)))
	bm.ReportAllocs()
	for bm.Loop() {
		recv()
		if got := s.openBatch(msgs); len(got) != n {
			bm.Fatalf("opened %d of %d packets; b: %s", len(got), n, nonZero(s.b.dev))
		}
	}
	reportPkts(bm, n)
	if rules != nil && counter(s.b.dev, "drop_acl") != 0 {
		bm.Fatalf("the access rules refused packets: %s", nonZero(s.b.dev))
	}
}

// reportPkts reports the packet rate of a benchmark that handles perOp
// packets per iteration.
func reportPkts(bm *testing.B, perOp int) {
	bm.ReportMetric(float64(bm.N)*float64(perOp)/bm.Elapsed().Seconds(), "pkts/s")
}
