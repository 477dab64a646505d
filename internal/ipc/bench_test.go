package ipc

import (
	"fmt"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/tun"
)

// BenchmarkFlow measures what crossing between front and engine costs in
// each mode that relays through the front, against inproc (the engine
// reading and writing the fake TUN directly: the Device layer's own cost,
// with no IPC; the fake copies no payload). fd is not here: its engine reads the kernel's TUN itself,
// as inproc does, so it adds nothing per packet; tun's BenchmarkReadBatch
// and BenchmarkWriteBatch measure that path.
//
// to-engine: the front reads bursts of `batch` frames from the TUN (then
// finds it empty) and the engine reads them. to-front: the engine writes
// batches of `batch` packets and the front writes them to the TUN. Sizes:
// 1420-byte packets and 64 KiB GSO super-packets.
func BenchmarkFlow(b *testing.B) {
	for _, m := range []Mode{Inproc, Shm, Seqpacket} {
		for _, dir := range []string{"to-engine", "to-front"} {
			for _, size := range []int{1420, tun.MaxSegmentSize} {
				for _, batch := range []int{1, 8, 32, 128} {
					name := fmt.Sprintf("%s/%s/size=%d/batch=%d", m, dir, size, batch)
					b.Run(name, func(b *testing.B) {
						if dir == "to-engine" {
							benchToEngine(b, m, size, batch)
						} else {
							benchToFront(b, m, size, batch)
						}
					})
				}
			}
		}
	}
}

func engineFor(b *testing.B, m Mode, fake *fakeFrames) tun.Device {
	if m == Inproc {
		return tun.NewDevice(fake, tun.Format{Name: "fake0"}, nil)
	}
	_, eng := pairUp(b, m, fake)
	return eng
}

func report(b *testing.B, size int, elapsed time.Duration) {
	secs := elapsed.Seconds()
	b.ReportMetric(float64(b.N)/secs, "pkts/s")
	b.ReportMetric(float64(b.N)*float64(size)*8/secs/1e9, "Gbit/s")
}

func benchToEngine(b *testing.B, m Mode, size, batch int) {
	fake := newFakeFrames(size, batch)
	eng := engineFor(b, m, fake)
	bufs, sizes := bufs(eng.BatchSize(), tun.MaxSegmentSize)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for got := 0; got < b.N; {
		n, err := eng.Read(bufs, sizes, testOffset)
		if err != nil {
			b.Fatal(err)
		}
		got += n
	}
	elapsed := time.Since(start)
	b.StopTimer()
	report(b, size, elapsed)
}

func benchToFront(b *testing.B, m Mode, size, batch int) {
	fake := newFakeFrames(size, batch)
	eng := engineFor(b, m, fake)
	pkts := make([][]byte, batch)
	for i := range pkts {
		pkts[i] = make([]byte, testOffset+size, testOffset+tun.MaxSegmentSize)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; {
		k := min(batch, b.N-sent)
		if n, err := eng.Write(pkts[:k], testOffset); err != nil || n != k {
			b.Fatalf("Write: %d of %d: %v", n, k, err)
		}
		sent += k
	}
	if !fake.waitWritten(int64(b.N), 30*time.Second) {
		b.Fatalf("the front wrote %d of %d", fake.nWritten.Load(), b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	report(b, size, elapsed)
}
