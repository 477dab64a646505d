package wg

import (
	"testing"
	"time"
)

// TestHotPathDoesNotAllocate pins rule 6 of the design: in steady state,
// routing, sealing, opening and checking a packet allocate nothing.
func TestHotPathDoesNotAllocate(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	first := ipv4Packet(a.addr, b.addr, []byte("establish the session"))
	a.tun.Inbound <- first
	expectPacket(t, b, first)

	pa := a.dev.lookupPeer(b.priv.PublicKey())
	kpA := pa.keypairs.current.Load()
	if kpA == nil {
		t.Fatal("no session after the first packet")
	}
	pkt := ipv4Packet(a.addr, b.addr, make([]byte, 1372))
	buf := make([]byte, bufSize)
	sendNonce, recvNonce := make([]byte, 12), make([]byte, 12)
	now := time.Now()
	allocs := testing.AllocsPerRun(2000, func() {
		copy(buf[headroom:], pkt)
		p, ok := a.dev.allowed.LookupPacketDst(buf[headroom : headroom+len(pkt)])
		if !ok || p != pa {
			t.Fatal("route lookup failed")
		}
		out, ok := a.dev.seal(pa, kpA, buf, len(pkt), sendNonce)
		if !ok {
			t.Fatal("seal failed")
		}
		// b sees the datagram as coming from a's endpoint.
		if n, _ := b.dev.open(out, receivedEndpoint(a, b), recvNonce, now); n != len(pkt) {
			t.Fatalf("open returned %d bytes, want %d; b: %s", n, len(pkt), nonZero(b.dev))
		}
	})
	if allocs != 0 {
		t.Fatalf("steady-state route+seal+open allocates %.1f times per packet, want 0", allocs)
	}
}

// BenchmarkSealOpen measures one packet at a time (not a batch; see
// BenchmarkSealBatch and BenchmarkOpenBatch) through both data paths'
// per-packet work for 1420-byte packets: route lookup, seal, open, replay
// and source checks. bytes/s counts inner packet bytes.
func BenchmarkSealOpen(bm *testing.B) {
	a, b := newTestPair(bm, Timers{})
	first := ipv4Packet(a.addr, b.addr, []byte("establish the session"))
	a.tun.Inbound <- first
	expectPacket(bm, b, first)
	pa := a.dev.lookupPeer(b.priv.PublicKey())
	kpA := pa.keypairs.current.Load()
	if kpA == nil {
		bm.Fatal("no session after the first packet")
	}
	pkt := ipv4Packet(a.addr, b.addr, make([]byte, 1392))
	buf := make([]byte, bufSize)
	sendNonce, recvNonce := make([]byte, 12), make([]byte, 12)
	now := time.Now()
	bm.SetBytes(int64(len(pkt)))
	bm.ReportAllocs()
	bm.ResetTimer()
	for i := 0; i < bm.N; i++ {
		copy(buf[headroom:], pkt)
		if p, ok := a.dev.allowed.LookupPacketDst(buf[headroom : headroom+len(pkt)]); !ok || p != pa {
			bm.Fatal("route lookup failed")
		}
		out, _ := a.dev.seal(pa, kpA, buf, len(pkt), sendNonce)
		// b sees the datagram as coming from a's endpoint.
		if n, _ := b.dev.open(out, receivedEndpoint(a, b), recvNonce, now); n != len(pkt) {
			bm.Fatalf("open returned %d bytes, want %d; b: %s", n, len(pkt), nonZero(b.dev))
		}
	}
	reportPkts(bm, 1)
}
