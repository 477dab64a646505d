package udp

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/ptun-vpn/ptun/transport"
)

// payload is datagram i's content: recognisable bytes of length n.
func payload(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*7 + j)
	}
	if n >= 2 {
		b[0], b[1] = byte(i>>8), byte(i)
	}
	return b
}

// sizesFromBytes turns fuzz input into a list of datagram sizes that mixes
// equal runs, shorter tails, empties and big ones (1 MiB in all at most).
func sizesFromBytes(data []byte) []int {
	var sizes []int
	total := 0
	for i := 0; i+1 < len(data) && len(sizes) < 300; i += 2 {
		rep := int(data[i]>>4) + 1
		var size int
		switch data[i] & 3 {
		case 0:
			size = int(data[i+1]) // small, may be 0
		case 1:
			size = 1000 + int(data[i+1])*2
		case 2:
			size = 1420
		default:
			size = int(data[i+1]) * 257 // up to 65535
		}
		for range rep {
			if total += size; total > 1<<20 {
				return sizes
			}
			sizes = append(sizes, size)
		}
	}
	return sizes
}

// spread runs split then drains the stash until empty, with room buffers
// per call, and returns every datagram handed out.
func spread(t testing.TB, bufs [][]byte, msgs []rxMsg, room int) (out [][]byte, eps []transport.Endpoint) {
	var st pending
	sizes := make([]int, len(bufs))
	ep := make([]transport.Endpoint, len(bufs))
	n := split(bufs[:room], sizes[:room], ep[:room], msgs, &st)
	for i := range n {
		out = append(out, bytes.Clone(bufs[i][:sizes[i]]))
		eps = append(eps, ep[i])
	}
	for calls := 0; !st.empty(); calls++ {
		if calls > 100000 {
			t.Fatal("stash does not drain")
		}
		n := st.drain(bufs[:room], sizes[:room], ep[:room])
		if n == 0 {
			t.Fatal("drain made no progress")
		}
		for i := range n {
			out = append(out, bytes.Clone(bufs[i][:sizes[i]]))
			eps = append(eps, ep[i])
		}
	}
	if len(st.buf) != 0 || len(st.ents) != 0 || st.head != 0 {
		t.Fatal("drained stash was not reset")
	}
	return out, eps
}

// roundTrip plans GSO runs over datagrams, lays each run out as the kernel
// would deliver it with GRO (one message, segment size = the run's first
// datagram), splits them back with room buffers per call and checks that
// exactly the original datagrams come out, in order.
func roundTrip(t testing.TB, dgrams [][]byte, maxBytes, room int) {
	var msgs []rxMsg
	var joined [][]byte
	bufLen := 1
	for i := 0; i < len(dgrams); {
		end := gsoRunEnd(dgrams, i, maxBytes)
		if end <= i || end > len(dgrams) || end-i > maxGSOSegments {
			t.Fatalf("run [%d,%d) is out of bounds", i, end)
		}
		var run []byte
		for j := i; j < end; j++ {
			if end-i > 1 && (len(dgrams[j]) == 0 || len(dgrams[j]) > len(dgrams[i]) ||
				(j < end-1 && len(dgrams[j]) != len(dgrams[i]))) {
				t.Fatalf("run [%d,%d) mixes sizes", i, end)
			}
			run = append(run, dgrams[j]...)
		}
		if end-i > 1 && len(run) > maxBytes {
			t.Fatalf("run of %d bytes exceeds %d", len(run), maxBytes)
		}
		seg := 0
		if end-i > 1 {
			seg = len(dgrams[i])
		}
		ep := transport.Endpoint{
			Remote:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(len(msgs))}), uint16(i)),
			Local:   netip.AddrFrom4([4]byte{198, 19, 0, byte(len(msgs))}),
			IfIndex: uint32(len(msgs)),
		}
		msgs = append(msgs, rxMsg{n: len(run), seg: seg, ep: ep})
		joined = append(joined, run)
		bufLen = max(bufLen, len(run))
		i = end
	}
	// Like one read, split gets at most as many messages as buffers.
	var got [][]byte
	for start := 0; start < len(msgs); start += room {
		batch := msgs[start:min(start+room, len(msgs))]
		rb := make([][]byte, room)
		for j := range rb {
			rb[j] = make([]byte, bufLen)
			if j < len(batch) {
				copy(rb[j], joined[start+j])
			}
		}
		out, _ := spread(t, rb, batch, room)
		got = append(got, out...)
	}
	if len(got) != len(dgrams) {
		t.Fatalf("got %d datagrams back, want %d", len(got), len(dgrams))
	}
	for i := range got {
		if !bytes.Equal(got[i], dgrams[i]) {
			t.Fatalf("datagram %d: got %d bytes, want %d (contents differ)", i, len(got[i]), len(dgrams[i]))
		}
	}
}

