package wg

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/transport/transporttest"
	"github.com/ptun-vpn/ptun/tun/tuntest"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wg/wire"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// waitCounter waits (bounded) until d's counter name satisfies ok.
func waitCounter(t *testing.T, d *Device, name string, ok func(uint64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok(counter(d, name)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d: condition not met within 10s; stats: %s", name, counter(d, name), nonZero(d))
		}
		time.Sleep(time.Millisecond)
	}
}

func atLeast(n uint64) func(uint64) bool { return func(v uint64) bool { return v >= n } }

// craftInitiation is a handshake initiation from the holder of priv to the
// owner of to, with a valid mac1, made without a device.
func craftInitiation(t *testing.T, priv noise.PrivateKey, to noise.PublicKey) ([]byte, *noise.InitiatorState) {
	t.Helper()
	// A minute old: the device's own initiations that follow are newer.
	msg, st, err := noise.CreateInitiation(noise.NewLocal(priv), to, 0x01020304, noise.TimestampOf(time.Now().Add(-time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, wire.InitiationSize)
	msg.Marshal(b)
	noise.NewCookieGenerator(to).AddMACs(b)
	return b, st
}

// garbageWithMAC1 is a message of type typ and size n that is garbage but
// for a valid mac1 for to: it passes the MAC check and fails to decrypt.
func garbageWithMAC1(typ byte, n int, to noise.PublicKey) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + 5)
	}
	b[0], b[1], b[2], b[3] = typ, 0, 0, 0
	noise.NewCookieGenerator(to).AddMACs(b)
	return b
}

// TestControlSendsDoNotBlockHandshakes (M7): with a's socket send buffer
// full, a's answer to b's initiation waits in the control routine; the
// handshake routine goes on (it counts a later bad-mac1 message), and once
// the buffer drains the handshake completes.
func TestControlSendsDoNotBlockHandshakes(t *testing.T) {
	a, b := newTestPair(t, Timers{})
	release := a.fake.HoldSends()
	defer release()
	p := ipv4Packet(b.addr, a.addr, []byte("staged at b"))
	b.tun.Inbound <- p
	// a answered (queued the response) and its control routine is stuck
	// in Send.
	waitCounter(t, a.dev, "fake_send_waits", atLeast(1))
	bad := make([]byte, wire.InitiationSize)
	bad[0] = byte(wire.TypeInitiation)
	if err := a.fake.Inject(bad, b.ep); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a.dev, "drop_handshake_mac1", atLeast(1))
	release()
	expectPacket(t, a, p)
}

// TestControlQueueFullIsCounted: control messages beyond the control
// queue, while the send buffer is full, are dropped and counted; the
// cookie replies that were queued are sent once it drains (and b, which
// never asked for them, refuses them).
func TestControlQueueFullIsCounted(t *testing.T) {
	ta, tb := transporttest.NewPair()
	a, b := newNodePair(t, ta, tb, Options{Logf: t.Logf, controlQueueLen: 4})
	release := a.fake.HoldSends()
	defer release()
	a.dev.underLoadUntil.Store(time.Now().Add(time.Hour).UnixNano())
	const n = 10
	for range n {
		// valid mac1, no mac2: under load, each is answered with a cookie
		if err := a.fake.Inject(garbageWithMAC1(byte(wire.TypeInitiation), wire.InitiationSize, a.priv.PublicKey()), b.ep); err != nil {
			t.Fatal(err)
		}
	}
	// One reply is in Send, the queue is full, the others were dropped
	// (five or more: the control routine may take the first reply late).
	waitCounter(t, a.dev, "fake_send_waits", atLeast(1))
	waitFor(t, func() bool { return counter(a.dev, "drop_control_send_full")+uint64(len(a.dev.control)) == n-1 })
	dropped := counter(a.dev, "drop_control_send_full")
	if dropped < n-1-4 {
		t.Fatalf("drop_control_send_full = %d with %d queued, want >= %d", dropped, len(a.dev.control), n-1-4)
	}
	release()
	waitCounter(t, a.dev, "cookie_replies_sent", func(v uint64) bool { return v == n-dropped })
	waitCounter(t, b.dev, "drop_cookie_invalid", func(v uint64) bool { return v == n-dropped })
	if got := counter(a.dev, "drop_handshake_invalid"); got != 0 {
		t.Fatalf("under load, %d initiations without mac2 were decrypted", got)
	}
}

