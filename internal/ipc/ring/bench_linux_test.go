package ring

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkRing moves b.N records of one size through a DefaultDataSize ring,
// producer (Push: copy in) on the benchmark goroutine, consumer (copy out,
// as a write to the TUN device would) on another; both sides work in batches
// of the given number of records per Flush and per Release. One op is one
// record; the time runs until the consumer has read the last one.
func BenchmarkRing(b *testing.B) {
	for _, size := range []int{1420, gsoMax} {
		for _, batch := range []int{1, 8, 32, 128} {
			b.Run(fmt.Sprintf("size=%d/batch=%d", size, batch), func(b *testing.B) {
				benchRing(b, size, batch)
			})
		}
	}
}

func benchRing(b *testing.B, size, batch int) {
	tr := newTestRing(b, DefaultDataSize)
	src := make([]byte, size)
	fillRecord(src, 1)
	dst := make([]byte, size)
	done := make(chan error, 1)
	tr.goroutine(func() {
		var err error
		for {
			var rec []byte
			if rec, err = tr.c.Next(true); err != nil {
				break
			}
			copy(dst, rec)
			for range batch - 1 {
				if rec, err = tr.c.Next(false); err != nil {
					break
				}
				copy(dst, rec)
			}
			if err != nil && err != ErrEmpty {
				break
			}
			tr.c.Release()
		}
		tr.c.Release()
		if err == ErrClosed {
			err = nil
		}
		done <- err
	})
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if err := tr.p.Push(src); err != nil {
			b.Fatal(err)
		}
		if (i+1)%batch == 0 {
			tr.p.Flush()
		}
	}
	tr.p.Flush()
	tr.p.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if got := stat(b, tr.c, "ring_rx_records"); got != uint64(b.N) {
		b.Fatalf("consumer read %d records of %d", got, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "pkts/s")
	b.ReportMetric(float64(b.N)*float64(size)*8/elapsed.Seconds()/1e9, "Gbit/s")
	b.ReportMetric(float64(stat(b, tr.p, "ring_tx_kicks")+stat(b, tr.c, "ring_rx_kicks"))/float64(b.N), "kicks/op")
}

// BenchmarkPingPong measures a round trip of a 64-byte record over two
// rings (request, echo), the case where a side sleeps on every record, for
// several spin budgets before sleeping: the evidence for defaultSpins. One
// op is one round trip.
func BenchmarkPingPong(b *testing.B) {
	for _, spins := range []int{0, defaultSpins, 16} {
		b.Run(fmt.Sprintf("spins=%d", spins), func(b *testing.B) {
			req, resp := newTestRing(b, MinDataSize), newTestRing(b, MinDataSize)
			for _, tr := range []*testRing{req, resp} {
				tr.p.spins, tr.c.spins = spins, spins
			}
			done := make(chan error, 1)
			req.goroutine(func() {
				for {
					msg, err := req.c.Next(true)
					if err != nil {
						if err == ErrClosed {
							err = nil
						}
						done <- err
						return
					}
					err = resp.p.Push(msg)
					req.c.Release()
					if err != nil {
						done <- err
						return
					}
					resp.p.Flush()
				}
			})
			msg := pattern[:64]
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if err := req.p.Push(msg); err != nil {
					b.Fatal(err)
				}
				req.p.Flush()
				if _, err := resp.c.Next(true); err != nil {
					b.Fatal(err)
				}
				resp.c.Release()
			}
			elapsed := time.Since(start)
			b.StopTimer()
			req.p.Close()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			sleeps := stat(b, req.c, "ring_rx_empty_waits") + stat(b, resp.c, "ring_rx_empty_waits")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "roundtrips/s")
			b.ReportMetric(float64(sleeps)/float64(b.N), "sleeps/op")
		})
	}
}
