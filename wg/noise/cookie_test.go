package noise

import (
	"bytes"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/wire"
)

var (
	srcA = netip.MustParseAddrPort("198.18.0.1:51820")
	srcB = netip.MustParseAddrPort("198.18.0.2:51820")
	srcC = netip.MustParseAddrPort("198.18.0.1:51821")
	src6 = netip.MustParseAddrPort("[2001:db8::1]:51820")
)

// cookiePair is one side's generator for the peer and the peer's checker,
// on a shared fake clock.
func cookiePair(t *testing.T) (*CookieGenerator, *CookieChecker, *fakeClock, *Local) {
	t.Helper()
	r := mustLocal(t)
	clk := newFakeClock()
	g, c := NewCookieGenerator(r.Public), NewCookieChecker(r.Public)
	g.now, c.now = clk.now, clk.now
	return g, c, clk, r
}

func testMessages(t *testing.T, responder *Local) [][]byte {
	t.Helper()
	i := mustLocal(t)
	init, _, err := CreateInitiation(i, responder.Public, 0x01020304, Now())
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{marshalInitiation(init), marshalResponse(&wire.Response{Sender: 0x0a0b0c0d, Receiver: 9})}
}

func TestCheckMAC1(t *testing.T) {
	g, c, _, r := cookiePair(t)
	for _, msg := range testMessages(t, r) {
		off, _, _ := macOffsets(msg)
		if c.CheckMAC1(msg) {
			t.Fatal("zero mac1 accepted")
		}
		g.AddMACs(msg)
		if !c.CheckMAC1(msg) {
			t.Fatal("good mac1 rejected")
		}
		if !bytes.Equal(msg[off+macSize:], make([]byte, macSize)) {
			t.Fatal("mac2 set without a cookie")
		}
		for pos := 0; pos < off+macSize; pos++ {
			b := bytes.Clone(msg)
			b[pos] ^= 0x20
			if c.CheckMAC1(b) {
				t.Fatalf("mac1 valid after changing byte %d", pos)
			}
		}
		// mac2 is not covered by mac1.
		b := bytes.Clone(msg)
		b[len(b)-1] ^= 1
		if !c.CheckMAC1(b) {
			t.Fatal("mac1 depends on mac2")
		}
		// Keyed by the receiver's public key.
		if NewCookieChecker(mustLocal(t).Public).CheckMAC1(msg) {
			t.Fatal("mac1 valid for another public key")
		}
		// Wrong sizes and types.
		if c.CheckMAC1(msg[:len(msg)-1]) || c.CheckMAC1(append(bytes.Clone(msg), 0)) || c.CheckMAC1(nil) {
			t.Fatal("wrong size accepted")
		}
		b = bytes.Clone(msg)
		b[0] = wire.TypeCookieReply
		if c.CheckMAC1(b) {
			t.Fatal("wrong type accepted")
		}
	}
	// AddMACs leaves messages it does not know alone.
	junk := []byte{1, 0, 0, 0, 5, 6, 7}
	g.AddMACs(junk)
	g.AddMACs(nil)
	if !bytes.Equal(junk, []byte{1, 0, 0, 0, 5, 6, 7}) {
		t.Fatal("AddMACs changed a malformed message")
	}
}

