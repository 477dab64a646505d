package ipc

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/tun"
)

const testOffset = 16

// pairUp builds the front's link over fake frames and the engine's device
// over the link's files, in one process.
func pairUp(t testing.TB, m Mode, fake *fakeFrames) (Link, tun.Device) {
	t.Helper()
	dev := tun.NewDevice(fake, tun.Format{Name: "fake0"}, nil)
	link, err := NewLink(m, dev, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := Open(link.Setup(), link.Files(), func() (int, error) { return 1420, nil }, t.Logf)
	link.HandedOver()
	if err != nil {
		link.Close()
		t.Fatal(err)
	}
	if sc, ok := link.(SourceChecker); ok {
		sc.SetSourceCheck(func([]byte) bool { return true }) // tests of the check set their own
	}
	link.Start()
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { eng.Close(); link.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("closing the link and the engine's device hung")
		}
	})
	return link, eng
}

func bufs(n, size int) ([][]byte, []int) {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, testOffset+size)
	}
	return b, make([]int, n)
}

func counter(cs []metrics.Counter, name string) uint64 {
	for _, c := range cs {
		if c.Name == name {
			return c.Value
		}
	}
	return 0
}

// TestRoundTrip: packets cross both ways, whole, in order, none lost or
// repeated, through each mode that relays through the front.
func TestRoundTrip(t *testing.T) {
	for _, m := range []Mode{Shm, Seqpacket} {
		t.Run(string(m), func(t *testing.T) {
			const n, size = 3000, 1200
			fake := newFakeFrames(size, 7)
			fake.limit = n
			fake.keep = true
			_, eng := pairUp(t, m, fake)

			// Front to engine.
			b, sizes := bufs(eng.BatchSize(), tun.MaxSegmentSize)
			got := int64(0)
			deadline := time.Now().Add(10 * time.Second)
			for got < n {
				if time.Now().After(deadline) {
					t.Fatalf("received %d of %d packets", got, n)
				}
				k, err := eng.Read(b, sizes, testOffset)
				if err != nil {
					t.Fatalf("Read after %d packets: %v", got, err)
				}
				for i := range k {
					if sizes[i] != size {
						t.Fatalf("packet %d: %d bytes, want %d", got, sizes[i], size)
					}
					if seq := int64(binary.BigEndian.Uint64(b[i][testOffset+12:])); seq != got {
						t.Fatalf("packet %d carries number %d: lost, repeated or reordered", got, seq)
					}
					got++
				}
			}

			// Engine to front, in batches of 13.
			const back = 1000
			batch := make([][]byte, 0, 13)
			for i := 0; i < back; {
				batch = batch[:0]
				for len(batch) < cap(batch) && i < back {
					p := make([]byte, testOffset+100+i%300, testOffset+tun.MaxSegmentSize)
					binary.BigEndian.PutUint64(p[testOffset:], uint64(i))
					batch = append(batch, p)
					i++
				}
				if k, err := eng.Write(batch, testOffset); err != nil || k != len(batch) {
					t.Fatalf("Write: %d of %d, %v", k, len(batch), err)
				}
			}
			if !fake.waitWritten(back, 10*time.Second) {
				t.Fatalf("the front wrote %d of %d packets", fake.nWritten.Load(), back)
			}
			fake.wmu.Lock()
			defer fake.wmu.Unlock()
			for i, p := range fake.written {
				if len(p) != 100+i%300 || binary.BigEndian.Uint64(p) != uint64(i) {
					t.Fatalf("packet %d back at the front: %d bytes, number %d", i, len(p), binary.BigEndian.Uint64(p))
				}
			}
		})
	}
}

// TestBackpressure: an engine that stops reading makes the front's relay
// wait, not drop: once the relay has found the flow full (its full-wait
// counter), it has taken no more than the flow holds, counted no drop, and
// everything it took arrives, in order, once the engine reads again.
func TestBackpressure(t *testing.T) {
	for _, m := range []Mode{Shm, Seqpacket} {
		t.Run(string(m), func(t *testing.T) {
			fake := newFakeFrames(1400, 0) // an endless burst
			link, eng := pairUp(t, m, fake)
			waits := map[Mode]string{Shm: "flow_to_engine_ring_tx_full_waits", Seqpacket: "flow_to_engine_full_waits"}[m]
			deadline := time.Now().Add(10 * time.Second)
			for counter(link.Stats(), waits) == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the relay never waited on a full flow (%s = 0)", waits)
				}
				time.Sleep(time.Millisecond)
			}
			fake.mu.Lock()
			taken := fake.next
			fake.mu.Unlock()
			// What the flow can hold: the ring's data, or the socket's
			// buffer, in 1400-byte packets, and a batch in the relay's hands.
			if limit := int64(4<<20/1400 + 2*eng.BatchSize()); taken > limit {
				t.Errorf("the relay took %d packets while the engine read nothing, over the %d the flow can hold", taken, limit)
			}
			for _, c := range link.Stats() {
				if len(c.Name) > 5 && c.Name[:5] == "drop_" && c.Value != 0 {
					t.Errorf("%s = %d", c.Name, c.Value)
				}
			}
			b, sizes := bufs(eng.BatchSize(), tun.MaxSegmentSize)
			next := int64(0)
			for next < taken {
				k, err := eng.Read(b, sizes, testOffset)
				if err != nil {
					t.Fatal(err)
				}
				for i := range k {
					if seq := int64(binary.BigEndian.Uint64(b[i][testOffset+12:])); seq != next {
						t.Fatalf("packet %d carries number %d", next, seq)
					}
					next++
				}
			}
			t.Logf("%s held %d packets of 1400 bytes when its relay first waited", m, taken)
		})
	}
}

