package udp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/transport"
)

const ms = int64(time.Millisecond)

// A queue that stays under target is never dropped from; one above target
// for less than an interval is not either (bursts pass).
func TestCodelToleratesShortQueues(t *testing.T) {
	c := newCodel(time.Millisecond, 10*time.Millisecond)
	now := int64(1e12)
	for i := range 1000 {
		if d := c.dequeue(now+int64(i)*ms/10, ms/2, false); d != 0 {
			t.Fatalf("dropped %d with the sojourn under target", d)
		}
	}
	// 9 ms above target, then back under: a burst.
	start := now + 200*ms
	for i := int64(0); i < 90; i++ {
		if d := c.dequeue(start+i*ms/10, 5*ms, false); d != 0 {
			t.Fatalf("dropped %d within the first interval above target", d)
		}
	}
	if d := c.dequeue(start+9*ms, 0, false); d != 0 || c.firstAbove != 0 {
		t.Fatalf("a short queue left state: drops %d, firstAbove %d", d, c.firstAbove)
	}
}

// A standing queue is dropped from once an interval has passed above
// target, then at a rate rising as interval/sqrt(count); once the queue
// is gone, dropping stops.
func TestCodelDropsStandingQueue(t *testing.T) {
	c := newCodel(time.Millisecond, 10*time.Millisecond)
	now := int64(1e12)
	var dropTimes []int64
	for i := int64(0); i <= 1000; i++ { // 100 ms, a batch every 0.1 ms
		at := now + i*ms/10
		for range c.dequeue(at, 3*ms, false) {
			dropTimes = append(dropTimes, at)
		}
	}
	if len(dropTimes) < 3 {
		t.Fatalf("%d drops in 100 ms of a standing queue", len(dropTimes))
	}
	if first := dropTimes[0] - now; first < 10*ms || first > 11*ms {
		t.Fatalf("first drop after %v, want one interval (10ms)", time.Duration(first))
	}
	// The gaps shrink: 10/sqrt(1), 10/sqrt(2), 10/sqrt(3) ... ms.
	for i := 2; i < len(dropTimes); i++ {
		if dropTimes[i]-dropTimes[i-1] > dropTimes[i-1]-dropTimes[i-2]+ms/10 {
			t.Fatalf("drop gaps grow: %v", dropTimes)
		}
	}
	for i, want := range []int64{10 * ms, int64(7071 * time.Microsecond), int64(5774 * time.Microsecond)} {
		if got := dropTimes[i+1] - dropTimes[i]; got < want-ms/5 || got > want+ms/5 {
			t.Fatalf("gap %d is %v, want about %v", i+1, time.Duration(got), time.Duration(want))
		}
	}
	end := now + 101*ms
	if d := c.dequeue(end, 0, false); d != 0 || c.dropping {
		t.Fatalf("still dropping (%d) with the queue gone", d)
	}
}

// Coming back soon after a dropping period resumes near the earlier rate.
func TestCodelResumesRate(t *testing.T) {
	c := newCodel(time.Millisecond, 10*time.Millisecond)
	now := int64(1e12)
	i := int64(0)
	for ; i <= 2000; i++ {
		c.dequeue(now+i*ms/10, 3*ms, false)
	}
	high := c.count
	c.dequeue(now+i*ms/10, 0, false) // queue under target
	i++
	for ; c.count < 2 || !c.dropping; i++ {
		c.dequeue(now+i*ms/10, 3*ms, false)
		if i > 4000 {
			t.Fatal("never resumed dropping")
		}
	}
	if c.count <= 1 || c.count > high {
		t.Fatalf("resumed at count %d after reaching %d", c.count, high)
	}
}