func TestCookieFlow(t *testing.T) {
	for k := range 2 {
		g, c, _, r := cookiePair(t)
		msg := testMessages(t, r)[k]
		_, off2, _ := macOffsets(msg)
		g.AddMACs(msg)
		if c.CheckMAC2(msg, srcA) {
			t.Fatal("mac2 valid before any cookie")
		}
		reply, err := c.CreateReply(msg, srcA)
		if err != nil {
			t.Fatal(err)
		}
		if want := uint32(msg[4]) | uint32(msg[5])<<8 | uint32(msg[6])<<16 | uint32(msg[7])<<24; reply.Receiver != want {
			t.Fatalf("reply receiver %#x, want sender %#x", reply.Receiver, want)
		}
		rb := make([]byte, wire.CookieReplySize)
		reply.Marshal(rb)
		var got wire.CookieReply
		if err := got.Unmarshal(rb); err != nil {
			t.Fatal(err)
		}
		if err := g.ConsumeReply(&got); err != nil {
			t.Fatalf("ConsumeReply: %v", err)
		}
		if err := g.ConsumeReply(&got); !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("reply consumed twice: %v", err)
		}
		g.AddMACs(msg)
		if bytes.Equal(msg[off2:], make([]byte, macSize)) {
			t.Fatal("no mac2 with a fresh cookie")
		}
		if !c.CheckMAC1(msg) || !c.CheckMAC2(msg, srcA) {
			t.Fatal("mac2 rejected")
		}
		for _, other := range []netip.AddrPort{srcB, srcC, src6, {}} {
			if c.CheckMAC2(msg, other) {
				t.Fatalf("mac2 for %v accepted from %v", srcA, other)
			}
		}
		if !c.CheckMAC2(msg, netip.AddrPortFrom(netip.AddrFrom16(srcA.Addr().As16()), srcA.Port())) {
			t.Fatal("IPv4-mapped source not treated as IPv4")
		}
		for pos := 0; pos < len(msg); pos++ {
			b := bytes.Clone(msg)
			b[pos] ^= 4
			if c.CheckMAC2(b, srcA) {
				t.Fatalf("mac2 valid after changing byte %d", pos)
			}
		}
	}

	// IPv6 sources work too.
	g, c, _, r := cookiePair(t)
	msg := testMessages(t, r)[0]
	g.AddMACs(msg)
	reply, err := c.CreateReply(msg, src6)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.ConsumeReply(reply); err != nil {
		t.Fatal(err)
	}
	g.AddMACs(msg)
	if !c.CheckMAC2(msg, src6) || c.CheckMAC2(msg, srcA) {
		t.Fatal("IPv6 cookie")
	}
}

func TestCookieReplyRejects(t *testing.T) {
	g, c, _, r := cookiePair(t)
	msgs := testMessages(t, r)
	a, b := msgs[0], msgs[1]

	// A generator that sent nothing takes no reply.
	g2 := NewCookieGenerator(r.Public)
	g2.AddMACs(a)
	reply, err := c.CreateReply(a, srcA)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.ConsumeReply(reply); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("reply with nothing sent: %v", err)
	}
	if err := g.ConsumeReply(nil); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("nil reply: %v", err)
	}

	// A reply bound to another message's mac1 does not decrypt.
	g.AddMACs(a)
	other := bytes.Clone(b)
	g2.AddMACs(other)
	replyOther, err := c.CreateReply(other, srcA)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.ConsumeReply(replyOther); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("reply for another message: %v", err)
	}

	// Every tampered byte of a reply fails, except the receiver index,
	// which only routes the reply to a peer; the genuine reply still works
	// afterwards.
	good, err := c.CreateReply(a, srcA)
	if err != nil {
		t.Fatal(err)
	}
	gb := make([]byte, wire.CookieReplySize)
	good.Marshal(gb)
	for pos := 0; pos < wire.CookieReplySize; pos++ {
		if pos >= 4 && pos < 8 {
			continue
		}
		tb := bytes.Clone(gb)
		tb[pos] ^= 0x10
		var m wire.CookieReply
		if m.Unmarshal(tb) != nil {
			continue
		}
		if err := g.ConsumeReply(&m); err == nil {
			t.Fatalf("tampered reply (byte %d) accepted", pos)
		}
	}
	if err := g.ConsumeReply(good); err != nil {
		t.Fatalf("genuine reply after forgeries: %v", err)
	}

	// Malformed inputs to CreateReply.
	if _, err := c.CreateReply(a[:100], srcA); err == nil {
		t.Fatal("CreateReply on a short message")
	}
	if _, err := c.CreateReply(a, netip.AddrPort{}); err == nil {
		t.Fatal("CreateReply for an invalid source")
	}
}

