//go:build linux

package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// testNetns is a fresh network namespace owned by one locked OS thread.
// Do runs functions on that thread, so sockets, TUN devices and `ip`
// commands made there live in the namespace. Close ends the goroutine
// without unlocking: the thread exits and the namespace goes away with the
// last file that refers to it.
type testNetns struct {
	reqs chan func()
	done chan struct{}
}

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	requireRootAndIP(t)
	ns := &testNetns{reqs: make(chan func()), done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		defer close(ns.done)
		runtime.LockOSThread() // never unlocked: the thread dies with us
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			started <- err
			return
		}
		started <- nil
		for f := range ns.reqs {
			f()
		}
	}()
	if err := <-started; err != nil {
		t.Fatalf("unshare(CLONE_NEWNET): %v", err)
	}
	t.Cleanup(func() {
		close(ns.reqs)
		<-ns.done
	})
	if err := ns.Do(func() error { return ipCmd("link", "set", "lo", "up") }); err != nil {
		t.Fatal(err)
	}
	return ns
}

func (ns *testNetns) Do(f func() error) error {
	errc := make(chan error, 1)
	ns.reqs <- func() { errc <- f() }
	return <-errc
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

const testIfName = "ptuntest0"

var (
	tunAddr  = netip.MustParseAddr("198.18.77.1")
	peerAddr = netip.MustParseAddr("198.18.77.2")
)

// upTUN creates the TUN in ns, gives it 198.18.77.1/24 and brings it up.
func upTUN(t *testing.T, ns *testNetns, opts Options) *device {
	t.Helper()
	opts.Logf = t.Logf
	var dev Device
	err := ns.Do(func() error {
		var err error
		if dev, err = Create(testIfName, opts); err != nil {
			return err
		}
		if err := ipCmd("addr", "add", "198.18.77.1/24", "dev", testIfName); err != nil {
			return err
		}
		return ipCmd("link", "set", testIfName, "up")
	})
	if dev != nil {
		t.Cleanup(func() { dev.Close() })
	}
	if err != nil {
		t.Fatal(err)
	}
	return dev.(*device)
}

// listenUDP opens a UDP socket in ns.
func listenUDP(t *testing.T, ns *testNetns, laddr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(laddr)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readMatching reads from dev until it has want packets that match, at
// most 10 s and 1000 Reads. It returns copies of them and the count of
// matching packets each Read returned (when it returned any). On timeout it closes dev to free the
// reader.
func readMatching(t *testing.T, dev Device, want int, match func([]byte) bool) ([][]byte, []int) {
	t.Helper()
	type result struct {
		pkts  [][]byte
		calls []int
		err   error
	}
	resc := make(chan result, 1)
	go func() {
		bufs, sizes := readBufs(dev.BatchSize(), testOffset)
		var r result
		for range 1000 {
			n, err := dev.Read(bufs, sizes, testOffset)
			if err != nil {
				r.err = err
				break
			}
			matched := 0
			for i := range n {
				p := bufs[i][testOffset : testOffset+sizes[i]]
				if match(p) {
					r.pkts = append(r.pkts, append([]byte(nil), p...))
					matched++
				}
			}
			if matched > 0 {
				r.calls = append(r.calls, matched)
			}
			if len(r.pkts) >= want {
				break
			}
		}
		resc <- r
	}()
	select {
	case r := <-resc:
		if r.err != nil || len(r.pkts) < want {
			t.Fatalf("read %d of %d packets: %v", len(r.pkts), want, r.err)
		}
		return r.pkts, r.calls
	case <-time.After(10 * time.Second):
		dev.Close()
		<-resc
		t.Fatalf("timed out waiting for %d packets", want)
	}
	return nil, nil
}

func udpTo(port int) func([]byte) bool {
	return func(p []byte) bool {
		return len(p) >= 28 && p[0]>>4 == 4 && p[9] == ipProtoUDP &&
			int(binary.BigEndian.Uint16(p[22:])) == port
	}
}

func stat(d *device, name string) uint64 { return counter(d.Stats(), name) }

func TestCreateInvalidName(t *testing.T) {
	for _, name := range []string{"averyveryverylongname", "a/b", "a b", ".."} {
		_, err := Create(name, Options{})
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("Create(%q) = %v; want ErrInvalidName", name, err)
		}
	}
}

func TestOptionsFromEnv(t *testing.T) {
	t.Setenv(EnvDisableOffload, "")
	t.Setenv(EnvDisableUSO, "1")
	t.Setenv(EnvDisableGRO, "0")
	o := OptionsFromEnv(Options{MTU: 1280, DisableGRO: true})
	if o.DisableOffload || !o.DisableUSO || !o.DisableGRO || o.MTU != 1280 {
		t.Fatalf("OptionsFromEnv = %+v", o)
	}
	t.Setenv(EnvDisableOffload, "1")
	if !OptionsFromEnv(Options{}).DisableOffload {
		t.Fatal("PTUN_DISABLE_TUN_OFFLOAD=1 ignored")
	}
}

func TestCreateMTUAndName(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{MTU: 1280})
	if dev.Name() != testIfName {
		t.Errorf("Name = %q", dev.Name())
	}
	if mtu, err := dev.MTU(); err != nil || mtu != 1280 {
		t.Errorf("MTU = %d, %v", mtu, err)
	}
	if dev.BatchSize() != defaultBatchSize {
		t.Errorf("BatchSize = %d", dev.BatchSize())
	}
}

