package udp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/transport"
)

var (
	lo4 = netip.MustParseAddr("127.0.0.1")
	lo6 = netip.MustParseAddr("::1")
)

// open opens a Transport on port 0 and closes it when the test ends.
func open(t testing.TB, opts Options) (*Transport, []transport.ReceiveFunc, uint16) {
	t.Helper()
	tr := New(opts)
	fns, port, err := tr.Open(0)
	if err != nil {
		t.Fatalf("Open(0): %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	if port == 0 || len(fns) == 0 {
		t.Fatalf("Open(0) returned port %d and %d ReceiveFuncs", port, len(fns))
	}
	return tr, fns, port
}

type received struct {
	b     []byte
	from  netip.AddrPort
	local netip.Addr // the address it was sent to, if the transport knows
	ep    transport.Endpoint
}

// collect runs every ReceiveFunc in its own goroutine and passes copies of
// what they read to the returned channel. When the test ends it closes tr
// and waits for the goroutines to return net.ErrClosed.
func collect(t testing.TB, tr *Transport, fns []transport.ReceiveFunc) <-chan received {
	t.Helper()
	out := make(chan received, 4096)
	done := make(chan struct{})
	errs := make(chan error, len(fns))
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs, sizes, eps := batch(tr.BatchSize())
			for {
				n, err := fn(bufs, sizes, eps)
				if err != nil {
					errs <- err
					return
				}
				for i := range n {
					select {
					case out <- received{bytes.Clone(bufs[i][:sizes[i]]), eps[i].Remote, eps[i].Local, eps[i]}:
					case <-done:
					}
				}
			}
		}()
	}
	t.Cleanup(func() {
		close(done)
		tr.Close()
		wg.Wait()
		close(errs)
		for err := range errs {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("ReceiveFunc ended with %v, want net.ErrClosed", err)
			}
		}
	})
	return out
}

// failLosses makes tr's ReceiveFuncs fail, rather than block for ever,
// when a datagram a test reads directly was lost: they return a timeout
// after d.
func failLosses(t testing.TB, tr *Transport, d time.Duration) {
	t.Helper()
	tr.socks.Load().each(func(s *socket) { s.conn.SetReadDeadline(time.Now().Add(d)) })
}

func batch(n int) ([][]byte, []int, []transport.Endpoint) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, transport.MaxDatagramSize)
	}
	return bufs, make([]int, n), make([]transport.Endpoint, n)
}

// expect reads n datagrams from ch, failing after a generous timeout.
func expect(t testing.TB, ch <-chan received, n int) []received {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	got := make([]received, 0, n)
	for len(got) < n {
		select {
		case r := <-ch:
			got = append(got, r)
		case <-timeout.C:
			t.Fatalf("received %d of %d datagrams", len(got), n)
		}
	}
	return got
}

// expectNone checks that nothing more arrives for a short while.
func expectNone(t testing.TB, ch <-chan received) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("unexpected datagram of %d bytes from %v", len(r.b), r.from)
	case <-time.After(50 * time.Millisecond):
	}
}

func counter(tr *Transport, name string) uint64 {
	for _, c := range tr.Stats() {
		if c.Name == name {
			return c.Value
		}
	}
	return 0
}

// checkSame fails unless got holds want's datagrams in order, all from.
func checkSame(t testing.TB, got []received, want [][]byte, from netip.AddrPort) {
	t.Helper()
	for i := range want {
		if !bytes.Equal(got[i].b, want[i]) {
			t.Fatalf("datagram %d: got %d bytes, want %d (or contents differ)", i, len(got[i].b), len(want[i]))
		}
		if got[i].from != from {
			t.Fatalf("datagram %d from %v, want %v", i, got[i].from, from)
		}
	}
}

// mixedSizes is a batch with equal runs, shorter tails, empty and single
// datagrams, small enough in all that an unprivileged receive buffer holds
// it.
var mixedSizes = []int{
	1420, 1420, 1420, 1420, 1420, 700, 1420, 1420, 0, 1, 1, 1,
	2000, 2000, 2000, 100, 1420, 60, 60, 60, 60, 60, 60, 60, 60, 59,
	1000, 999, 1001, 1, 0, 0, 512, 512, 512, 512, 512, 512, 512, 512,
	512, 512, 512, 512, 512, 512, 512, 512, 512, 512, 512, 512, 8000, 8000,
}

