package openconnect

import (
	"bytes"
	"context"
	"encoding/hex"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
)

// recordingConn keeps a copy of every datagram the client writes.
type recordingConn struct {
	net.Conn
	mu   sync.Mutex
	sent [][]byte
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.sent = append(c.sent, bytes.Clone(b))
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *recordingConn) last(size int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.sent) - 1; i >= 0; i-- {
		if len(c.sent[i]) == size {
			return c.sent[i]
		}
	}
	return nil
}

// dtlsClient logs in to s with ptun's client and waits for DTLS on both
// ends; rc records the client's datagrams.
func dtlsClient(t *testing.T, s *ocServer) (*ClientSession, *Session, *recordingConn) {
	t.Helper()
	var rc *recordingConn
	var d net.Dialer
	cfg := ClientConfig{Server: s.url[len("https://") : len(s.url)-1], Pin: s.pin,
		Username: "alice", Password: "correct horse battery",
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, address)
			if err != nil || network != "udp" {
				return c, err
			}
			rc = &recordingConn{Conn: c}
			return rc, nil
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cs, err := LoginAndConnect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	ss := waitSession(t, s)
	deadline := time.Now().Add(10 * time.Second)
	for cs.Path() != PathDTLS || ss.Path() != "dtls" {
		if time.Now().After(deadline) {
			t.Fatalf("DTLS not up: client on %s, server on %q", cs.Path(), ss.Path())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cs, ss, rc
}

func echoOnce(t *testing.T, cs *ClientSession, payload []byte) {
	t.Helper()
	src, dst := netip.MustParseAddr("100.64.70.2"), netip.MustParseAddr("100.64.70.1")
	if err := cs.WritePacket(udpPacket(src, dst, 1, 2, payload)); err != nil {
		t.Fatal(err)
	}
	p, err := readPacket(t, cs)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) < 28 || !bytes.Equal(p[28:], payload) {
		t.Fatalf("echo of %d bytes, want %d", len(p), 28+len(payload))
	}
}

// TestServerDTLSDropsReplayAndForgery sends the server, from the client's
// own source, a replay of the client's last data record, the same record
// with a byte changed, and a truncated one: each is dropped and counted by
// its reason, none is delivered, and the path goes on over DTLS.
func TestServerDTLSDropsReplayAndForgery(t *testing.T) {
	s := startServer(t, true)
	cs, ss, rc := dtlsClient(t, s)
	payload := bytes.Repeat([]byte("r"), 700)
	echoOnce(t, cs, payload)
	// The data record: type, header, nonce (GCM), frame type, packet, tag.
	var rec []byte
	for _, extra := range []int{recordHeaderLen + 1 + recordTagLen, recordHeaderLen + gcmExplicitLen + 1 + recordTagLen} {
		if rec = rc.last(28 + len(payload) + extra); rec != nil {
			break
		}
	}
	if rec == nil {
		t.Fatal("the client's data record was not recorded")
	}
	rx := ss.DTLS.RxPackets.Load()
	raw := rc.Conn
	raw.Write(rec)
	waitReason(t, s, ReasonDTLSReplay, 1)
	bad := bytes.Clone(rec)
	bad[len(bad)-20] ^= 1
	raw.Write(bad)
	waitReason(t, s, ReasonDTLSBadMAC, 1)
	raw.Write(rec[:len(rec)-1])
	waitReason(t, s, ReasonDTLSBadRecord, 1)
	if got := ss.DTLS.RxPackets.Load(); got != rx {
		t.Errorf("%d packets delivered from replays and forgeries", got-rx)
	}
	for range 20 {
		echoOnce(t, cs, payload)
	}
	if ss.Path() != "dtls" || cs.Path() != PathDTLS {
		t.Errorf("paths %q and %q after the drops, want DTLS", ss.Path(), cs.Path())
	}
	if got := ss.DTLS.RxPackets.Load(); got != rx+20 {
		t.Errorf("%d packets delivered over DTLS after the drops, want 20", got-rx)
	}
}

// TestServerDTLSCloseNotify closes the server's end of a DTLS path that
// carried data: pion's close_notify, written after the takeover, goes out
// sealed again with the record layer's sequence numbers, so the client
// takes it (rather than dropping it as a replay) and goes back to CSTP at
// once.
func TestServerDTLSCloseNotify(t *testing.T) {
	s := startServer(t, true)
	cs, ss, _ := dtlsClient(t, s)
	for range 10 {
		echoOnce(t, cs, []byte("before"))
	}
	ss.mu.Lock()
	dc := ss.dtls
	ss.mu.Unlock()
	ss.detachDTLS(dc)
	deadline := time.Now().Add(3 * time.Second)
	for cs.Path() != PathCSTP {
		if time.Now().After(deadline) {
			t.Fatal("the client stayed on DTLS after the server closed it")
		}
		time.Sleep(5 * time.Millisecond)
	}
	echoOnce(t, cs, []byte("after"))
	if got := counterValue(cs, "dtls_dead"); got != 1 {
		t.Errorf("dtls_dead = %d, want 1", got)
	}
}

// TestDTLSComesUpEveryTime logs in again and again: the client starts its
// DTLS handshake as soon as it reads the CONNECT answer, which may finish
// before the server attached the CSTP connection that gave it out; the
// path must come up anyway (it used to be refused, and the client's DTLS
// closed, about once in twenty).
func TestDTLSComesUpEveryTime(t *testing.T) {
	for i := range 40 {
		s := startServer(t, true)
		cfg := ClientConfig{Server: s.url[len("https://") : len(s.url)-1], Pin: s.pin,
			Username: "alice", Password: "correct horse battery"}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cs, err := LoginAndConnect(ctx, cfg)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		ss := waitSession(t, s)
		deadline := time.Now().Add(5 * time.Second)
		for cs.Path() != PathDTLS || ss.Path() != "dtls" {
			if time.Now().After(deadline) {
				t.Fatalf("login %d: no DTLS (client on %s, server on %q; %v)", i, cs.Path(), ss.Path(), s.srv.Stats().Reasons())
			}
			time.Sleep(time.Millisecond)
		}
		cs.Close()
		s.srv.Close()
	}
}

// gnutlsHello is the first datagram of Debian's openconnect 9.01 (GnuTLS)
// asking for PSK-NEGOTIATE, as ptun's server received it.
var gnutlsHello = func() []byte {
	b, err := hex.DecodeString("16feff0000000000000000009b0100008f000000000000008ffefd1460ddb83a9bd0d67314a9d34e1fc74092f2ba03b5f2dbc618937866d0ce6bed20bdc918c12bb77951cf899fd59b9c389cba5e3e8244d657d3a0f3a319cac77e5c00001000a9ccabc0a5008d00a8c0a4008c00ae01000035000d00220020040108090804040308070501080a0805050308080601080b080606030201020300230000ff01000100001c00024000")
	if err != nil {
		panic(err)
	}
	return b
}()

func TestClientHelloCipherSuites(t *testing.T) {
	suites, ok := ClientHelloCipherSuites(gnutlsHello)
	want := []uint16{0x00a9, 0xccab, 0xc0a5, 0x008d, 0x00a8, 0xc0a4, 0x008c, 0x00ae}
	if !ok || !slices.Equal(suites, want) {
		t.Fatalf("suites %04x, %v; want %04x", suites, ok, want)
	}
	if _, ok := ClientHelloCipherSuites(gnutlsHello[:len(gnutlsHello)-60]); ok {
		t.Error("suites from a hello cut inside its list")
	}
	got := suitesFor(gnutlsHello)
	if hasAESGCMHardware && !slices.Equal(got, []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_GCM_SHA256}) {
		t.Errorf("GnuTLS's hello (AES-256-GCM first) is offered %v, want AES-128-GCM alone", got)
	}
	// A client that asks for ChaCha20-Poly1305 first gets its choice.
	chachaFirst := bytes.Clone(gnutlsHello)
	i := bytes.Index(chachaFirst, []byte{0x00, 0xa9, 0xcc, 0xab})
	copy(chachaFirst[i:], []byte{0xcc, 0xab, 0x00, 0xa9})
	if got := suitesFor(chachaFirst); !slices.Equal(got, dtlsSuites) {
		t.Errorf("a ChaCha-first hello is offered %v, want %v", got, dtlsSuites)
	}
}

