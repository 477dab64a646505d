package tun

import (
	"testing"
)

func reportPkts(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.N)*float64(perOp)/b.Elapsed().Seconds(), "pkts/s")
}

// BenchmarkGSOSplit splits a TCP/IPv4 super-packet of 45 MSS-sized
// (1380-byte) segments, as the read path does for a TSO packet at MTU 1420.
func BenchmarkGSOSplit(b *testing.B) {
	const segs, mss = 45, 1380
	raw := flow4(1, false).super(1, 2, 3, tcpFlagACK|tcpFlagPSH, payloadBytes(segs*mss, 1), mss)
	var h virtioNetHdr
	h.decode(raw)
	pkt := raw[virtioNetHdrLen:]
	bufs, sizes := readBufs(defaultBatchSize, testOffset)
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		n, drop, err := gsoSplit(pkt, &h, bufs, sizes, testOffset)
		if n != segs || drop != dropNone || err != nil {
			b.Fatalf("split = %d, %d, %v", n, drop, err)
		}
	}
	reportPkts(b, segs)
}

// BenchmarkGROCoalesce coalesces 45 consecutive 1420-byte TCP/IPv4 packets
// of one flow into one super-packet (plan, checksum checks, copy, headers).
func BenchmarkGROCoalesce(b *testing.B) {
	const segs = 45
	pkts := tcpStream(flow4(1, false), 1, 0, segs, 1380, 0, 0)
	bufs := writeBufs(testOffset, pkts...)
	var c coalescer
	b.SetBytes(int64(segs * 1420))
	b.ReportAllocs()
	for b.Loop() {
		items := c.plan(bufs, testOffset, true, true)
		if len(items) != 1 {
			b.Fatalf("%d items", len(items))
		}
		c.build(bufs, testOffset, 0)
		c.restore(bufs, testOffset, 0)
	}
	reportPkts(b, segs)
}

// BenchmarkWriteBatch is the whole Write path (plan, build, one fake
// syscall per item) for the same 45 packets.
func BenchmarkWriteBatch(b *testing.B) {
	const segs = 45
	pkts := tcpStream(flow4(1, false), 1, 0, segs, 1380, 0, 0)
	bufs := writeBufs(testOffset, pkts...)
	st := new(counters)
	w := &batchWriter{vnet: true, tcpGRO: true, udpGRO: true, sys: func([]byte) error { return nil }, st: st}
	b.SetBytes(int64(segs * 1420))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := w.write(bufs, testOffset); n != segs || err != nil {
			b.Fatal(n, err)
		}
		w.co.restore(bufs, testOffset, 0)
	}
	reportPkts(b, segs)
}

func BenchmarkChecksum(b *testing.B) {
	for _, size := range []int{40, 1420, 65535} {
		b.Run(itoa(size), func(b *testing.B) {
			buf := payloadBytes(size, 3)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			var sink uint16
			for b.Loop() {
				sink += onesSum(buf)
			}
			_ = sink
			reportPkts(b, 1)
		})
	}
}

// BenchmarkChecksumReference is the plain 16-bit loop, for comparison.
func BenchmarkChecksumReference(b *testing.B) {
	buf := payloadBytes(1420, 3)
	b.SetBytes(int64(len(buf)))
	var sink uint16
	for b.Loop() {
		sink += refSum(buf)
	}
	_ = sink
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var d []byte
	for ; n > 0; n /= 10 {
		d = append([]byte{byte('0' + n%10)}, d...)
	}
	return string(d)
}