func TestSendReceiveMixedSizes(t *testing.T) {
	for _, fam := range []struct {
		name string
		addr netip.Addr
	}{{"ipv4", lo4}, {"ipv6", lo6}} {
		for _, mode := range []struct {
			name string
			opts Options
		}{
			{"offloads", Options{}},
			{"no-gso", Options{DisableGSO: true}},
			{"no-gro", Options{DisableGRO: true}},
			{"none", Options{DisableGSO: true, DisableGRO: true}},
		} {
			t.Run(fam.name+"/"+mode.name, func(t *testing.T) {
				a, _, portA := open(t, mode.opts)
				b, fns, portB := open(t, mode.opts)
				ch := collect(t, b, fns)
				var want [][]byte
				for round := range 3 {
					bufs := make([][]byte, len(mixedSizes))
					for i, n := range mixedSizes {
						bufs[i] = payload(round*1000+i, n)
					}
					if err := a.Send(bufs, transport.EndpointFrom(netip.AddrPortFrom(fam.addr, portB))); err != nil {
						t.Fatalf("Send: %v", err)
					}
					want = append(want, bufs...)
					checkSame(t, expect(t, ch, len(bufs)), bufs, netip.AddrPortFrom(fam.addr, portA))
				}
				expectNone(t, ch)
				if got := counter(a, "udp_tx_datagrams"); got != uint64(len(want)) {
					t.Errorf("udp_tx_datagrams = %d, want %d", got, len(want))
				}
				if got := counter(b, "udp_rx_datagrams"); got != uint64(len(want)) {
					t.Errorf("udp_rx_datagrams = %d, want %d", got, len(want))
				}
				if tx := counter(a, "udp_tx_syscalls"); tx > 3 {
					t.Errorf("udp_tx_syscalls = %d for 3 batches: not batched", tx)
				}
				gso, _ := a.Offloads()
				_, gro := b.Offloads()
				if gso != !mode.opts.DisableGSO || gro != !mode.opts.DisableGRO {
					t.Errorf("Offloads: gso %v gro %v with %+v", gso, gro, mode.opts)
				}
				if gotGSO := counter(a, "udp_tx_gso_messages") > 0; gotGSO != gso {
					t.Errorf("udp_tx_gso_messages > 0 is %v with GSO %v", gotGSO, gso)
				}
				if gotGRO := counter(b, "udp_rx_gro_messages") > 0; gotGRO != (gso && gro) {
					t.Errorf("udp_rx_gro_messages > 0 is %v with GSO %v, GRO %v", gotGRO, gso, gro)
				}
				t.Logf("sender %v, receiver %v", a.Stats()[:7], b.Stats()[:3])
			})
		}
	}
}

// TestGROSplit sends 30 datagrams as one segmented send and reads them back
// as 30 datagrams of the right sizes and contents, from one GRO message.
func TestGROSplit(t *testing.T) {
	for _, tail := range []int{1000, 333} {
		a, _, portA := open(t, Options{})
		b, fns, portB := open(t, Options{})
		if gso, _ := a.Offloads(); !gso {
			testenv.SkipOrFail(t, "the kernel has no UDP GSO")
		}
		if _, gro := b.Offloads(); !gro {
			testenv.SkipOrFail(t, "UDP GRO is off on this kernel")
		}
		bufs := make([][]byte, 30)
		for i := range bufs {
			bufs[i] = payload(i, 1000)
		}
		bufs[29] = payload(29, tail)
		failLosses(t, b, 10*time.Second)
		if err := a.Send(bufs, transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))); err != nil {
			t.Fatal(err)
		}
		if got := counter(a, "udp_tx_gso_messages"); got != 1 {
			t.Fatalf("udp_tx_gso_messages = %d, want 1", got)
		}
		rb, sizes, eps := batch(BatchSize)
		n, err := fns[0](rb, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		if n != 30 {
			t.Fatalf("one read returned %d datagrams, want 30", n)
		}
		for i := range n {
			if !bytes.Equal(rb[i][:sizes[i]], bufs[i]) || eps[i].Remote != netip.AddrPortFrom(lo4, portA) {
				t.Fatalf("datagram %d: %d bytes from %v, want %d from port %d", i, sizes[i], eps[i], len(bufs[i]), portA)
			}
		}
		if got := counter(b, "udp_rx_gro_messages"); got != 1 {
			t.Fatalf("udp_rx_gro_messages = %d, want 1 (coalesced)", got)
		}
		if got := counter(b, "udp_rx_syscalls"); got != 1 {
			t.Fatalf("udp_rx_syscalls = %d, want 1", got)
		}
	}
}

