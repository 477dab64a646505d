// Package probe measures round-trip times from inside a network namespace
// with ICMP echo, for `ptun demo`, `ptun bench` and their tests.
package probe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/ptun-vpn/ptun/internal/netns"
)

// Ping sends count ICMP echo requests from inside from to dst, the next one
// interval after the previous one was answered or timed out, and returns
// the round-trip times of those answered, in order. Each echo waits at most
// timeout for its reply. If fewer than count were answered it returns the
// ones that were with an error. Cancelling ctx stops it at once. It needs
// root (raw ICMP socket).
func Ping(ctx context.Context, from *netns.NS, dst netip.Addr, count int, interval, timeout time.Duration) ([]time.Duration, error) {
	dst = dst.Unmap()
	network, laddr, proto := "ip4:icmp", "0.0.0.0", 1
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, laddr, proto = "ip6:ipv6-icmp", "::", 58
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var c *icmp.PacketConn
	if err := from.Do(func() (err error) {
		c, err = icmp.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return nil, fmt.Errorf("ping %v: %w", dst, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	// A raw socket sees every echo reply in the namespace; the random
	// identifier picks out ours.
	id := rand.N(0xffff) + 1
	peer := &net.IPAddr{IP: dst.AsSlice()}
	payload := []byte("ptun probe ping")
	buf := make([]byte, 1500)
	var rtts []time.Duration
	for seq := 1; seq <= count; seq++ {
		if seq > 1 {
			select {
			case <-ctx.Done():
				return rtts, ctx.Err()
			case <-time.After(interval):
			}
		}
		msg := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: seq, Data: payload}}
		wb, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
		if err != nil {
			return rtts, err
		}
		sent := time.Now()
		if _, err := c.WriteTo(wb, peer); err != nil {
			if ctx.Err() != nil {
				return rtts, ctx.Err()
			}
			return rtts, fmt.Errorf("ping %v: %w", dst, err)
		}
		got, err := awaitEcho(c, buf, proto, replyType, id, seq, dst, sent.Add(timeout))
		if err != nil {
			if ctx.Err() != nil {
				return rtts, ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return rtts, fmt.Errorf("ping %v: %w", dst, err)
		}
		rtts = append(rtts, got.Sub(sent))
	}
	if len(rtts) < count {
		return rtts, fmt.Errorf("ping %v: %d of %d echoes answered", dst, len(rtts), count)
	}
	return rtts, nil
}

// awaitEcho reads until the reply to (id, seq) from dst arrives, and
// returns when it arrived; after deadline it fails with
// os.ErrDeadlineExceeded. Other packets are skipped.
func awaitEcho(c *icmp.PacketConn, buf []byte, proto int, replyType icmp.Type, id, seq int, dst netip.Addr, deadline time.Time) (time.Time, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return time.Time{}, err
	}
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return time.Time{}, err
		}
		got := time.Now()
		ipa, ok := from.(*net.IPAddr)
		if !ok {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipa.IP); !ok || a.Unmap() != dst {
			continue
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != replyType {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq {
			return got, nil
		}
	}
}