// A reader that comes late to a queue and empties it sees a long wait but no
// standing queue: nothing is dropped, however often it happens.
func TestCodelIgnoresEmptiedQueue(t *testing.T) {
	c := newCodel(time.Millisecond, 10*time.Millisecond)
	now := int64(1e12)
	for i := range int64(100) {
		if d := c.dequeue(now+i*20*ms, 15*ms, true); d != 0 {
			t.Fatalf("dropped %d from a queue each read emptied", d)
		}
	}
	// A standing queue, then one read that empties it, ends dropping.
	for i := int64(0); i < 300; i++ {
		c.dequeue(now+3000*ms+i*ms/10, 3*ms, false)
	}
	if !c.dropping {
		t.Fatal("not dropping after 30 ms of a standing queue")
	}
	if d := c.dequeue(now+3031*ms, 3*ms, true); d != 0 || c.dropping {
		t.Fatalf("still dropping (%d) after the queue was emptied", d)
	}
}

func TestDropTail(t *testing.T) {
	msgs := []rxMsg{
		{n: 148},                    // a handshake: never dropped
		{n: 1452},                   // one big datagram: dropped whole
		{n: 3*1452 + 96, seg: 1452}, // a GRO message ending with a small one: kept
		{n: 4 * 1452, seg: 1452},    // loses its last datagram
		{n: 1452, drop: true},       // already dropped: skipped
	}
	if got := dropTail(msgs, 5); got != 2 {
		t.Fatalf("dropped %d, want 2", got)
	}
	if msgs[0].drop || !msgs[1].drop || msgs[2].n != 3*1452+96 || msgs[3].n != 3*1452 || msgs[3].segments() != 3 {
		t.Fatalf("after dropTail: %+v", msgs)
	}
	msgs = []rxMsg{{n: 2 * 1452, seg: 1452}, {n: 1452}}
	if got := dropTail(msgs, 1); got != 1 || msgs[0].segments() != 1 || msgs[1].drop {
		t.Fatalf("dropTail(1) = %d, %+v: want only the first message's last datagram", got, msgs)
	}
}

// A queue that stands in a real socket for longer than the interval loses
// bulk datagrams to CoDel, counted; small ones all arrive; with AQM off
// nothing is lost. Every datagram sent is either received or counted.
func TestAQMOnSocket(t *testing.T) {
	for _, off := range []bool{false, true} {
		a, _, _ := open(t, Options{})
		b, fns, portB := open(t, Options{AQMTarget: time.Millisecond, AQMInterval: 5 * time.Millisecond, DisableAQM: off})
		if counter(b, "udp_aqm_unavailable") != 0 {
			testenv.SkipOrFail(t, "no SO_TIMESTAMPNS")
		}
		const bulk, small = 1500, 100
		to := transport.EndpointFrom(netip.AddrPortFrom(lo4, portB))
		for i := range bulk {
			msgs := [][]byte{payload(i, 1400)}
			if i%(bulk/small) == 0 {
				msgs = append(msgs, payload(i, 100))
			}
			if err := a.Send(msgs, to); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(20 * time.Millisecond) // the head now waited far above target
		failLosses(t, b, 10*time.Second)
		rb, sizes, eps := batch(32)
		gotBulk, gotSmall := 0, 0
		deadline := time.Now().Add(10 * time.Second)
		for gotBulk+int(counter(b, "drop_udp_aqm")) < bulk || gotSmall < small {
			if time.Now().After(deadline) {
				t.Fatalf("aqm off=%v: received %d bulk + %d small, %d dropped", off, gotBulk, gotSmall, counter(b, "drop_udp_aqm"))
			}
			n, err := fns[0](rb, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				if sizes[i] == 1400 {
					gotBulk++
				} else {
					gotSmall++
				}
			}
			time.Sleep(time.Millisecond) // a slow reader: the queue stands
		}
		drops := counter(b, "drop_udp_aqm")
		if off && drops != 0 {
			t.Fatalf("AQM off dropped %d", drops)
		}
		if !off && (drops == 0 || drops > bulk/2) {
			t.Fatalf("AQM on dropped %d of %d bulk datagrams; want some, not most", drops, bulk)
		}
		t.Logf("aqm off=%v: %d bulk received, %d dropped, %d small received", off, gotBulk, drops, gotSmall)
	}
}
