package tun

import (
	"testing"
)

// reportPkts reports the packet rate of a benchmark that handles perOp
// packets per iteration.
func reportPkts(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.N)*float64(perOp)/b.Elapsed().Seconds(), "pkts/s")
}

// superSegs is how many 1380-byte segments (1420-byte TCP/IPv4 packets) make
// the 64 KiB super-packet Linux TCP builds at MTU 1420: TSO sizes it to
// whole segments below 64 KiB, so 47 (a 64,900-byte packet).
const superSegs = 47

// BenchmarkGSOSplit splits one 64 KiB TCP/IPv4 super-packet (47 segments
// of 1380 bytes) into 1420-byte packets, as the read path does for a TSO
// packet at MTU 1420. bytes/s counts the super-packet's bytes.
func BenchmarkGSOSplit(b *testing.B) {
	const segs, mss = superSegs, 1380
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
	if sizes[0] != 1420 || sizes[segs-1] != 1420 {
		b.Fatalf("segment sizes %d and %d, want 1420", sizes[0], sizes[segs-1])
	}
	reportPkts(b, segs)
}

// BenchmarkGROCoalesce coalesces 47 consecutive 1420-byte TCP/IPv4 packets
// of one flow into one 64 KiB super-packet (plan, checksum checks, copy,
// headers), and restores the head packet for the next round. bytes/s
// counts the packets' bytes.
func BenchmarkGROCoalesce(b *testing.B) {
	const segs = superSegs
	pkts := tcpStream(flow4(1, false), 1, 0, segs, 1380, 0, 0)
	bufs := writeBufs(testOffset, pkts...)
	var c coalescer
	coalesce := func() {
		items := c.plan(bufs, testOffset, true, true)
		if len(items) != 1 || items[0].count != segs {
			b.Fatalf("%d items", len(items))
		}
		if out := c.build(bufs, testOffset, 0); len(out) != virtioNetHdrLen+40+segs*1380 {
			b.Fatalf("built %d bytes", len(out))
		}
		c.restore(bufs, testOffset, 0)
	}
	coalesce() // the coalescer sizes its tables for the batch once
	b.SetBytes(int64(segs * 1420))
	b.ReportAllocs()
	for b.Loop() {
		coalesce()
	}
	reportPkts(b, segs)
}

// BenchmarkWriteBatchFakeSyscall is the whole Write path above the
// syscall (plan, build, one call per item to a write function that does
// nothing) for the same 47 packets. BenchmarkWriteBatch (Linux, root) is
// the same on a real TUN.
func BenchmarkWriteBatchFakeSyscall(b *testing.B) {
	const segs = superSegs
	pkts := tcpStream(flow4(1, false), 1, 0, segs, 1380, 0, 0)
	bufs := writeBufs(testOffset, pkts...)
	st := new(counters)
	calls := 0
	w := &batchWriter{vnet: true, tcpGRO: true, udpGRO: true, sys: func([]byte) error { calls++; return nil }, st: st}
	write := func() {
		if n, err := w.write(bufs, testOffset); n != segs || err != nil {
			b.Fatal(n, err)
		}
		w.co.restore(bufs, testOffset, 0)
	}
	write() // the coalescer sizes its tables for the batch once
	calls = 0
	b.SetBytes(int64(segs * 1420))
	b.ReportAllocs()
	for b.Loop() {
		write()
	}
	if calls != b.N {
		b.Fatalf("%d write calls for %d batches, want one each", calls, b.N)
	}
	reportPkts(b, segs)
}

// BenchmarkChecksum is the one's-complement sum over a header, a packet and
// a super-packet; one sum is one packet.
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
	b.ReportAllocs()
	var sink uint16
	for b.Loop() {
		sink += refSum(buf)
	}
	_ = sink
	reportPkts(b, 1)
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