// TestGROOverflow makes one read return more datagrams than the caller has
// buffers: the rest must come, in order, from the next call without a
// syscall.
func TestGROOverflow(t *testing.T) {
	a, _, _ := open(t, Options{})
	b, fns, portB := open(t, Options{})
	if gso, _ := a.Offloads(); !gso {
		testenv.SkipOrFail(t, "the kernel has no UDP GSO")
	}
	if _, gro := b.Offloads(); !gro {
		testenv.SkipOrFail(t, "UDP GRO is off on this kernel")
	}
	// Three segmented sends of 64 datagrams each: 192 > BatchSize.
	var want [][]byte
	for i := range 192 {
		want = append(want, payload(i, 200))
	}
	failLosses(t, b, 10*time.Second)
	if err := a.Send(want, transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))); err != nil {
		t.Fatal(err)
	}
	rb, sizes, eps := batch(BatchSize)
	var got [][]byte
	for calls := 0; len(got) < len(want); calls++ {
		if calls == 10 {
			t.Fatalf("got %d of %d datagrams in %d reads", len(got), len(want), calls)
		}
		n, err := fns[0](rb, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			got = append(got, bytes.Clone(rb[i][:sizes[i]]))
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d out of order or damaged", i)
		}
	}
	if got := counter(b, "udp_rx_syscalls"); got != 1 {
		t.Errorf("udp_rx_syscalls = %d, want 1 (the overflow comes from the stash)", got)
	}
}

func TestKillSwitchEnv(t *testing.T) {
	t.Setenv("PTUN_DISABLE_UDP_GSO", "1")
	t.Setenv("PTUN_DISABLE_UDP_GRO", "1")
	a, _, portA := open(t, OptionsFromEnv(Options{}))
	b, fns, portB := open(t, OptionsFromEnv(Options{}))
	for _, tr := range []*Transport{a, b} {
		if gso, gro := tr.Offloads(); gso || gro {
			t.Fatalf("Offloads = %v, %v with both kill switches set", gso, gro)
		}
	}
	ch := collect(t, b, fns)
	bufs := make([][]byte, 30)
	for i := range bufs {
		bufs[i] = payload(i, 1000)
	}
	if err := a.Send(bufs, transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))); err != nil {
		t.Fatal(err)
	}
	checkSame(t, expect(t, ch, 30), bufs, netip.AddrPortFrom(lo4, portA))
	if g, r := counter(a, "udp_tx_gso_messages"), counter(b, "udp_rx_gro_messages"); g != 0 || r != 0 {
		t.Fatalf("gso messages %d, gro messages %d with offloads off", g, r)
	}
}