// TestUnderLoadCookieRoundTrip: a device under load answers an initiation
// without mac2 with a cookie reply; the initiator takes the cookie, retries
// with mac2, and the handshake completes.
func TestUnderLoadCookieRoundTrip(t *testing.T) {
	timers := DefaultTimers()
	timers.RekeyTimeout = 100 * time.Millisecond
	a, b := newTestPair(t, timers)
	a.dev.underLoadUntil.Store(time.Now().Add(time.Hour).UnixNano())
	p := ipv4Packet(b.addr, a.addr, []byte("through the cookie"))
	b.tun.Inbound <- p
	expectPacket(t, a, p)
	if got := counter(a.dev, "cookie_replies_sent"); got < 1 {
		t.Fatalf("cookie_replies_sent = %d, want >= 1", got)
	}
	if got := counter(b.dev, "drop_cookie_invalid"); got != 0 {
		t.Fatalf("b refused %d of a's cookie replies", got)
	}
	if got := counter(b.dev, "handshakes_initiated"); got < 2 {
		t.Fatalf("handshakes_initiated = %d, want a retry with mac2", got)
	}
}

// blockingMTU is a TUN whose MTU blocks while blocked is set, as a control
// round trip to a stuck front would.
type blockingMTU struct {
	*tuntest.ChannelTUN
	blocked atomic.Bool
	waiting atomic.Int32
	gate    chan struct{} // closed by Close
	once    sync.Once
}

func (b *blockingMTU) MTU() (int, error) {
	if b.blocked.Load() {
		b.waiting.Add(1)
		<-b.gate
	}
	return b.ChannelTUN.MTU()
}

func (b *blockingMTU) Close() error {
	b.once.Do(func() { close(b.gate) })
	return b.ChannelTUN.Close()
}

// TestTimersRunWhileMTUBlocks (M9): the timers keep retransmitting a
// handshake while the TUN's MTU call is stuck.
func TestTimersRunWhileMTUBlocks(t *testing.T) {
	timers := DefaultTimers()
	timers.RekeyTimeout = 20 * time.Millisecond
	ch := tuntest.NewChannelTUN(1420)
	slow := &blockingMTU{ChannelTUN: ch, gate: make(chan struct{})}
	ta, tb := transporttest.NewPair()
	a, b := newNodePairTUN(t, ta, tb, Options{Timers: timers, Logf: t.Logf}, slow, ch)
	slow.blocked.Store(true)
	for deadline := time.Now().Add(10 * time.Second); slow.waiting.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("nothing called MTU")
		}
		time.Sleep(time.Millisecond)
	}
	// b does not answer: a must retry from its timers.
	if err := b.dev.Set(removePeerConfig(a)); err != nil {
		t.Fatal(err)
	}
	a.tun.Inbound <- ipv4Packet(a.addr, b.addr, []byte("needs a handshake"))
	waitCounter(t, a.dev, "handshakes_initiated", atLeast(3))
	waitCounter(t, b.dev, "drop_handshake_unknown_peer", atLeast(3))
}

// TestLogLimiter (M11): one line per interval, and the next line says how
// many were suppressed.
func TestLogLimiter(t *testing.T) {
	var lines []string
	d := &Device{logf: func(f string, args ...any) { lines = append(lines, fmt.Sprintf(f, args...)) }}
	var l logLimiter
	t0 := time.Unix(1000, 0)
	l.logf(d, t0, "link down: %d", 1)
	for i := range 5 {
		l.logf(d, t0.Add(time.Duration(i)*100*time.Millisecond), "link down: %d", 2)
	}
	l.logf(d, t0.Add(logInterval), "link down: %d", 3)
	want := []string{"link down: 1", "link down: 3 (and 5 more like it)"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("logged %q, want %q", lines, want)
	}
}

// TestReceiveErrorsAreRateLimited: a receive error repeating on every
// batch logs once per interval, not once per batch.
func TestReceiveErrorsAreRateLimited(t *testing.T) {
	var mu sync.Mutex
	logged := 0
	d := &Device{logf: func(f string, args ...any) {
		if strings.HasPrefix(f, "transport receive") {
			mu.Lock()
			logged++
			mu.Unlock()
		}
	}}
	now := time.Now()
	for range 100 {
		d.logs.receive.logf(d, now, "transport receive: %v", "EIO")
	}
	if logged != 1 {
		t.Fatalf("100 errors within one interval logged %d lines, want 1", logged)
	}
}

func removePeerConfig(n *testNode) *wgcfg.DeviceConfig {
	return &wgcfg.DeviceConfig{Peers: []wgcfg.PeerConfig{{PublicKey: n.priv.PublicKey(), Remove: true}}}
}
