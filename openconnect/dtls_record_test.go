package openconnect

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/ptun-vpn/ptun/wg/replay"
)

// pipeEnd is one end of an in-memory datagram pipe for pion. Datagrams
// written at one end are read at the other, unless the reading end's tap
// is set: then they go to the tap instead (the test's hand, in place of
// pion's reader).
type pipeEnd struct {
	name  string
	in    chan []byte
	peer  *pipeEnd
	mu    sync.Mutex
	tap   chan []byte
	dl    time.Time
	dlSet chan struct{} // replaced whenever the deadline changes
	done  chan struct{}
	once  sync.Once
}

type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return string(a) }

func newPipe() (a, b *pipeEnd) {
	a = &pipeEnd{name: "a", in: make(chan []byte, 1024), dlSet: make(chan struct{}), done: make(chan struct{})}
	b = &pipeEnd{name: "b", in: make(chan []byte, 1024), dlSet: make(chan struct{}), done: make(chan struct{})}
	a.peer, b.peer = b, a
	return a, b
}

// setTap diverts what arrives at p to the returned channel.
func (p *pipeEnd) setTap() chan []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tap = make(chan []byte, 1024)
	return p.tap
}

// inject delivers d at p as if the peer had sent it.
func (p *pipeEnd) inject(d []byte) { p.in <- bytes.Clone(d) }

func (p *pipeEnd) WriteTo(b []byte, _ net.Addr) (int, error) {
	q := p.peer
	q.mu.Lock()
	tap := q.tap
	q.mu.Unlock()
	d := bytes.Clone(b)
	if tap != nil {
		tap <- d
		return len(b), nil
	}
	select {
	case q.in <- d:
	default: // lost, as on the wire
	}
	return len(b), nil
}

func (p *pipeEnd) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		p.mu.Lock()
		dl, changed := p.dl, p.dlSet
		p.mu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case d := <-p.in:
			return copy(b, d), pipeAddr(p.peer.name), nil
		case <-p.done:
			return 0, nil, net.ErrClosed
		case <-timeout:
			return 0, nil, os.ErrDeadlineExceeded
		case <-changed:
		}
	}
}

func (p *pipeEnd) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

func (p *pipeEnd) LocalAddr() net.Addr { return pipeAddr(p.name) }

func (p *pipeEnd) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

func (p *pipeEnd) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	p.dl = t
	close(p.dlSet)
	p.dlSet = make(chan struct{})
	p.mu.Unlock()
	return nil
}

func (p *pipeEnd) SetWriteDeadline(time.Time) error { return nil }

// pionPair is a pion client and server that completed a PSK handshake
// over a pipe.
type pionPair struct {
	client, server       *dtls.Conn
	clientEnd, serverEnd *pipeEnd
}

func handshakePion(t testing.TB, suite dtls.CipherSuiteID) *pionPair {
	t.Helper()
	psk := make([]byte, 32)
	rand.Read(psk)
	ce, se := newPipe()
	pskf := func([]byte) ([]byte, error) { return psk, nil }
	cc, err := dtls.ClientWithOptions(ce, pipeAddr("b"), dtls.WithPSK(pskf),
		dtls.WithPSKIdentityHint(pskIdentity), dtls.WithCipherSuites(suite))
	if err != nil {
		t.Fatal(err)
	}
	sc, err := dtls.ServerWithOptions(se, pipeAddr("a"), dtls.WithPSK(pskf), dtls.WithCipherSuites(suite),
		dtls.WithExtendedMasterSecret(dtls.RequestExtendedMasterSecret))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	go func() { errs <- cc.HandshakeContext(ctx) }()
	go func() { errs <- sc.HandshakeContext(ctx) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ce.Close()
		se.Close()
		cc.Close()
		sc.Close()
	})
	return &pionPair{client: cc, server: sc, clientEnd: ce, serverEnd: se}
}

func takeOverForTest(t testing.TB, c *dtls.Conn) *recordLayer {
	t.Helper()
	ps, err := pionStateOf(c)
	if err != nil {
		t.Fatal(err)
	}
	rl, err := newRecordLayer(ps)
	if err != nil {
		t.Fatal(err)
	}
	return rl
}

func readWithin(t testing.TB, c *dtls.Conn, buf []byte) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func recvWithin(t testing.TB, ch chan []byte) []byte {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(5 * time.Second):
		t.Fatal("nothing arrived in 5 s")
	}
	return nil
}

