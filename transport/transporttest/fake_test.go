package transporttest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/transport"
)

func openT(t *testing.T, f *Fake, port uint16) transport.ReceiveFunc {
	t.Helper()
	fns, got, err := f.Open(port)
	if err != nil {
		t.Fatal(err)
	}
	if len(fns) != 1 || (port != 0 && got != port) || (port == 0 && got != DefaultPort) {
		t.Fatalf("Open(%d) = %d funcs, port %d", port, len(fns), got)
	}
	t.Cleanup(func() { f.Close() })
	return fns[0]
}

func batch() ([][]byte, []int, []transport.Endpoint) {
	bufs := make([][]byte, BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, transport.MaxDatagramSize)
	}
	return bufs, make([]int, BatchSize), make([]transport.Endpoint, BatchSize)
}

// readN reads n datagrams with recv, in order, failing after a timeout.
func readN(t *testing.T, recv transport.ReceiveFunc, n int) ([]string, []netip.AddrPort) {
	t.Helper()
	data, eps := readEndpoints(t, recv, n)
	remotes := make([]netip.AddrPort, len(eps))
	for i, ep := range eps {
		remotes[i] = ep.Remote
	}
	return data, remotes
}

// readEndpoints is readN returning the whole endpoints.
func readEndpoints(t *testing.T, recv transport.ReceiveFunc, n int) ([]string, []transport.Endpoint) {
	t.Helper()
	type result struct {
		data []string
		eps  []transport.Endpoint
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		bufs, sizes, eps := batch()
		for len(r.data) < n {
			k, err := recv(bufs, sizes, eps)
			if err != nil {
				r.err = err
				break
			}
			for i := range k {
				r.data = append(r.data, string(bufs[i][:sizes[i]]))
				r.eps = append(r.eps, eps[i])
			}
		}
		done <- r
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("receive: %v", r.err)
		}
		return r.data, r.eps
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %d datagrams", n)
		return nil, nil
	}
}

func counter(f *Fake, name string) uint64 {
	for _, c := range f.Stats() {
		if c.Name == name {
			return c.Value
		}
	}
	panic("no counter " + name)
}

func msgs(prefix string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

func TestPairDeliversBothWays(t *testing.T) {
	a, b := NewPair()
	ra := openT(t, a, 0)
	rb := openT(t, b, 4242)
	if err := a.Send(msgs("ab", 200), transport.EndpointFrom(b.LocalAddr(0))); err != nil {
		t.Fatal(err)
	}
	data, eps := readN(t, rb, 200)
	for i := range data {
		if data[i] != fmt.Sprintf("ab%d", i) || eps[i] != netip.AddrPortFrom(AddrA, DefaultPort) {
			t.Fatalf("datagram %d: %q from %v", i, data[i], eps[i])
		}
	}
	// Reply to the source seen, IPv4-mapped as a dual-stack socket might.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(eps[0].Addr().As16()), eps[0].Port())
	if err := b.Send(msgs("ba", 3), transport.EndpointFrom(mapped)); err != nil {
		t.Fatal(err)
	}
	data, eps = readN(t, ra, 3)
	if data[2] != "ba2" || eps[0] != netip.AddrPortFrom(AddrB, 4242) {
		t.Fatalf("got %q from %v", data, eps[0])
	}
	if got := counter(a, "fake_tx_datagrams"); got != 200 {
		t.Fatalf("fake_tx_datagrams = %d", got)
	}
	if got := counter(b, "fake_rx_datagrams"); got != 200 {
		t.Fatalf("fake_rx_datagrams = %d", got)
	}
}

func TestUnknownEndpointAndClosedPeerDrop(t *testing.T) {
	a, b := NewPair()
	openT(t, a, 0)
	if err := a.Send(msgs("x", 3), transport.EndpointFrom(netip.MustParseAddrPort("198.18.9.9:51820"))); err != nil {
		t.Fatalf("send to unknown endpoint: %v", err)
	}
	if got := counter(a, "drop_unknown_endpoint"); got != 3 {
		t.Fatalf("drop_unknown_endpoint = %d, want 3", got)
	}
	// b is closed: like a host with no listener.
	if err := a.Send(msgs("y", 2), transport.EndpointFrom(b.LocalAddr(0))); err != nil {
		t.Fatal(err)
	}
	openT(t, b, 0)
	// Open, but on another port.
	if err := a.Send(msgs("z", 1), transport.EndpointFrom(netip.AddrPortFrom(AddrB, 9))); err != nil {
		t.Fatal(err)
	}
	if got := counter(a, "drop_peer_closed"); got != 3 {
		t.Fatalf("drop_peer_closed = %d, want 3", got)
	}
}

func TestBackpressure(t *testing.T) {
	a, b := NewPairWithQueue(4)
	openT(t, a, 0)
	rb := openT(t, b, 0)
	sent := make(chan error, 1)
	go func() { sent <- a.Send(msgs("m", 10), transport.EndpointFrom(b.LocalAddr(0))) }()
	select {
	case err := <-sent:
		t.Fatalf("Send of 10 into a queue of 4 returned (%v) without a reader", err)
	case <-time.After(50 * time.Millisecond):
	}
	if counter(a, "fake_send_waits") == 0 {
		t.Fatal("fake_send_waits = 0 while the sender is blocked")
	}
	data, _ := readN(t, rb, 10)
	for i, d := range data {
		if d != fmt.Sprintf("m%d", i) {
			t.Fatalf("datagram %d is %q: order changed", i, d)
		}
	}
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Send still blocked after the reader drained the queue")
	}
	if got := counter(a, "drop_peer_closed") + counter(a, "drop_closed"); got != 0 {
		t.Fatalf("%d datagrams dropped under backpressure", got)
	}
}