// (a) A UDP datagram written into the TUN reaches a socket; a junk packet
// in the same batch is counted and does not stop the batch.
func TestWriteUDPReachesSocket(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	sock := listenUDP(t, ns, "198.18.77.1:0")
	port := sock.LocalAddr().(*net.UDPAddr).Port
	f := flow4(40000, true)
	f.dport = uint16(port)
	pkt := f.packet(1, 0, 0, 0, []byte("hello through the tun"))
	n, err := dev.Write(writeBufs(testOffset, []byte{0x00, 1, 2, 3}, pkt), testOffset)
	if n != 1 || err == nil || !strings.Contains(err.Error(), "drop_tun_write_einval") {
		t.Fatalf("Write = %d, %v; want 1 and an EINVAL drop", n, err)
	}
	if stat(dev, "drop_tun_write_einval") != 1 {
		t.Errorf("drop_tun_write_einval = %d", stat(dev, "drop_tun_write_einval"))
	}
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2000)
	m, from, err := sock.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:m]) != "hello through the tun" || from != netip.AddrPortFrom(peerAddr, 40000) {
		t.Fatalf("got %q from %v", buf[:m], from)
	}
}

// With USO, 20 datagrams of one flow are written as one UDP GSO packet,
// and the kernel delivers all 20 to the socket.
func TestWriteUDPCoalesced(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	if !dev.w.udpGRO {
		testenv.SkipOrFail(t, "kernel without USO: no UDP coalescing")
	}
	sock := listenUDP(t, ns, "198.18.77.1:0")
	f := flow4(40000, true)
	f.dport = uint16(sock.LocalAddr().(*net.UDPAddr).Port)
	pkts := udpStream(f, 100, 20, 1000, 0)
	if n, err := dev.Write(writeBufs(testOffset, pkts...), testOffset); n != 20 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if stat(dev, "tun_gro_coalesced") != 1 || stat(dev, "tun_writes") != 1 {
		t.Fatalf("not coalesced: %v", dev.Stats())
	}
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 70000)
	for i, p := range pkts {
		m, err := sock.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:m], p[28:]) {
			t.Fatalf("datagram %d: %d bytes, differs", i, m)
		}
	}
}