// TestCloseUnblocks: closing the engine's device unblocks its Read, and
// the link closes while its relay waits on a full flow.
func TestCloseUnblocks(t *testing.T) {
	for _, m := range []Mode{Shm, Seqpacket} {
		t.Run(string(m), func(t *testing.T) {
			fake := newFakeFrames(1400, 1)
			fake.limit = 1
			_, eng := pairUp(t, m, fake)
			b, sizes := bufs(eng.BatchSize(), tun.MaxSegmentSize)
			if _, err := eng.Read(b, sizes, testOffset); err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { _, err := eng.Read(b, sizes, testOffset); errc <- err }()
			testenv.WaitBlocked(t, "tun.(*device).Read")
			eng.Close()
			select {
			case err := <-errc:
				if !errors.Is(err, os.ErrClosed) {
					t.Fatalf("Read after Close: %v, want os.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock Read")
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": FD, "fd": FD, " SHM ": Shm, "seqpacket": Seqpacket, "inproc": Inproc} {
		if m, err := ParseMode(in); err != nil || m != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, m, err, want)
		}
	}
	if _, err := ParseMode("pipe"); err == nil {
		t.Error("ParseMode(\"pipe\") accepted an unknown mode")
	}
}

func TestOpenRefusesWrongFiles(t *testing.T) {
	for _, m := range []Mode{FD, Shm, Seqpacket} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		if _, err := Open(Setup{Mode: m, Format: tun.Format{Name: "x"}}, []*os.File{r}, nil, nil); err == nil && m != FD && m != Seqpacket {
			t.Errorf("%s: Open with one pipe succeeded", m)
		}
	}
	if _, err := Open(Setup{Mode: Inproc}, nil, nil, nil); err == nil {
		t.Error("Open(inproc) in an engine succeeded")
	}
}

// TestSourceCheck: in the relaying modes the front writes to the TUN only
// the engine's packets whose source the check allows; the others, and
// frames too short to have a source, are dropped and counted.
func TestSourceCheck(t *testing.T) {
	for _, m := range []Mode{Shm, Seqpacket} {
		t.Run(string(m), func(t *testing.T) {
			fake := newFakeFrames(100, 1)
			fake.limit = 0
			fake.keep = true
			link, eng := pairUp(t, m, fake)
			allowed := netip.MustParsePrefix("100.64.0.0/24")
			link.(SourceChecker).SetSourceCheck(func(pkt []byte) bool {
				return pkt[0]>>4 == 4 && allowed.Contains(netip.AddrFrom4([4]byte(pkt[12:16])))
			})
			packet := func(src string, size int) []byte {
				p := make([]byte, testOffset+size, testOffset+tun.MaxSegmentSize)
				p[testOffset] = 0x45
				a := netip.MustParseAddr(src).As4()
				copy(p[testOffset+12:], a[:])
				return p
			}
			batch := [][]byte{
				packet("100.64.0.7", 60),  // allowed
				packet("198.18.0.1", 60),  // not a peer's
				packet("127.0.0.1", 60),   // forged local
				packet("100.64.0.9", 60),  // allowed
				packet("100.64.0.10", 12), // too short
			}
			if _, err := eng.Write(batch, testOffset); err != nil {
				t.Fatal(err)
			}
			if !fake.waitWritten(2, 10*time.Second) {
				t.Fatalf("the front wrote %d of 2 packets", fake.nWritten.Load())
			}
			deadline := time.Now().Add(10 * time.Second)
			for counter(link.Stats(), "drop_front_source") < 2 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			st := link.Stats()
			if counter(st, "drop_front_source") != 2 || counter(st, "drop_front_malformed") != 1 {
				t.Errorf("drop_front_source %d (want 2), drop_front_malformed %d (want 1)",
					counter(st, "drop_front_source"), counter(st, "drop_front_malformed"))
			}
			fake.wmu.Lock()
			defer fake.wmu.Unlock()
			if len(fake.written) != 2 {
				t.Fatalf("%d packets written, want 2", len(fake.written))
			}
			for _, p := range fake.written {
				if !allowed.Contains(netip.AddrFrom4([4]byte(p[12:16]))) {
					t.Errorf("a packet from %v reached the TUN", netip.AddrFrom4([4]byte(p[12:16])))
				}
			}
		})
	}
}