func TestCloseUnblocksSenders(t *testing.T) {
	for _, who := range []string{"sender", "receiver"} {
		t.Run(who, func(t *testing.T) {
			a, b := NewPairWithQueue(1)
			openT(t, a, 0)
			openT(t, b, 0)
			sent := make(chan error, 1)
			go func() { sent <- a.Send(msgs("m", 5), transport.EndpointFrom(b.LocalAddr(0))) }()
			time.Sleep(20 * time.Millisecond)
			closing := a
			if who == "receiver" {
				closing = b
			}
			closing.Close()
			select {
			case err := <-sent:
				if who == "sender" && !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Send on a closed Fake: %v, want net.ErrClosed", err)
				}
				if who == "receiver" && err != nil {
					t.Fatalf("Send to a closed peer: %v, want nil (a network drop)", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock Send")
			}
			dropped := counter(a, "drop_closed") + counter(a, "drop_peer_closed")
			if got := counter(a, "fake_tx_datagrams") + dropped; got != 5 {
				t.Fatalf("delivered + dropped = %d, want 5", got)
			}
		})
	}
}

func TestInject(t *testing.T) {
	a, _ := NewPair()
	from := netip.MustParseAddrPort("[2001:db8::7]:1234")
	if err := a.Inject([]byte("early"), from); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Inject into a closed Fake: %v", err)
	}
	ra := openT(t, a, 0)
	for i := range 3 {
		if err := a.Inject([]byte(fmt.Sprint("in", i)), from); err != nil {
			t.Fatal(err)
		}
	}
	data, eps := readN(t, ra, 3)
	if data[0] != "in0" || data[2] != "in2" || eps[1] != from {
		t.Fatalf("got %q from %v", data, eps)
	}
}

func TestOnSend(t *testing.T) {
	a, _ := NewPair()
	openT(t, a, 0)
	var seen []string
	a.OnSend(func(b []byte, to transport.Endpoint) { seen = append(seen, string(b)+"@"+to.String()) })
	if err := a.Send(msgs("o", 2), transport.EndpointFrom(netip.MustParseAddrPort("198.18.7.7:1"))); err != nil {
		t.Fatal(err)
	}
	a.OnSend(nil)
	a.Send(msgs("p", 1), transport.EndpointFrom(netip.MustParseAddrPort("198.18.7.7:1")))
	if len(seen) != 2 || seen[1] != "o1@198.18.7.7:1" {
		t.Fatalf("observed %q", seen)
	}
}

func TestOpenCloseOpen(t *testing.T) {
	a, b := NewPair()
	r1 := openT(t, a, 0)
	if _, _, err := a.Open(0); !errors.Is(err, transport.ErrAlreadyOpen) {
		t.Fatalf("second Open: %v", err)
	}
	blocked := make(chan error, 1)
	go func() {
		bufs, sizes, eps := batch()
		_, err := r1(bufs, sizes, eps)
		blocked <- err
	}()
	testenv.WaitBlocked(t, "transporttest.(*session).receive")
	a.Close()
	a.Close()
	select {
	case err := <-blocked:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked receive after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock the receiver")
	}
	bufs, sizes, eps := batch()
	if _, err := r1(bufs, sizes, eps); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("receive after Close: %v", err)
	}
	if err := a.Send(msgs("c", 1), transport.EndpointFrom(b.LocalAddr(0))); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	r2 := openT(t, a, 7000)
	openT(t, b, 0)
	if err := b.Send(msgs("again", 1), transport.EndpointFrom(a.LocalAddr(0))); err != nil {
		t.Fatal(err)
	}
	if data, _ := readN(t, r2, 1); data[0] != "again0" {
		t.Fatalf("after reopen got %q", data)
	}
	if err := a.SetMark(3); err != nil || a.Mark() != 3 {
		t.Fatalf("SetMark: %v, Mark %d", err, a.Mark())
	}
}

