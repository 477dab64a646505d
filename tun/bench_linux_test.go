//go:build linux

package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/testenv"
)

// The real-TUN benchmarks run in a namespace of their own, named with this
// prefix, the process ID and a sequence number (a crashed run's leftovers
// can be removed with netns.Cleanup(benchNSPrefix)).
const benchNSPrefix = "ptun-bench-tun-"

const benchIfName = "ptunbench0"

var (
	benchTUNPrefix = netip.MustParsePrefix("100.64.77.1/24") // the interface's address
	benchPeer      = netip.MustParseAddr("100.64.77.2")      // routed out of the TUN
	// benchNowhere has no route in the namespace, which does not forward:
	// the kernel drops packets to it at IP input, silently (no ICMP), and
	// counts them as Ip InAddrErrors.
	benchNowhere = netip.MustParseAddr("100.127.0.1")
	benchNSSeq   atomic.Int32
)

// benchBatchSizes are the batch sizes of the real-TUN benchmarks, in
// 1420-byte packets.
var benchBatchSizes = []int{1, 32, 128}

type benchTUN struct {
	ns  *netns.NS
	dev *device
}

// newBenchTUN creates a namespace with forwarding off and IPv6 off on the
// TUN (so no router solicitations show up), and in it the TUN with opts,
// 100.64.77.1/24 and up. Both go away when b ends.
func newBenchTUN(b *testing.B, opts Options) *benchTUN {
	b.Helper()
	testenv.RequireRoot(b)
	ns, err := netns.New(fmt.Sprintf("%s%d-%d", benchNSPrefix, os.Getpid(), benchNSSeq.Add(1)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := ns.Close(); err != nil {
			b.Error(err)
		}
	})
	opts.Logf = b.Logf
	var dev Device
	err = ns.Do(func() error {
		// /proc/sys/net belongs to the namespace of the thread that opens it.
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("0"), 0); err != nil {
			return err
		}
		var err error
		if dev, err = Create(benchIfName, opts); err != nil {
			return err
		}
		err = os.WriteFile("/proc/sys/net/ipv6/conf/"+benchIfName+"/disable_ipv6", []byte("1"), 0)
		if errors.Is(err, os.ErrNotExist) {
			err = nil // a kernel without IPv6
		}
		return err
	})
	if dev != nil {
		b.Cleanup(func() { dev.Close() }) // before the namespace goes
	}
	if err != nil {
		b.Fatal(err)
	}
	if err := ns.AddAddr(benchIfName, benchTUNPrefix); err != nil {
		b.Fatal(err)
	}
	if err := ns.SetUp(benchIfName); err != nil {
		b.Fatal(err)
	}
	return &benchTUN{ns: ns, dev: dev.(*device)}
}

// ipStat returns the namespace's Ip counter name from /proc/net/snmp.
func (t *benchTUN) ipStat(b *testing.B, name string) uint64 {
	b.Helper()
	var raw []byte
	if err := t.ns.Do(func() error {
		var err error
		raw, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(raw)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Ip:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i := 1; i < len(f) && i < len(names); i++ {
			if names[i] == name {
				v, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					b.Fatalf("snmp Ip %s: %v", name, err)
				}
				return v
			}
		}
	}
	b.Fatalf("no Ip %s in /proc/net/snmp", name)
	return 0
}

// perOp reports how much the device counter name grew per iteration since
// it was before, as the metric unit, and returns the growth.
func (t *benchTUN) perOp(b *testing.B, name string, before uint64, unit string) uint64 {
	d := stat(t.dev, name) - before
	b.ReportMetric(float64(d)/float64(b.N), unit)
	return d
}

// BenchmarkWriteBatch writes batches of 1420-byte TCP/IPv4 packets of one
// flow to a real TUN (root only): with offloads and GRO (the batch goes as
// super-packets of up to 47 packets, 64 KiB), with offloads but no GRO (one
// write per packet, with a virtio-net header), and without offloads. The
// packets go to an address with no route, so the kernel takes each write
// through the TUN and IP input and drops it there: this is the cost of
// handing packets to the kernel, without a socket or forwarding behind it.
// It reports writes/op (syscalls) and checks that every packet reached IP
// input.
func BenchmarkWriteBatch(b *testing.B) {
	for _, mode := range []struct {
		name string
		opts Options
	}{
		{"gro", Options{}},
		{"nogro", Options{DisableGRO: true}},
		{"nooffload", Options{DisableOffload: true}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			t := newBenchTUN(b, mode.opts)
			f := flow4(40000, false)
			f.src, f.dst = benchPeer, benchNowhere
			for _, n := range benchBatchSizes {
				b.Run("batch="+strconv.Itoa(n), func(b *testing.B) {
					pkts := tcpStream(f, 1, 1, n, 1380, 0, 0)
					bufs := writeBufs(testOffset, pkts...)
					const hdrLen = 40
					write := func() {
						// Write coalesces into the head packets' buffers;
						// put their headers back (the rest is unchanged).
						for i := range bufs {
							copy(bufs[i][testOffset:testOffset+hdrLen], pkts[i][:hdrLen])
						}
						if m, err := t.dev.Write(bufs, testOffset); m != n || err != nil {
							b.Fatalf("Write = %d, %v; want %d", m, err, n)
						}
					}
					write() // the coalescer sizes its tables for the batch once
					writes := stat(t.dev, "tun_writes")
					dropped := t.ipStat(b, "InAddrErrors")
					b.SetBytes(int64(n * 1420))
					b.ReportAllocs()
					for b.Loop() {
						write()
					}
					reportPkts(b, n)
					w := t.perOp(b, "tun_writes", writes, "writes/op")
					if got := t.ipStat(b, "InAddrErrors") - dropped; got != w {
						b.Fatalf("IP input dropped %d packets for want of a route, want the %d written", got, w)
					}
					switch {
					case mode.opts.DisableOffload || mode.opts.DisableGRO || n == 1:
						if w != uint64(b.N*n) {
							b.Fatalf("%d writes for %d packets, want one each", w, b.N*n)
						}
					case w != uint64(b.N*((n+superSegs-1)/superSegs)):
						b.Fatalf("%d writes for %d batches of %d, want super-packets of %d", w, b.N, n, superSegs)
					}
				})
			}
		})
	}
}