func TestOpenCloseReopen(t *testing.T) {
	tr := New(Options{})
	t.Cleanup(func() { tr.Close() })
	fns, port, err := tr.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(fns) != 2 {
		t.Logf("%d sockets (IPv6 missing?)", len(fns))
	}
	if _, _, err := tr.Open(0); !errors.Is(err, transport.ErrAlreadyOpen) {
		t.Fatalf("second Open: %v, want ErrAlreadyOpen", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	bufs, sizes, eps := batch(BatchSize)
	for _, fn := range fns {
		if _, err := fn(bufs, sizes, eps); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReceiveFunc after Close: %v, want net.ErrClosed", err)
		}
	}
	if err := tr.Send([][]byte{{1}}, transport.EndpointFrom(netip.AddrPortFrom(lo4, port))); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send after Close: %v, want net.ErrClosed", err)
	}
	if got := counter(tr, "drop_udp_send_closed"); got != 1 {
		t.Fatalf("drop_udp_send_closed = %d, want 1", got)
	}
	// Reopen on the same port, and it works.
	fns2, port2, err := tr.Open(port)
	if err != nil {
		t.Fatalf("reopen on port %d: %v", port, err)
	}
	if port2 != port {
		t.Fatalf("reopened on %d, want %d", port2, port)
	}
	ch := collect(t, tr, fns2)
	if err := tr.Send([][]byte{[]byte("to myself")}, transport.EndpointFrom(netip.AddrPortFrom(lo6, port))); err != nil {
		t.Fatal(err)
	}
	if r := expect(t, ch, 1)[0]; string(r.b) != "to myself" || r.from != netip.AddrPortFrom(lo6, port) {
		t.Fatalf("got %q from %v", r.b, r.from)
	}
}

func TestPortBusy(t *testing.T) {
	a, _, port := open(t, Options{})
	_ = a
	b := New(Options{})
	t.Cleanup(func() { b.Close() })
	if _, _, err := b.Open(port); !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("Open on a busy port: %v, want EADDRINUSE", err)
	}
	if _, _, err := b.Open(0); err != nil {
		t.Fatalf("Open(0) after a failed Open: %v", err)
	}
}

// TestPortZeroBothFamilies checks that Open(0) binds IPv4 and IPv6 on one
// port, and that the IPv6 socket is IPv6-only: an IPv4 datagram arrives
// through the IPv4 socket only, with an unmapped source.
func TestPortZeroBothFamilies(t *testing.T) {
	a, _, portA := open(t, Options{})
	b, fns, portB := open(t, Options{})
	if len(fns) != 2 {
		testenv.SkipOrFail(t, "host lacks IPv4 or IPv6 on loopback")
	}
	chs := []<-chan received{collect(t, b, fns[:1]), collect(t, b, fns[1:])}
	for i, to := range []netip.Addr{lo4, lo6} {
		if err := a.Send([][]byte{[]byte(to.String())}, transport.EndpointFrom(netip.AddrPortFrom(to, portB))); err != nil {
			t.Fatal(err)
		}
		r := expect(t, chs[i], 1)[0]
		if string(r.b) != to.String() || r.from != netip.AddrPortFrom(to, portA) {
			t.Fatalf("socket %d got %q from %v", i, r.b, r.from)
		}
	}
	// An IPv4-mapped destination leaves from the IPv4 socket.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(lo4.As16()), portB)
	if err := a.Send([][]byte{[]byte("mapped")}, transport.EndpointFrom(mapped)); err != nil {
		t.Fatal(err)
	}
	if r := expect(t, chs[0], 1)[0]; string(r.b) != "mapped" || r.from != netip.AddrPortFrom(lo4, portA) {
		t.Fatalf("mapped send: got %q from %v", r.b, r.from)
	}
	expectNone(t, chs[1])
}

func TestCloseUnblocksReceivers(t *testing.T) {
	tr, fns, _ := open(t, Options{})
	errs := make(chan error, len(fns))
	for _, fn := range fns {
		go func() {
			bufs, sizes, eps := batch(BatchSize)
			_, err := fn(bufs, sizes, eps)
			errs <- err
		}()
	}
	time.Sleep(20 * time.Millisecond) // let them block in the poller
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(5 * time.Second)
	for range fns {
		select {
		case err := <-errs:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("blocked ReceiveFunc returned %v, want net.ErrClosed", err)
			}
		case <-timeout:
			t.Fatal("Close did not unblock a ReceiveFunc")
		}
	}
}

// withSendmmsg replaces the send syscall of tr for the test.
func withSendmmsg(tr *Transport, f func(fd uintptr, hdrs []unix.Mmsghdr) (int, unix.Errno)) {
	tr.sendmmsg = f
}