func TestGSORunsRoundTrip(t *testing.T) {
	cases := map[string][]int{
		"equal":          {1420, 1420, 1420, 1420},
		"short tail":     {1420, 1420, 1420, 700, 1420, 1420},
		"longer breaks":  {500, 500, 1420, 1420, 100},
		"empties":        {0, 0, 1420, 0, 1420, 1420, 0},
		"over 64":        repeat(100, 200),
		"over 64KiB":     repeat(30, 9000),
		"one":            {1},
		"biggest":        {65507, 65507, 3},
		"many short":     repeat(300, 1),
		"all different":  {1, 2, 3, 4, 5, 6},
		"descending two": {10, 9, 8},
	}
	for name, sizes := range cases {
		for _, room := range []int{1, 3, 64, 128} {
			t.Run(fmt.Sprintf("%s/room=%d", name, room), func(t *testing.T) {
				dgrams := make([][]byte, len(sizes))
				for i, n := range sizes {
					dgrams[i] = payload(i, n)
				}
				roundTrip(t, dgrams, maxGSOBytes4, room)
			})
		}
	}
}

func repeat(n, size int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = size
	}
	return s
}

func TestGSORunEndLimits(t *testing.T) {
	bufs := make([][]byte, 100)
	for i := range bufs {
		bufs[i] = make([]byte, 1000)
	}
	if end := gsoRunEnd(bufs, 0, maxGSOBytes4); end != maxGSOSegments {
		t.Fatalf("run of equal 1000-byte datagrams ends at %d, want %d", end, maxGSOSegments)
	}
	if end := gsoRunEnd(bufs, 0, 5500); end != 5 {
		t.Fatalf("run limited to 5500 bytes ends at %d, want 5", end)
	}
	bufs[3] = bufs[3][:10]
	if end := gsoRunEnd(bufs, 0, maxGSOBytes4); end != 4 {
		t.Fatalf("run with a shorter 4th datagram ends at %d, want 4", end)
	}
}

// TestSplitOverflowKeepsOrder checks the path where one read returns more
// datagrams than buffers: a GRO message is cut and the rest waits.
func TestSplitOverflowKeepsOrder(t *testing.T) {
	room := 8
	bufs := make([][]byte, room)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	// Message 0: 5 segments of 100; message 1: one datagram; message 2:
	// 4 segments of 50 (the last 20); message 3: one empty datagram.
	var want [][]byte
	var msgs []rxMsg
	add := func(seg int, sizes ...int) {
		j := len(msgs)
		var joined []byte
		for _, n := range sizes {
			d := payload(len(want), n)
			want = append(want, d)
			joined = append(joined, d...)
		}
		copy(bufs[j], joined)
		msgs = append(msgs, rxMsg{n: len(joined), seg: seg, ep: transport.Endpoint{
			Remote: netip.AddrPortFrom(netip.IPv6Loopback(), uint16(j+1)), Local: netip.IPv6Loopback(), IfIndex: 1}})
	}
	add(100, 100, 100, 100, 100, 100)
	add(0, 33)
	add(50, 50, 50, 50, 20)
	add(0, 0)
	got, eps := spread(t, bufs, msgs, room)
	if len(got) != len(want) {
		t.Fatalf("got %d datagrams, want %d", len(got), len(want))
	}
	wantPorts := []uint16{1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 4}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d differs: got %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
		if eps[i].Remote.Port() != wantPorts[i] || eps[i].Local != netip.IPv6Loopback() || eps[i].IfIndex != 1 {
			t.Fatalf("datagram %d from %v, want port %d", i, eps[i], wantPorts[i])
		}
	}
}

func TestSplitSkipsDropped(t *testing.T) {
	bufs := [][]byte{make([]byte, 100), make([]byte, 100), make([]byte, 100)}
	copy(bufs[0], "aaaa")
	copy(bufs[2], "cc")
	msgs := []rxMsg{{n: 4}, {n: 100, drop: true}, {n: 2}}
	got, _ := spread(t, bufs, msgs, 3)
	if len(got) != 2 || string(got[0]) != "aaaa" || string(got[1]) != "cc" {
		t.Fatalf("got %q, want [aaaa cc]", got)
	}
	// A drop first: later messages must not overwrite ones not yet moved.
	bufs = [][]byte{make([]byte, 100), make([]byte, 100), make([]byte, 100), make([]byte, 100)}
	copy(bufs[1], "a")
	copy(bufs[2], "bbccdd")
	msgs = []rxMsg{{n: 100, drop: true}, {n: 1}, {n: 6, seg: 2}}
	got, _ = spread(t, bufs, msgs, 4)
	if len(got) != 4 || string(got[0]) != "a" || string(got[1]) != "bb" || string(got[3]) != "dd" {
		t.Fatalf("got %q, want [a bb cc dd]", got)
	}
}

func TestKernelAtLeast(t *testing.T) {
	for _, c := range []struct {
		rel  string
		want bool
	}{
		{"5.12.0", true}, {"5.11.22-generic", false}, {"6.1.0-18-amd64", true},
		{"4.19.0", false}, {"5.12", true}, {"5", false}, {"", false}, {"x.y", false},
		{"10.0.1", true}, {"6.18.44-fc-v769", true},
	} {
		if got := kernelAtLeast(c.rel, 5, 12); got != c.want {
			t.Errorf("kernelAtLeast(%q, 5, 12) = %v, want %v", c.rel, got, c.want)
		}
	}
}