// benchSender is a UDP socket in the namespace that sends to benchPeer,
// so what it sends comes out of the TUN.
type benchSender struct {
	c    *net.UDPConn
	port int
}

func newBenchSender(b *testing.B, t *benchTUN, port, segSize int) *benchSender {
	b.Helper()
	var c *net.UDPConn
	if err := t.ns.Do(func() error {
		var err error
		c, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(benchTUNPrefix.Addr(), 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(benchPeer, uint16(port))))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	if segSize > 0 {
		rc, err := c.SyscallConn()
		if err != nil {
			b.Fatal(err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, segSize)
		}); err != nil || serr != nil {
			b.Fatalf("UDP_SEGMENT: %v %v", err, serr)
		}
	}
	return &benchSender{c: c, port: port}
}

// BenchmarkReadBatch reads 1420-byte UDP/IPv4 packets that a socket in the
// namespace sent out of a real TUN (root only), with and without
// offloads. batch=N: N datagrams sent one by one, so N reads. gso=64KiB
// (offloads only): one UDP_SEGMENT send of 47 × 1392 bytes, which the
// kernel hands over as one 64 KiB super-packet, read and split by one Read.
// The sends happen with the timer stopped: only Read is measured (read
// syscall, virtio header, checksum completion, split). Each batch has a 5 s
// deadline and at most N+64 Reads. It reports reads/op.
func BenchmarkReadBatch(b *testing.B) {
	for _, mode := range []struct {
		name string
		opts Options
	}{
		{"offload", Options{}},
		{"nooffload", Options{DisableOffload: true}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			t := newBenchTUN(b, mode.opts)
			plain := newBenchSender(b, t, 9001, 0)
			payload := payloadBytes(1392, 5)
			for _, n := range benchBatchSizes {
				b.Run("batch="+strconv.Itoa(n), func(b *testing.B) {
					benchRead(b, t, n, func() error {
						for range n {
							if _, err := plain.c.Write(payload); err != nil {
								return err
							}
						}
						return nil
					}, plain.port)
				})
			}
			if mode.opts.DisableOffload {
				return
			}
			if stat(t.dev, "tun_uso_unavailable") != 0 {
				b.Log("kernel without USO (Linux < 6.2): no gso=64KiB")
				return
			}
			gso := newBenchSender(b, t, 9002, 1392)
			super := payloadBytes(superSegs*1392, 6)
			b.Run("gso=64KiB", func(b *testing.B) {
				reads := stat(t.dev, "tun_reads")
				benchRead(b, t, superSegs, func() error {
					_, err := gso.c.Write(super)
					return err
				}, gso.port)
				if r := stat(t.dev, "tun_reads") - reads; r != uint64(b.N) {
					b.Fatalf("%d reads for %d super-packets, want one each", r, b.N)
				}
			})
		})
	}
}

// benchRead runs the read benchmark: send (timer stopped) makes n 1420-byte
// UDP packets to port come out of the TUN, and the timed part reads until
// it has them all.
func benchRead(b *testing.B, t *benchTUN, n int, send func() error, port int) {
	b.Helper()
	bufs, sizes := readBufs(t.dev.BatchSize(), testOffset)
	reads := stat(t.dev, "tun_reads")
	b.SetBytes(int64(n * 1420))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if err := send(); err != nil {
			b.Fatal(err)
		}
		t.dev.f.(*kernelFrames).file.SetReadDeadline(time.Now().Add(5 * time.Second))
		b.StartTimer()
		got := 0
		for calls := 0; got < n; calls++ {
			if calls == n+64 {
				b.Fatalf("%d reads returned %d of %d packets", calls, got, n)
			}
			m, err := t.dev.Read(bufs, sizes, testOffset)
			if err != nil {
				b.Fatalf("Read after %d of %d packets: %v", got, n, err)
			}
			for i := range m {
				p := bufs[i][testOffset : testOffset+sizes[i]]
				if len(p) >= 28 && p[0]>>4 == 4 && p[9] == ipProtoUDP && int(binary.BigEndian.Uint16(p[22:])) == port {
					if len(p) != 1420 {
						b.Fatalf("read a %d-byte packet, want 1420", len(p))
					}
					got++
				}
			}
		}
	}
	b.StopTimer()
	t.dev.f.(*kernelFrames).file.SetReadDeadline(time.Time{})
	reportPkts(b, n)
	t.perOp(b, "tun_reads", reads, "reads/op")
}