// A TCP stream written as coalesced super-packets is accepted by the
// kernel and arrives intact at a real TCP socket (checks the virtio header
// and partial checksum we produce).
func TestWriteTCPCoalesced(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	var ln *net.TCPListener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(198, 18, 77, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	f := flow4(40001, false)
	f.dport = uint16(port)

	const isn = 1000
	syn := f.packet(1, isn, 0, tcpFlagSYN, nil)
	if _, err := dev.Write(writeBufs(testOffset, syn), testOffset); err != nil {
		t.Fatal(err)
	}
	synAcks, _ := readMatching(t, dev, 1, func(p []byte) bool {
		return len(p) >= 40 && p[9] == ipProtoTCP && int(binary.BigEndian.Uint16(p[20:])) == port &&
			p[33]&(tcpFlagSYN|tcpFlagACK) == tcpFlagSYN|tcpFlagACK
	})
	srvSeq := binary.BigEndian.Uint32(synAcks[0][24:]) + 1
	ack := f.packet(2, isn+1, srvSeq, tcpFlagACK, nil)
	if _, err := dev.Write(writeBufs(testOffset, ack), testOffset); err != nil {
		t.Fatal(err)
	}
	const segs, size = 40, 1000
	var data []byte
	var pkts [][]byte
	for i := range segs {
		p := payloadBytes(size, byte(i))
		data = append(data, p...)
		flags := uint8(tcpFlagACK)
		if i == segs-1 {
			flags |= tcpFlagPSH
		}
		pkts = append(pkts, f.packet(uint16(3+i), uint32(isn+1+i*size), srvSeq, flags, p))
	}
	if n, err := dev.Write(writeBufs(testOffset, pkts...), testOffset); n != segs || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if stat(dev, "tun_gro_coalesced") == 0 {
		t.Fatalf("nothing coalesced: %v", dev.Stats())
	}
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 0, len(data))
	buf := make([]byte, 65536)
	for len(got) < len(data) {
		m, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:m]...)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("stream differs")
	}
}

// (b) A datagram sent from a socket to 198.18.77.2 comes out of Read.
func TestReadUDPFromSocket(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	sock := listenUDP(t, ns, "198.18.77.1:0")
	if _, err := sock.WriteToUDPAddrPort([]byte("out of the tun"), netip.AddrPortFrom(peerAddr, 9999)); err != nil {
		t.Fatal(err)
	}
	pkts, _ := readMatching(t, dev, 1, udpTo(9999))
	p := pkts[0]
	if string(p[28:]) != "out of the tun" || refSum(p[:20]) != 0xffff {
		t.Fatalf("packet %x", p)
	}
	f := flow4(0, true)
	f.src, f.dst = tunAddr, peerAddr
	checkValid(t, f, p)
}

// sendSegmented sends 20 × 1000 bytes to 198.18.77.2:port with one
// UDP_SEGMENT (GSO) send and returns the payload.
func sendSegmented(t *testing.T, ns *testNetns, port int) []byte {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(peerAddr, uint16(port))))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, 1000)
	}); err != nil || serr != nil {
		t.Fatalf("UDP_SEGMENT: %v %v", err, serr)
	}
	data := payloadBytes(20*1000, 9)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	return data
}

func checkDatagrams(t *testing.T, pkts [][]byte, data []byte) {
	t.Helper()
	f := flow4(0, true)
	f.src, f.dst = tunAddr, peerAddr
	for i, p := range pkts {
		if len(p) != 1028 || int(binary.BigEndian.Uint16(p[24:])) != 1008 {
			t.Fatalf("datagram %d: %d bytes", i, len(p))
		}
		if !bytes.Equal(p[28:], data[i*1000:(i+1)*1000]) {
			t.Fatalf("datagram %d: payload differs", i)
		}
		checkValid(t, f, p)
		if i > 0 && binary.BigEndian.Uint16(p[4:]) != binary.BigEndian.Uint16(pkts[i-1][4:])+1 {
			t.Errorf("datagram %d: IPv4 ID does not follow", i)
		}
	}
}