var bothSuites = []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256}

// TestRecordLayerAgainstPion takes over each side of a pion connection in
// turn: the records it seals are read by pion's peer, the peer's records
// are opened by it, the sequence numbers go on from pion's (Finished was
// 0 of epoch 1), its replay window refuses a record seen before, and a
// changed byte fails authentication.
func TestRecordLayerAgainstPion(t *testing.T) {
	for _, suite := range bothSuites {
		for _, side := range []string{"server", "client"} {
			t.Run(fmt.Sprintf("%v/%s", suite, side), func(t *testing.T) {
				pp := handshakePion(t, suite)
				ours, theirs, ourEnd := pp.server, pp.client, pp.serverEnd
				if side == "client" {
					ours, theirs, ourEnd = pp.client, pp.server, pp.clientEnd
				}
				rl := takeOverForTest(t, ours)
				if rl.suite != suite {
					t.Fatalf("suite %v, want %v", rl.suite, suite)
				}
				if got := rl.tx.seq.Load(); got != 1 {
					t.Errorf("next sequence number %d, want 1 (after Finished)", got)
				}
				if rl.rxNext != 1 {
					t.Errorf("peer's next sequence number %d, want 1", rl.rxNext)
				}
				tap := ourEnd.setTap()

				// Ours to pion: frames of every size class, in order (pion
				// reads datagrams of 8192 bytes at most).
				buf := make([]byte, 1+MaxPayload)
				var rec []byte
				for i, n := range []int{0, 1, 100, 1400, 8000} {
					payload := bytes.Repeat([]byte{byte(i + 1)}, n)
					var err error
					rec, err = rl.tx.appendFrame(rec[:0], TypeData, payload)
					if err != nil {
						t.Fatal(err)
					}
					if len(rec) > n+1+maxRecordOverhead {
						t.Fatalf("record of %d bytes for %d", len(rec), n)
					}
					ourEnd.peer.inject(rec)
					got := readWithin(t, theirs, buf)
					if len(got) != 1+n || got[0] != TypeData || !bytes.Equal(got[1:], payload) {
						t.Fatalf("pion read %d bytes, want the frame of %d", len(got), n)
					}
				}
				// The same record again: pion's own replay window refuses
				// it (so the numbers really were new), and a fresh one is
				// read.
				ourEnd.peer.inject(rec)
				next, _ := rl.tx.appendFrame(nil, TypeKeepalive, nil)
				ourEnd.peer.inject(next)
				if got := readWithin(t, theirs, buf); len(got) != 1 || got[0] != TypeKeepalive {
					t.Fatalf("pion read %x after a replay, want the keepalive", got)
				}

				// Pion to ours.
				var window replay.Filter
				for i, n := range []int{0, 7, 1400, 8000} {
					payload := bytes.Repeat([]byte{byte(0x40 + i)}, n)
					if _, err := theirs.Write(append([]byte{TypeData}, payload...)); err != nil {
						t.Fatal(err)
					}
					d := recvWithin(t, tap)
					r, rest, ok := nextRecord(d)
					if !ok || len(rest) != 0 {
						t.Fatalf("datagram of %d bytes is not one record", len(d))
					}
					saved := bytes.Clone(r)
					typ, seq, pt, err := rl.rx.open(r)
					if err != nil {
						t.Fatal(err)
					}
					if typ != recordApplicationData || seq != uint64(1+i) || len(pt) != 1+n || !bytes.Equal(pt[1:], payload) {
						t.Fatalf("opened type %d seq %d, %d bytes; want application data %d, %d bytes", typ, seq, len(pt), 1+i, 1+n)
					}
					if !window.ValidateCounter(seq, maxRecordSeq+1) {
						t.Fatalf("seq %d refused", seq)
					}
					// A replay authenticates but the window refuses it.
					if _, seq, _, err := rl.rx.open(bytes.Clone(saved)); err != nil || window.ValidateCounter(seq, maxRecordSeq+1) {
						t.Fatalf("replay of seq %d: err %v, accepted", seq, err)
					}
					// Any changed byte fails: header, nonce, ciphertext, tag.
					for _, at := range []int{0, 4, 10, recordHeaderLen, len(saved) - 1} {
						bad := bytes.Clone(saved)
						bad[at] ^= 0x10
						if _, _, _, err := rl.rx.open(bad); err == nil {
							t.Fatalf("a record changed at byte %d opened", at)
						}
					}
				}

				// What pion itself still writes (an alert, here) opens with
				// our own direction's key, for sealing again.
				peerTap := ourEnd.peer.setTap()
				ours.Close()
				d := recvWithin(t, peerTap)
				r, _, ok := nextRecord(d)
				if !ok {
					t.Fatal("no record from pion's close")
				}
				typ, _, pt, err := rl.txOpen.open(r)
				if err != nil || typ != recordAlert || len(pt) != 2 {
					t.Fatalf("pion's close_notify: type %d, %x, %v", typ, pt, err)
				}
			})
		}
	}
}