// TestGSOFallback makes the kernel's answer to a segmented send EIO (no
// checksum offload) or EINVAL: GSO must turn off for good, be counted, and
// every datagram still arrive, in order.
func TestGSOFallback(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EIO, unix.EINVAL} {
		t.Run(errno.Error(), func(t *testing.T) {
			a, _, portA := open(t, Options{})
			if gso, _ := a.Offloads(); !gso {
				testenv.SkipOrFail(t, "the kernel has no UDP GSO")
			}
			refused := 0
			withSendmmsg(a, func(fd uintptr, hdrs []unix.Mmsghdr) (int, unix.Errno) {
				// Like the kernel: messages go out up to the first
				// segmented one, which fails.
				for i := range hdrs {
					if hdrs[i].Hdr.Controllen > 0 {
						if i == 0 {
							refused++
							return 0, errno
						}
						return sendmmsg(fd, hdrs[:i])
					}
				}
				return sendmmsg(fd, hdrs)
			})
			b, fns, portB := open(t, Options{})
			ch := collect(t, b, fns)
			// One plain datagram first, so the refused one is mid-batch.
			bufs := [][]byte{payload(0, 50)}
			for i := 1; i <= 30; i++ {
				bufs = append(bufs, payload(i, 1000))
			}
			for range 2 {
				if err := a.Send(bufs, transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))); err != nil {
					t.Fatalf("Send: %v", err)
				}
				checkSame(t, expect(t, ch, len(bufs)), bufs, netip.AddrPortFrom(lo4, portA))
			}
			if refused != 1 {
				t.Fatalf("%d segmented sends tried, want 1 (GSO off after the first failure)", refused)
			}
			if got := counter(a, "udp_gso_disabled"); got != 1 {
				t.Fatalf("udp_gso_disabled = %d, want 1", got)
			}
			if gso, _ := a.Offloads(); gso {
				t.Fatal("Offloads still reports GSO on")
			}
			// Off for good: a reopen does not bring it back.
			a.Close()
			if _, _, err := a.Open(0); err != nil {
				t.Fatal(err)
			}
			if gso, _ := a.Offloads(); gso {
				t.Fatal("GSO came back after reopen")
			}
		})
	}
}

// TestSendStallIsBounded fakes a send buffer that never drains: Send must
// wait, then give up, count every datagram by reason and return the error.
func TestSendStallIsBounded(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EAGAIN, unix.ENOBUFS} {
		t.Run(errno.Error(), func(t *testing.T) {
			a, _, _ := open(t, Options{})
			a.stallLimit = 50 * time.Millisecond
			withSendmmsg(a, func(uintptr, []unix.Mmsghdr) (int, unix.Errno) { return 0, errno })
			bufs := make([][]byte, 200)
			for i := range bufs {
				bufs[i] = payload(i, 100)
			}
			err := a.Send(bufs, transport.EndpointFrom(netip.AddrPortFrom(lo4, 9)))
			if !errors.Is(err, errno) {
				t.Fatalf("Send: %v, want %v", err, errno)
			}
			name := "drop_udp_send_" + errnoName(int(errno))
			if got := counter(a, name); got != 200 {
				t.Fatalf("%s = %d, want 200", name, got)
			}
			if counter(a, "udp_tx_waits") == 0 {
				t.Fatal("udp_tx_waits = 0: Send did not wait")
			}
			// The deadline is cleared: the socket works again.
			withSendmmsg(a, sendmmsg)
			b, fns, portB := open(t, Options{})
			ch := collect(t, b, fns)
			if err := a.Send(bufs[:3], transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))); err != nil {
				t.Fatalf("Send after a stall: %v", err)
			}
			expect(t, ch, 3)
		})
	}
}

