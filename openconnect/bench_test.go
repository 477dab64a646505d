package openconnect

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// The server's data path against ptun's own client over loopback, one
// path at a time: packets from the client, echoed by the server's handler
// (the bench's numbers are for whole tunnels; these are the protocol's
// own cost, to profile).

func benchmarkEcho(b *testing.B, dtls bool) {
	s := startServer(b, dtls)
	cfg := ClientConfig{Server: s.url[len("https://") : len(s.url)-1], Pin: s.pin,
		Username: "alice", Password: "correct horse battery", DisableDTLS: !dtls}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := LoginAndConnect(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer cs.Close()
	<-s.h.up
	if dtls {
		for range 500 {
			if cs.Path() == "dtls" {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if cs.Path() != "dtls" {
			b.Fatal("no DTLS")
		}
	}
	src, dst := netip.MustParseAddr("100.64.70.2"), netip.MustParseAddr("100.64.70.1")
	pkt := udpPacket(src, dst, 1, 2, make([]byte, 1300))
	buf := make([]byte, 2048)
	const window = 64 // packets in flight
	b.SetBytes(int64(len(pkt)))
	// At most window packets in flight; a lost one (UDP) shrinks it, and
	// the run ends when every packet came back or none did for a second.
	sem := make(chan struct{}, window)
	got := make(chan int, 1)
	go func() {
		n := 0
		for n < b.N {
			if _, err := cs.ReadPacket(buf); err != nil {
				break
			}
			n++
			<-sem
		}
		got <- n
	}()
	b.ResetTimer()
	for range b.N {
		select {
		case sem <- struct{}{}:
		case <-time.After(time.Second):
			b.Fatalf("no echo for a second (window %d)", window)
		}
		if err := cs.WritePacket(pkt); err != nil {
			b.Fatal(err)
		}
	}
	var n int
	select {
	case n = <-got:
	case <-time.After(time.Second):
		cs.Close()
		n = <-got
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N-n)/float64(b.N)*100, "%lost")
}

func BenchmarkEchoCSTP(b *testing.B) { benchmarkEcho(b, false) }
func BenchmarkEchoDTLS(b *testing.B) { benchmarkEcho(b, true) }