func TestOptionsFromEnv(t *testing.T) {
	t.Setenv("PTUN_DISABLE_UDP_GSO", "")
	t.Setenv("PTUN_DISABLE_UDP_GRO", "")
	if o := OptionsFromEnv(Options{}); o.DisableGSO || o.DisableGRO {
		t.Fatalf("no env: %+v, want offloads on", o)
	}
	if o := OptionsFromEnv(Options{DisableGRO: true}); !o.DisableGRO {
		t.Fatal("OptionsFromEnv cleared an option set by the caller")
	}
	t.Setenv("PTUN_DISABLE_UDP_GSO", "1")
	if o := OptionsFromEnv(Options{}); !o.DisableGSO || o.DisableGRO {
		t.Fatalf("PTUN_DISABLE_UDP_GSO=1: %+v", o)
	}
	t.Setenv("PTUN_DISABLE_UDP_GRO", "1")
	if o := OptionsFromEnv(Options{}); !o.DisableGSO || !o.DisableGRO {
		t.Fatalf("both set: %+v", o)
	}
}

// FuzzGSORoundTrip checks that for any mix of datagram sizes, planning GSO
// runs and splitting the coalesced messages (with any number of buffers per
// call) gives back exactly the datagrams sent, in order.
func FuzzGSORoundTrip(f *testing.F) {
	f.Add([]byte{0x32, 200, 0x02, 0, 0xf1, 3}, uint8(128), false)
	f.Add([]byte{0xf2, 0, 0xf2, 0, 0x10, 0}, uint8(1), true)
	f.Add([]byte{0x03, 255, 0x03, 255, 0x73, 20}, uint8(5), false)
	f.Add([]byte{0x40, 0, 0x41, 7, 0x00, 1}, uint8(64), true)
	f.Fuzz(func(t *testing.T, data []byte, room uint8, v6 bool) {
		sizes := sizesFromBytes(data)
		maxBytes := maxGSOBytes4
		if v6 {
			maxBytes = maxGSOBytes6
		}
		dgrams := make([][]byte, len(sizes))
		for i, n := range sizes {
			if n > maxBytes {
				n = maxBytes
			}
			dgrams[i] = payload(i, n)
		}
		roundTrip(t, dgrams, maxBytes, max(1, int(room)%(BatchSize+1)))
	})
}

// FuzzSplit feeds split arbitrary messages (any lengths and segment sizes,
// drops included) and checks that the datagrams handed out are the
// messages' bytes, cut at the segment size, in order, nothing lost.
func FuzzSplit(f *testing.F) {
	f.Add([]byte{10, 3, 0, 5, 0, 0, 200, 7, 1}, uint8(4))
	f.Add([]byte{255, 1, 0, 255, 255, 0}, uint8(2))
	f.Add([]byte{0, 0, 0, 1, 0, 1, 2, 2, 0}, uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, room uint8) {
		r := max(1, int(room)%(BatchSize+1))
		var msgs []rxMsg
		for i := 0; i+2 < len(data) && len(msgs) < r; i += 3 {
			n := int(data[i]) * 13
			seg := int(data[i+1])
			msgs = append(msgs, rxMsg{n: n, seg: seg, drop: data[i+2] == 1,
				ep: transport.EndpointFrom(netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(len(msgs))))})
		}
		bufLen := 1
		for _, m := range msgs {
			bufLen = max(bufLen, m.n)
		}
		bufs := make([][]byte, r)
		var want [][]byte
		for j := range bufs {
			bufs[j] = make([]byte, bufLen)
			if j >= len(msgs) {
				continue
			}
			m := msgs[j]
			p := payload(j, m.n)
			copy(bufs[j], p)
			if m.drop {
				continue
			}
			if m.seg <= 0 || m.n <= m.seg {
				want = append(want, p)
				continue
			}
			for lo := 0; lo < m.n; lo += m.seg {
				want = append(want, p[lo:min(lo+m.seg, m.n)])
			}
		}
		got, _ := spread(t, bufs, msgs, r)
		if len(got) != len(want) {
			t.Fatalf("got %d datagrams, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("datagram %d differs", i)
			}
		}
	})
}

// FuzzKernelAtLeast checks the release parser never panics and agrees with
// plain version ordering on well-formed releases.
func FuzzKernelAtLeast(f *testing.F) {
	f.Add("6.18.44-fc-v769", uint16(5), uint16(12))
	f.Add("5.12.0", uint16(5), uint16(12))
	f.Add("4.9", uint16(5), uint16(0))
	f.Add("", uint16(0), uint16(0))
	f.Fuzz(func(t *testing.T, rel string, a, b uint16) {
		kernelAtLeast(rel, 5, 12)
		maj, mnr := int(a%1000), int(b%1000)
		got := kernelAtLeast(fmt.Sprintf("%d.%d.0-x", maj, mnr), 5, 12)
		if want := maj > 5 || (maj == 5 && mnr >= 12); got != want {
			t.Fatalf("%d.%d: got %v, want %v", maj, mnr, got, want)
		}
	})
}