func TestCookieExpiry(t *testing.T) {
	g, c, clk, r := cookiePair(t)
	msg := testMessages(t, r)[0]
	_, off2, _ := macOffsets(msg)
	g.AddMACs(msg)
	reply, err := c.CreateReply(msg, srcA)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.ConsumeReply(reply); err != nil {
		t.Fatal(err)
	}

	clk.advance(CookieLifetime - time.Second)
	g.AddMACs(msg)
	if !c.CheckMAC2(msg, srcA) {
		t.Fatal("cookie rejected before its lifetime ended")
	}

	// The generator stops using a cookie at its lifetime.
	clk.advance(time.Second)
	g.AddMACs(msg)
	if !bytes.Equal(msg[off2:], make([]byte, macSize)) {
		t.Fatal("mac2 sent with an expired cookie")
	}

	// The checker's secret rotates: a mac2 made with the old cookie fails
	// even if a (stale) generator still sends it.
	g2 := NewCookieGenerator(r.Public)
	g2.now = func() time.Time { return clk.now().Add(-CookieLifetime) } // thinks the cookie is new
	g2.AddMACs(msg)                                                     // same mac1 as g's, so the old reply fits
	if err := g2.ConsumeReply(reply); err != nil {
		t.Fatalf("stale generator: %v", err)
	}
	g2.AddMACs(msg)
	if c.CheckMAC2(msg, srcA) {
		t.Fatal("mac2 with a cookie from the previous secret accepted")
	}
	// A new reply gives a cookie that works again.
	reply, err = c.CreateReply(msg, srcA)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.ConsumeReply(reply); err != nil {
		t.Fatal(err)
	}
	g.AddMACs(msg)
	if !c.CheckMAC2(msg, srcA) {
		t.Fatal("new cookie rejected")
	}
}

// TestCookieConcurrent exercises every method from several goroutines
// (meaningful under -race).
func TestCookieConcurrent(t *testing.T) {
	g, c, clk, r := cookiePair(t)
	msgs := testMessages(t, r)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := bytes.Clone(msgs[w%2])
			for i := range 200 {
				g.AddMACs(msg)
				if !c.CheckMAC1(msg) {
					t.Error("mac1 rejected")
					return
				}
				c.CheckMAC2(msg, srcA)
				if reply, err := c.CreateReply(msg, srcA); err == nil {
					_ = g.ConsumeReply(reply)
				}
				if w == 0 && i%50 == 0 {
					clk.advance(CookieLifetime / 2)
				}
			}
		}()
	}
	wg.Wait()
}

func TestCheckMAC1NoAllocs(t *testing.T) {
	g, c, _, r := cookiePair(t)
	msg := testMessages(t, r)[0]
	g.AddMACs(msg)
	c.CheckMAC1(msg)
	if a := testing.AllocsPerRun(100, func() { c.CheckMAC1(msg) }); a != 0 {
		t.Fatalf("CheckMAC1: %v allocs", a)
	}
}

func BenchmarkCheckMAC1(b *testing.B) {
	r := mustLocal(b)
	g, c := NewCookieGenerator(r.Public), NewCookieChecker(r.Public)
	msg := make([]byte, wire.InitiationSize)
	(&wire.Initiation{Sender: 1}).Marshal(msg)
	g.AddMACs(msg)
	b.SetBytes(wire.InitiationSize)
	b.ReportAllocs()
	for b.Loop() {
		if !c.CheckMAC1(msg) {
			b.Fatal("rejected")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkCheckMAC1Parallel(b *testing.B) {
	r := mustLocal(b)
	g, c := NewCookieGenerator(r.Public), NewCookieChecker(r.Public)
	msg := make([]byte, wire.InitiationSize)
	(&wire.Initiation{Sender: 1}).Marshal(msg)
	g.AddMACs(msg)
	b.SetBytes(wire.InitiationSize)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !c.CheckMAC1(msg) {
				b.Error("rejected")
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkCheckMAC2(b *testing.B) {
	r := mustLocal(b)
	g, c := NewCookieGenerator(r.Public), NewCookieChecker(r.Public)
	msg := make([]byte, wire.InitiationSize)
	(&wire.Initiation{Sender: 1}).Marshal(msg)
	g.AddMACs(msg)
	reply, _ := c.CreateReply(msg, srcA)
	if err := g.ConsumeReply(reply); err != nil {
		b.Fatal(err)
	}
	g.AddMACs(msg)
	b.SetBytes(wire.InitiationSize)
	b.ReportAllocs()
	for b.Loop() {
		if !c.CheckMAC2(msg, srcA) {
			b.Fatal("rejected")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkAddMACs(b *testing.B) {
	r := mustLocal(b)
	g := NewCookieGenerator(r.Public)
	msg := make([]byte, wire.InitiationSize)
	(&wire.Initiation{Sender: 1}).Marshal(msg)
	b.SetBytes(wire.InitiationSize)
	b.ReportAllocs()
	for b.Loop() {
		g.AddMACs(msg)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}