// TestSendBatchKeepsOrder mixes packets queued (Send) with batches sent
// at once (SendBatch, sealed on the caller's goroutine): a batch never
// overtakes what waits in the queue, so the client reads them in order.
func TestSendBatchKeepsOrder(t *testing.T) {
	s := startServer(t, true)
	cs, ss, _ := dtlsClient(t, s)
	src, dst := netip.MustParseAddr("100.64.70.1"), netip.MustParseAddr("100.64.70.2")
	const n = 400
	got := make(chan int, n)
	go func() {
		for range n {
			p, err := readPacket(t, cs)
			if err != nil || len(p) < 30 {
				close(got)
				return
			}
			got <- int(p[28])<<8 | int(p[29])
		}
		close(got)
	}()
	pkt := func(i int) []byte { return udpPacket(src, dst, 2, 1, []byte{byte(i >> 8), byte(i), 'x'}) }
	for i := 0; i < n; {
		if i%5 == 0 {
			ss.Send(pkt(i))
			i++
			continue
		}
		var run [][]byte
		for ; i < n && len(run) < 3 && i%5 != 0; i++ {
			run = append(run, pkt(i))
		}
		ss.SendBatch(run)
		if i%40 == 0 {
			time.Sleep(time.Millisecond) // let the client read
		}
	}
	next := 0
	for i := range got {
		if i != next {
			t.Fatalf("packet %d arrived after %d", i, next-1)
		}
		next++
	}
	if next != n {
		t.Fatalf("%d of %d packets arrived", next, n)
	}
	if ss.Path() != "dtls" {
		t.Errorf("path %q", ss.Path())
	}
}