// (c) With USO, a UDP_SEGMENT send is read as one super-packet and split
// into 20 correct datagrams by one Read.
func TestReadUSOSplit(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	if stat(dev, "tun_uso_unavailable") != 0 {
		testenv.SkipOrFail(t, "kernel without USO (Linux < 6.2)")
	}
	data := sendSegmented(t, ns, 9998)
	pkts, calls := readMatching(t, dev, 20, udpTo(9998))
	if len(calls) != 1 || calls[0] != 20 {
		t.Fatalf("datagrams came in reads of %v; want one read of 20", calls)
	}
	checkDatagrams(t, pkts, data)
	if stat(dev, "tun_gso_split") != 1 || stat(dev, "tun_gso_segments") != 20 {
		t.Fatalf("stats %v", dev.Stats())
	}
}

// (d) With offloads disabled, the same send arrives as 20 datagrams, one
// read syscall each, batched by Read.
func TestReadNoOffload(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{DisableOffload: true})
	if dev.BatchSize() != defaultBatchSize {
		t.Fatalf("BatchSize = %d; want %d", dev.BatchSize(), defaultBatchSize)
	}
	data := sendSegmented(t, ns, 9997)
	reads0 := stat(dev, "tun_reads")
	pkts, _ := readMatching(t, dev, 20, udpTo(9997))
	checkDatagrams(t, pkts, data)
	if stat(dev, "tun_gso_split") != 0 {
		t.Fatal("split without offloads")
	}
	if got := stat(dev, "tun_reads") - reads0; got < 20 {
		t.Fatalf("%d read syscalls for 20 datagrams without offloads", got)
	}
	// Writes go one by one, without a virtio header.
	sock := listenUDP(t, ns, "198.18.77.1:0")
	f := flow4(40000, true)
	f.dport = uint16(sock.LocalAddr().(*net.UDPAddr).Port)
	if n, err := dev.Write(writeBufs(testOffset, udpStream(f, 1, 3, 100, 0)...), testOffset); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range 3 {
		if _, err := sock.Read(make([]byte, 200)); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
}