// TestSendPartialWaitResumes: the first call takes a few messages, the
// next one finds the buffer full once; everything must still go out, in
// order, with the wait counted.
func TestSendPartialWaitResumes(t *testing.T) {
	a, _, portA := open(t, Options{DisableGSO: true})
	calls := 0
	withSendmmsg(a, func(fd uintptr, hdrs []unix.Mmsghdr) (int, unix.Errno) {
		calls++
		switch calls {
		case 1:
			return sendmmsg(fd, hdrs[:5])
		case 2:
			return 0, unix.EAGAIN
		}
		return sendmmsg(fd, hdrs)
	})
	b, fns, portB := open(t, Options{})
	ch := collect(t, b, fns)
	bufs := make([][]byte, 20)
	for i := range bufs {
		bufs[i] = payload(i, 300)
	}
	if err := a.Send(bufs, transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))); err != nil {
		t.Fatal(err)
	}
	checkSame(t, expect(t, ch, 20), bufs, netip.AddrPortFrom(lo4, portA))
	if got := counter(a, "udp_tx_waits"); got != 1 {
		t.Fatalf("udp_tx_waits = %d, want 1", got)
	}
}

// TestSendOversizeDatagram: a datagram too big for IPv4 is refused by the
// kernel (EMSGSIZE) and counted; its neighbours still go out.
func TestSendOversizeDatagram(t *testing.T) {
	a, _, portA := open(t, Options{})
	b, fns, portB := open(t, Options{})
	ch := collect(t, b, fns)
	bufs := [][]byte{payload(0, 100), payload(1, maxGSOBytes4+1), payload(2, 100), payload(3, 100)}
	err := a.Send(bufs, transport.EndpointFrom(netip.AddrPortFrom(lo4, portB)))
	if !errors.Is(err, unix.EMSGSIZE) {
		t.Fatalf("Send: %v, want EMSGSIZE", err)
	}
	got := expect(t, ch, 3)
	checkSame(t, got, [][]byte{bufs[0], bufs[2], bufs[3]}, netip.AddrPortFrom(lo4, portA))
	if n := counter(a, "drop_udp_send_emsgsize"); n != 1 {
		t.Fatalf("drop_udp_send_emsgsize = %d, want 1", n)
	}
	if gso, _ := a.Offloads(); !gso && counter(a, "udp_gso_disabled") != 0 {
		t.Fatal("an oversize datagram turned GSO off")
	}
}

func TestSendInvalidEndpoint(t *testing.T) {
	a, _, _ := open(t, Options{})
	for _, ep := range []netip.AddrPort{{}, netip.AddrPortFrom(lo4, 0)} {
		if err := a.Send([][]byte{{1}, {2}}, transport.EndpointFrom(ep)); err == nil {
			t.Fatalf("Send to %v succeeded", ep)
		}
	}
	if got := counter(a, "drop_udp_send_einval"); got != 4 {
		t.Fatalf("drop_udp_send_einval = %d, want 4", got)
	}
}

func TestSetMark(t *testing.T) {
	testenv.RequireRoot(t)
	tr, _, _ := open(t, Options{})
	check := func(want int) {
		t.Helper()
		tr.socks.Load().each(func(s *socket) {
			var got int
			var err error
			s.rc.Control(func(fd uintptr) { got, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
			if err != nil || got != want {
				t.Fatalf("SO_MARK = %d (%v), want %d", got, err, want)
			}
		})
	}
	if err := tr.SetMark(0x5150); err != nil {
		t.Fatal(err)
	}
	check(0x5150)
	// Kept across a reopen.
	tr.Close()
	if _, _, err := tr.Open(0); err != nil {
		t.Fatal(err)
	}
	check(0x5150)
	if err := tr.SetMark(0); err != nil {
		t.Fatal(err)
	}
	check(0)
}

func TestSocketBuffers(t *testing.T) {
	testenv.RequireRoot(t)
	tr, _, _ := open(t, Options{SocketBuffer: 3 << 20})
	tr.socks.Load().each(func(s *socket) {
		for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
			var got int
			s.rc.Control(func(fd uintptr) { got, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, opt) })
			if got < 3<<20 {
				t.Fatalf("buffer option %d = %d, want >= %d (forced)", opt, got, 3<<20)
			}
		}
	})
}