func TestPRFSHA256Vector(t *testing.T) {
	// The TLS 1.2 PRF test vector for SHA-256 published with the IETF TLS
	// working group's mailing list (secret, "test label", seed; 100 bytes).
	secret := unhex(t, "9bbe436ba940f017b17652849a71db35")
	seed := unhex(t, "a0ba9f936cda311827a6f796ffd5198c")
	want := unhex(t, "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff70187347b66")
	if got := prfSHA256(secret, "test label", seed, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("PRF = %x\nwant  %x", got, want)
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRecordSealNoAllocations pins the data path's rule: sealing and
// opening in place into buffers with room allocate nothing.
func TestRecordSealNoAllocations(t *testing.T) {
	for _, suite := range bothSuites {
		client, server, err := deriveRecordCiphers(suite, make([]byte, 48), make([]byte, 32), make([]byte, 32))
		if err != nil {
			t.Fatal(err)
		}
		tx := &recordSealer{c: server, epoch: 1}
		rx := &recordOpener{c: server, epoch: 1}
		other := &recordOpener{c: client, epoch: 1}
		for _, n := range []int{0, 1, 1400, MaxPayload} {
			payload := make([]byte, n)
			rand.Read(payload)
			rec, err := tx.appendFrame(nil, TypeDPDRequest, payload)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, _, err := other.open(bytes.Clone(rec)); err == nil {
				t.Fatalf("%v: a server record opened with the client's key", suite)
			}
			typ, _, pt, err := rx.open(rec)
			if err != nil || typ != recordApplicationData || pt[0] != TypeDPDRequest || !bytes.Equal(pt[1:], payload) {
				t.Fatalf("%v: %d bytes did not come back: %v", suite, n, err)
			}
		}
		payload := make([]byte, 1400)
		buf := make([]byte, 0, 2048)
		allocs := testing.AllocsPerRun(100, func() {
			rec, err := tx.appendFrame(buf[:0], TypeData, payload)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, _, err := rx.open(rec); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%v: %.1f allocations per record, want 0", suite, allocs)
		}
	}
}

func FuzzOpenRecord(f *testing.F) {
	client, _, err := deriveRecordCiphers(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, make([]byte, 48), make([]byte, 32), make([]byte, 32))
	if err != nil {
		f.Fatal(err)
	}
	chacha, _, err := deriveRecordCiphers(dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, make([]byte, 48), make([]byte, 32), make([]byte, 32))
	if err != nil {
		f.Fatal(err)
	}
	gcmTx := &recordSealer{c: client, epoch: 1}
	chachaTx := &recordSealer{c: chacha, epoch: 1}
	good, _ := gcmTx.appendFrame(nil, TypeData, []byte("hello"))
	f.Add(good, false)
	good2, _ := chachaTx.appendFrame(nil, TypeDPDRequest, make([]byte, 40))
	f.Add(good2, true)
	f.Add(append(bytes.Clone(good), good...), false)
	f.Add([]byte{23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0}, true)
	f.Add([]byte{}, false)
	openers := map[bool]*recordOpener{false: {c: client, epoch: 1}, true: {c: chacha, epoch: 1}}
	f.Fuzz(func(t *testing.T, d []byte, useChaCha bool) {
		o := openers[useChaCha]
		var window replay.Filter
		for range 64 {
			rec, rest, ok := nextRecord(d)
			if !ok {
				return
			}
			if len(rec)+len(rest) != len(d) {
				t.Fatalf("split %d into %d and %d", len(d), len(rec), len(rest))
			}
			typ, seq, pt, err := o.open(rec)
			if err == nil {
				if seq > maxRecordSeq || len(pt) > len(rec) {
					t.Fatalf("opened type %d seq %d, %d bytes of a %d-byte record", typ, seq, len(pt), len(rec))
				}
				window.ValidateCounter(seq, maxRecordSeq+1)
			}
			d = rest
		}
	})
}