// BenchmarkPair measures the fake's cost per datagram, so tests that use
// it know what they pay.
func BenchmarkPair(bm *testing.B) {
	a, b := NewPair()
	if _, _, err := a.Open(0); err != nil {
		bm.Fatal(err)
	}
	fns, _, _ := b.Open(0)
	defer a.Close()
	defer b.Close()
	send := make([][]byte, BatchSize)
	for i := range send {
		send[i] = make([]byte, 1420)
	}
	bufs, sizes, eps := batch()
	to := b.LocalAddr(0)
	bm.SetBytes(int64(BatchSize * 1420))
	bm.ReportAllocs()
	bm.ResetTimer()
	for range bm.N {
		if err := a.Send(send, transport.EndpointFrom(to)); err != nil {
			bm.Fatal(err)
		}
		for got := 0; got < BatchSize; {
			n, err := fns[0](bufs, sizes, eps)
			if err != nil {
				bm.Fatal(err)
			}
			got += n
		}
	}
	bm.ReportMetric(float64(bm.N*BatchSize)/bm.Elapsed().Seconds(), "pkts/s")
}

// TestHoldSends: a held side's Send blocks (counted in fake_send_waits)
// until release, then delivers; Close unblocks it with net.ErrClosed.
func TestHoldSends(t *testing.T) {
	a, b := NewPair()
	openT(t, a, 0)
	recv := openT(t, b, 0)
	release := a.HoldSends()
	sent := make(chan error, 1)
	go func() { sent <- a.Send(msgs("held", 2), transport.EndpointFrom(b.LocalAddr(0))) }()
	for deadline := time.Now().Add(5 * time.Second); counter(a, "fake_send_waits") == 0; {
		if time.Now().After(deadline) {
			t.Fatal("Send did not block on a held side")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-sent:
		t.Fatalf("held Send returned %v", err)
	default:
	}
	release()
	release()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if got, _ := readN(t, recv, 2); got[0] != "held0" || got[1] != "held1" {
		t.Fatalf("received %q", got)
	}

	a.HoldSends()
	go func() { sent <- a.Send(msgs("closed", 1), transport.EndpointFrom(b.LocalAddr(0))) }()
	for deadline := time.Now().Add(5 * time.Second); counter(a, "fake_send_waits") < 2; {
		if time.Now().After(deadline) {
			t.Fatal("second Send did not block")
		}
		time.Sleep(time.Millisecond)
	}
	a.Close()
	if err := <-sent; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("held Send after Close: %v, want net.ErrClosed", err)
	}
}

// TestStickySource: a side with two addresses hears a datagram on the
// second, and the reply to the endpoint as received leaves from it; once
// the address is gone the reply leaves from the first address, counted,
// with ErrSourceCleared.
func TestStickySource(t *testing.T) {
	a, b := NewPair()
	ra := openT(t, a, 0)
	rb := openT(t, b, 0)
	second := netip.MustParseAddr("198.18.0.12")
	b.AddAddr(second)
	if err := a.Send(msgs("q", 1), transport.EndpointFrom(netip.AddrPortFrom(second, DefaultPort))); err != nil {
		t.Fatal(err)
	}
	_, eps := readEndpoints(t, rb, 1)
	want := transport.Endpoint{Remote: netip.AddrPortFrom(AddrA, DefaultPort), Local: second, IfIndex: IfIndex}
	if eps[0] != want {
		t.Fatalf("received endpoint %v, want %v", eps[0], want)
	}
	if err := b.Send(msgs("r", 1), eps[0]); err != nil {
		t.Fatal(err)
	}
	if _, got := readEndpoints(t, ra, 1); got[0].Remote.Addr() != second || got[0].Local != AddrA {
		t.Fatalf("reply %v, want from %v to %v", got[0], second, AddrA)
	}
	b.RemoveAddr(second)
	if err := b.Send(msgs("s", 2), eps[0]); !errors.Is(err, transport.ErrSourceCleared) {
		t.Fatalf("Send from a removed address: %v, want ErrSourceCleared", err)
	}
	if _, got := readN(t, ra, 2); got[1].Addr() != AddrB {
		t.Fatalf("reply from %v after the address went, want %v", got[1], AddrB)
	}
	if n := counter(b, "fake_sticky_source_cleared"); n != 1 {
		t.Fatalf("fake_sticky_source_cleared = %d, want 1", n)
	}
	// Datagrams to the removed address are lost, as on a network.
	a.Send(msgs("t", 1), transport.EndpointFrom(netip.AddrPortFrom(second, DefaultPort)))
	if n := counter(a, "drop_unknown_endpoint"); n != 1 {
		t.Fatalf("drop_unknown_endpoint = %d, want 1", n)
	}
}