// TestNoAllocations pins rule 6: a steady-state send and receive of a
// batch allocates nothing, with and without offloads, with and without a
// sticky source.
func TestNoAllocations(t *testing.T) {
	// No CoDel: on a loaded machine it may drop a datagram of the burst
	// (as it should), which this test of allocations would wait for.
	for i, opts := range []Options{{DisableAQM: true}, {DisableGSO: true, DisableGRO: true, DisableAQM: true},
		{DisableAQM: true}, {DisableGSO: true, DisableGRO: true, DisableAQM: true}} {
		a, _, _ := open(t, opts)
		b, fns, portB := open(t, opts)
		failLosses(t, b, time.Minute)
		send := make([][]byte, 64)
		for i := range send {
			send[i] = payload(i, 1420)
		}
		rb, sizes, eps := batch(BatchSize)
		to := transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))
		if i >= 2 {
			to.Local = lo4
		}
		round := func() {
			if err := a.Send(send, to); err != nil {
				t.Fatal(err)
			}
			for got := 0; got < len(send); {
				n, err := fns[0](rb, sizes, eps)
				if err != nil {
					t.Fatal(err)
				}
				got += n
			}
		}
		round()
		if allocs := testing.AllocsPerRun(50, round); allocs != 0 {
			t.Fatalf("%+v, to %v: %.1f allocations per batch, want 0", opts, to, allocs)
		}
	}
}

func TestStatsNames(t *testing.T) {
	tr := New(Options{})
	seen := map[string]bool{}
	for _, c := range tr.Stats() {
		if seen[c.Name] {
			t.Fatalf("duplicate counter %q", c.Name)
		}
		seen[c.Name] = true
	}
	for _, name := range []string{"udp_rx_datagrams", "udp_tx_datagrams", "udp_rx_syscalls",
		"udp_tx_syscalls", "udp_gso_disabled", "udp_gro_disabled", "udp_sticky_unavailable",
		"udp_sticky_source_cleared"} {
		if !seen[name] {
			t.Errorf("Stats lacks %s", name)
		}
	}
	if errnoName(int(unix.EAGAIN)) != "eagain" {
		t.Errorf("errnoName(EAGAIN) = %q", errnoName(int(unix.EAGAIN)))
	}
}

// BenchmarkSendReceive sends batches of 1, 32 and 128 (BatchSize)
// 1420-byte datagrams over IPv4 loopback with one Send and reads each batch
// back with the receive function, in lockstep, with offloads on (gso+gro),
// GSO only, and off (none); sticky sources are on in all three (received
// endpoints carry the local address), and "+src" sends to the endpoint as
// received, from its local address, while "nosticky" turns sticky sources
// off. One op is one batch both ways: bytes/s counts datagram payload
// bytes, and txcalls/op and rxcalls/op the syscalls.
func BenchmarkSendReceive(bm *testing.B) {
	for _, mode := range []struct {
		name string
		opts Options
		src  bool
	}{
		{"gso+gro", Options{}, false},
		{"gso", Options{DisableGRO: true}, false},
		{"none", Options{DisableGSO: true, DisableGRO: true}, false},
		{"gso+gro+src", Options{}, true},
		{"none+src", Options{DisableGSO: true, DisableGRO: true}, true},
		{"gso+gro+nosticky", Options{DisableSticky: true}, false},
	} {
		for _, n := range []int{1, 32, BatchSize} {
			bm.Run(mode.name+"/batch="+strconv.Itoa(n), func(bm *testing.B) {
				benchSendReceive(bm, mode.opts, n, mode.src)
			})
		}
	}
}