// sendPlain sends n datagrams of size bytes to 198.18.77.2:port, one
// send each, and returns their payloads.
func sendPlain(t *testing.T, ns *testNetns, port, n, size int) [][]byte {
	t.Helper()
	sock := listenUDP(t, ns, "198.18.77.1:0")
	var out [][]byte
	for i := range n {
		b := payloadBytes(size, byte(i))
		if _, err := sock.WriteToUDPAddrPort(b, netip.AddrPortFrom(peerAddr, uint16(port))); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// A burst queued in the kernel comes back from one Read, in order: one
// wakeup serves it all.
func TestReadBurstInOneRead(t *testing.T) {
	for _, opts := range []Options{{}, {DisableOffload: true}} {
		ns := newTestNetns(t)
		dev := upTUN(t, ns, opts)
		sent := sendPlain(t, ns, 9996, 30, 1000)
		pkts, calls := readMatching(t, dev, 30, udpTo(9996))
		if len(calls) != 1 || calls[0] != 30 {
			t.Fatalf("offloads off=%v: 30 queued datagrams came in reads of %v; want one read of 30", opts.DisableOffload, calls)
		}
		for i, p := range pkts {
			if !bytes.Equal(p[28:], sent[i]) {
				t.Fatalf("datagram %d out of order or changed", i)
			}
		}
	}
}

// A super-packet read after others, with too few buffers left for its
// segments, is kept for the next Read rather than dropped.
func TestReadKeepsSuperPacketForNextRead(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	if stat(dev, "tun_uso_unavailable") != 0 {
		testenv.SkipOrFail(t, "kernel without USO (Linux < 6.2)")
	}
	first := sendPlain(t, ns, 9995, 1, 500)
	data := sendSegmented(t, ns, 9995)
	bufs, sizes := readBufs(32, testOffset)
	var got [][]byte
	for i := 0; i < 10 && len(got) < 21; i++ {
		b := bufs
		if i == 0 {
			b = bufs[:15] // room for the first datagram, not the 20 segments
		}
		n, err := dev.Read(b, sizes, testOffset)
		if err != nil {
			t.Fatal(err)
		}
		for j := range n {
			if p := bufs[j][testOffset : testOffset+sizes[j]]; udpTo(9995)(p) {
				got = append(got, append([]byte(nil), p...))
			}
		}
	}
	if len(got) != 21 || !bytes.Equal(got[0][28:], first[0]) {
		t.Fatalf("got %d datagrams; want the first and 20 segments", len(got))
	}
	checkDatagrams(t, got[1:], data)
	if d := stat(dev, "drop_tun_read_too_many_segments"); d != 0 {
		t.Fatalf("%d super-packets dropped", d)
	}
}

// (e) Deleting the link makes a blocked Read return os.ErrClosed; so does
// Close, and Write after it.
func TestReadAfterLinkDeleted(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	errc := make(chan error, 1)
	go func() {
		bufs, sizes := readBufs(dev.BatchSize(), testOffset)
		for range 1000 { // skip whatever the kernel sends (IPv6 chatter)
			if _, err := dev.Read(bufs, sizes, testOffset); err != nil {
				errc <- err
				return
			}
		}
		errc <- errors.New("Read never failed")
	}()
	time.Sleep(100 * time.Millisecond) // let Read park; not a timing assertion
	if err := ns.Do(func() error { return ipCmd("link", "del", testIfName) }); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err != os.ErrClosed {
			t.Fatalf("Read after link del = %v; want os.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		dev.Close()
		<-errc
		t.Fatal("Read still blocked after link del")
	}
	if _, err := dev.Write(writeBufs(testOffset, flow4(1, true).packet(1, 0, 0, 0, nil)), testOffset); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Write after link del = %v; want os.ErrClosed", err)
	}
	dev.Close()
	rb, rs := readBufs(1, testOffset)
	if _, err := dev.Read(rb, rs, testOffset); err != os.ErrClosed {
		t.Fatalf("Read after Close = %v", err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	errc := make(chan error, 1)
	go func() {
		bufs, sizes := readBufs(dev.BatchSize(), testOffset)
		for range 1000 {
			if _, err := dev.Read(bufs, sizes, testOffset); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	dev.Close()
	select {
	case err := <-errc:
		if err != os.ErrClosed {
			t.Fatalf("Read after Close = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
}

// (f) A name taken by a non-TUN link, or by a TUN someone has open, gives
// the clear error.
func TestCreateNameInUse(t *testing.T) {
	ns := newTestNetns(t)
	upTUN(t, ns, Options{})
	names := []string{"lo", testIfName}
	if ns.Do(func() error { return ipCmd("link", "add", "ptdummy0", "type", "dummy") }) == nil {
		names = append(names, "ptdummy0")
	} else {
		t.Log("no dummy links here; testing lo and a busy TUN only")
	}
	for _, name := range names {
		var err error
		ns.Do(func() error {
			var d Device
			d, err = Create(name, Options{})
			if d != nil {
				d.Close()
			}
			return nil
		})
		want := fmt.Sprintf("tun: create %q: interface already exists; choose another name or delete it", name)
		if !errors.Is(err, ErrNameInUse) || !strings.HasPrefix(fmt.Sprint(err), want) || strings.Contains(fmt.Sprint(err), "\n") {
			t.Errorf("Create(%q) = %v; want ErrNameInUse, %q", name, err, want)
		}
	}
}

// Read and Write on a real TUN allocate nothing in steady state.
func TestZeroAllocs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocation counts are only meaningful without -race")
	}
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	sock := listenUDP(t, ns, "198.18.77.1:0")
	f := flow4(40000, true)
	f.dport = uint16(sock.LocalAddr().(*net.UDPAddr).Port)
	pkts := udpStream(f, 1, 20, 1000, 0)
	bufs := writeBufs(testOffset, pkts...)
	const runs = 20
	allocs := testing.AllocsPerRun(runs, func() {
		copy(bufs[0][testOffset:], pkts[0]) // Write coalesced into it
		if n, err := dev.Write(bufs, testOffset); n != len(pkts) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("Write: %v allocs per call", allocs)
	}

	// Queue 3*(runs+1) datagrams for the tun, then read them three at a
	// time: one read that waits and two that do not.
	for range 3 * (runs + 1) {
		if _, err := sock.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(peerAddr, 9996)); err != nil {
			t.Fatal(err)
		}
	}
	rb, rs := readBufs(3, testOffset)
	allocs = testing.AllocsPerRun(runs, func() {
		if n, err := dev.Read(rb, rs, testOffset); n != 3 || err != nil {
			t.Fatalf("Read = %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("Read: %v allocs per call", allocs)
	}
}

// requireRootAndIP: these tests need root and iproute2.
func requireRootAndIP(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "iproute2")
}

// With offloads, the interface's gso_max_segs is the batch size, so the
// kernel never hands Read a super-packet with more segments than a batch.
func TestGSOMaxSegsIsBatchSize(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	var segs uint32
	if err := ns.Do(func() error {
		l, err := netlink.LinkByName(dev.Name())
		if err == nil {
			segs = l.Attrs().GSOMaxSegs
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if segs != uint32(dev.BatchSize()) {
		t.Fatalf("gso_max_segs = %d, want %d", segs, dev.BatchSize())
	}
}

// TestParkAndFromFD: a parked device keeps its interface but no longer
// reads; a descriptor duplicated from it, wrapped by FromFD (as an engine
// does), carries the traffic; the interface lives while the parked device
// is open, after the handed descriptor is closed.
func TestParkAndFromFD(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	if err := Park(dev); err != nil {
		t.Fatal(err)
	}
	if err := Park(dev); err != nil {
		t.Fatalf("second Park: %v", err)
	}
	bufs, sizes := readBufs(dev.BatchSize(), testOffset)
	if _, err := dev.Read(bufs, sizes, testOffset); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read on a parked device: %v, want os.ErrClosed", err)
	}
	if mtu, err := dev.MTU(); err != nil || mtu != DefaultMTU {
		t.Fatalf("MTU of a parked device: %d, %v", mtu, err)
	}
	fd, err := DupFD(dev)
	if err != nil {
		t.Fatal(err)
	}
	handed, err := FromFD(fd, dev.Format(), func() (int, error) { return 1234, nil }, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if mtu, _ := handed.MTU(); mtu != 1234 {
		t.Errorf("FromFD's MTU = %d, want what the mtu function says", mtu)
	}
	// A datagram sent to the tunnel's peer address comes out of the
	// handed descriptor.
	c := listenUDP(t, ns, "198.18.77.1:0")
	var sendErr error
	ns.Do(func() error {
		_, sendErr = c.WriteToUDPAddrPort([]byte("via the handed fd"), netip.AddrPortFrom(peerAddr, 9))
		return nil
	})
	if sendErr != nil {
		t.Fatal(sendErr)
	}
	handed.(*device).f.(*kernelFrames).file.SetReadDeadline(time.Now().Add(5 * time.Second))
	found := false
	for range 20 {
		n, err := handed.Read(bufs, sizes, testOffset)
		if err != nil {
			t.Fatalf("Read on the handed device: %v", err)
		}
		for i := range n {
			if bytes.Contains(bufs[i][testOffset:testOffset+sizes[i]], []byte("via the handed fd")) {
				found = true
			}
		}
		if found {
			break
		}
	}
	if !found {
		t.Fatal("the datagram did not come out of the handed descriptor")
	}
	handed.Close()
	var exists bool
	ns.Do(func() error { exists = LinkExists(testIfName); return nil })
	if !exists {
		t.Fatal("the interface went away with the handed descriptor while the parked device is open")
	}
}

// TestReassert: what a process holding the same open TUN file changes (the
// blocking flag, the virtio-net header size, the offloads), Reassert sets
// back before the file is handed on.
func TestReassert(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	if err := Park(dev); err != nil {
		t.Fatal(err)
	}
	fd, err := DupFD(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// A hostile holder of the file.
	if err := unix.SetNonblock(fd, false); err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, 12); err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		t.Fatal(err)
	}
	if err := Reassert(dev); err != nil {
		t.Fatal(err)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("O_NONBLOCK not set again (flags %#x, %v)", fl, err)
	}
	if sz, err := unix.IoctlGetInt(fd, unix.TUNGETVNETHDRSZ); err != nil || sz != virtioNetHdrLen {
		t.Errorf("vnet header size %d (%v), want %d", sz, err, virtioNetHdrLen)
	}
	// Reassert sets the offloads Create chose (TUNSETOFFLOAD cannot be
	// read back): Create must have recorded them.
	if k := dev.f.(*kernelFrames); k.offload <= 0 {
		t.Fatalf("Create recorded offload %d", k.offload)
	}
}

// TestHoldKernelTUN: two descriptors of one TUN file, as ptun up's
// WireGuard and OpenConnect engines hold them; while the first is held,
// its Read (waiting in the kernel when the hold began) takes nothing and
// the other gets the packets; released, it reads again.
func TestHoldKernelTUN(t *testing.T) {
	ns := newTestNetns(t)
	dev := upTUN(t, ns, Options{})
	if err := Park(dev); err != nil {
		t.Fatal(err)
	}
	handed := func() Device {
		fd, err := DupFD(dev)
		if err != nil {
			t.Fatal(err)
		}
		d, err := FromFD(fd, dev.Format(), func() (int, error) { return DefaultMTU, nil }, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	a, b := handed(), handed()
	marks := make(chan string, 64)
	go func() {
		bufs, sizes := readBufs(a.BatchSize(), testOffset)
		for {
			n, err := a.Read(bufs, sizes, testOffset)
			if err != nil {
				return
			}
			for i := range n {
				if p := bufs[i][testOffset : testOffset+sizes[i]]; bytes.Contains(p, []byte("mark ")) {
					marks <- string(p[bytes.Index(p, []byte("mark ")):])
				}
			}
		}
	}()
	c := listenUDP(t, ns, "198.18.77.1:0")
	send := func(s string) {
		t.Helper()
		if err := ns.Do(func() error {
			_, err := c.WriteToUDPAddrPort([]byte(s), netip.AddrPortFrom(peerAddr, 9))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitMark := func(want string) {
		t.Helper()
		for {
			select {
			case m := <-marks:
				if m == want {
					return
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("the first descriptor did not read %q", want)
			}
		}
	}
	send("mark before")
	waitMark("mark before")
	time.Sleep(20 * time.Millisecond) // its Read waits in the kernel again
	if err := Hold(a, true); err != nil {
		t.Fatal(err)
	}
	send("mark held")
	b.(*device).f.(*kernelFrames).file.SetReadDeadline(time.Now().Add(5 * time.Second))
	bufs, sizes := readBufs(b.BatchSize(), testOffset)
	found := false
	for range 20 {
		n, err := b.Read(bufs, sizes, testOffset)
		if err != nil {
			t.Fatalf("Read on the other descriptor: %v", err)
		}
		for i := range n {
			found = found || bytes.Contains(bufs[i][testOffset:testOffset+sizes[i]], []byte("mark held"))
		}
		if found {
			break
		}
	}
	if !found {
		t.Fatal("the packet sent while the first descriptor was held did not come out of the other")
	}
	select {
	case m := <-marks:
		t.Fatalf("the held descriptor read %q", m)
	case <-time.After(100 * time.Millisecond):
	}
	if err := Hold(a, false); err != nil {
		t.Fatal(err)
	}
	send("mark after")
	waitMark("mark after")
}