func benchSendReceive(bm *testing.B, opts Options, n int, src bool) {
	a, _, portA := open(bm, opts)
	b, fns, portB := open(bm, opts)
	// A lost datagram must fail the benchmark, not hang it.
	b.socks.Load().v4.conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
	send := make([][]byte, n)
	for i := range send {
		send[i] = payload(i, 1420)
	}
	rb, sizes, eps := batch(BatchSize)
	to := transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))
	if src {
		to.Local = lo4
	}
	from := netip.AddrPortFrom(lo4, portA)
	// round sends the batch and receives it back; full checks that each
	// datagram arrives whole, in order, from a (otherwise only its size).
	round := func(full bool) {
		if err := a.Send(send, to); err != nil {
			bm.Fatal(err)
		}
		for got := 0; got < n; {
			m, err := fns[0](rb, sizes, eps)
			if err != nil {
				bm.Fatal(err)
			}
			for i := range m {
				if full && (!bytes.Equal(rb[i][:sizes[i]], send[got+i]) || eps[i].Remote != from ||
					eps[i].Local.IsValid() == opts.DisableSticky) {
					bm.Fatalf("datagram %d: %d bytes from %v, want datagram %d from %v", got+i, sizes[i], eps[i], got+i, from)
				}
				if sizes[i] != 1420 {
					bm.Fatalf("datagram %d of the batch: %d bytes, want 1420", got+i, sizes[i])
				}
			}
			got += m
		}
	}
	round(true)
	tx, rx := counter(a, "udp_tx_syscalls"), counter(b, "udp_rx_syscalls")
	bm.SetBytes(int64(n * 1420))
	bm.ReportAllocs()
	for bm.Loop() {
		round(false)
	}
	bm.ReportMetric(float64(bm.N*n)/bm.Elapsed().Seconds(), "pkts/s")
	bm.ReportMetric(float64(counter(a, "udp_tx_syscalls")-tx)/float64(bm.N), "txcalls/op")
	bm.ReportMetric(float64(counter(b, "udp_rx_syscalls")-rx)/float64(bm.N), "rxcalls/op")
}

// recordingOpener is a SocketOpener that opens sockets here, as a front
// would, and records what it was asked.
type recordingOpener struct {
	mu    sync.Mutex
	opens []string
	marks []uint32
	fail  error
}

func (o *recordingOpener) Open(v6 bool, port uint16, mark uint32, bufSize int) (*os.File, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.opens = append(o.opens, fmt.Sprintf("v6=%v port=%d mark=%#x buf=%d", v6, port, mark, bufSize))
	if o.fail != nil {
		return nil, o.fail
	}
	fd, err := OpenSocket(v6, port, mark, bufSize, nil)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "udp"), nil
}

func (o *recordingOpener) SetMark(f *os.File, mark uint32) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.marks = append(o.marks, mark)
	return unix.SetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
}

// TestSocketOpener checks that a Transport with Options.Sockets takes no
// privileged step itself: the opener opens both sockets on one port and
// sets the mark, and the sockets it hands over carry traffic.
func TestSocketOpener(t *testing.T) {
	testenv.RequireRoot(t)
	op := &recordingOpener{}
	tr := New(Options{Sockets: op, SocketBuffer: 1 << 20})
	if err := tr.SetMark(0x77); err != nil {
		t.Fatal(err)
	}
	fns, port, err := tr.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	want := []string{
		fmt.Sprintf("v6=false port=0 mark=0x77 buf=%d", 1<<20),
		fmt.Sprintf("v6=true port=%d mark=0x77 buf=%d", port, 1<<20),
	}
	if fmt.Sprint(op.opens) != fmt.Sprint(want) {
		t.Fatalf("opener calls %q, want %q", op.opens, want)
	}
	if err := tr.SetMark(0x78); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(op.marks) != "[120 120]" {
		t.Fatalf("SetMark calls %v, want two of 0x78", op.marks)
	}
	tr.socks.Load().each(func(s *socket) {
		var got int
		s.rc.Control(func(fd uintptr) { got, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		if got != 0x78 {
			t.Fatalf("SO_MARK = %#x, want 0x78", got)
		}
	})
	rx := collect(t, tr, fns)
	if err := tr.Send([][]byte{[]byte("through handed sockets")}, transport.EndpointFrom(netip.AddrPortFrom(lo4, port))); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-rx:
		if string(r.b) != "through handed sockets" {
			t.Fatalf("received %q", r.b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing received through the handed sockets")
	}

	// A refusal reaches Open's caller with its errno, and nothing is left
	// open.
	op2 := &recordingOpener{fail: unix.EPERM}
	tr2 := New(Options{Sockets: op2})
	if _, _, err := tr2.Open(80); !errors.Is(err, unix.EPERM) {
		t.Fatalf("Open with a refusing opener: %v, want EPERM", err)
	}
	if tr2.socks.Load() != nil {
		t.Fatal("a failed Open left sockets")
	}
}
