package openconnect

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// goroutineSet is a snapshot of the running goroutines' stacks, by id. Ids
// are never reused, so one present after an operation and absent before
// was started by (or during) it.
type goroutineSet map[uint64]string

func goroutines() goroutineSet {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	set := goroutineSet{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		head, _, _ := strings.Cut(string(g), " [")
		id, err := strconv.ParseUint(strings.TrimPrefix(head, "goroutine "), 10, 64)
		if err == nil {
			set[id] = string(g)
		}
	}
	return set
}

// checkNoLeak fails t if goroutines of this package or of pion started
// since before are still running after a bounded wait.
func checkNoLeak(t *testing.T, before goroutineSet) {
	t.Helper()
	var leaked []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		leaked = leaked[:0]
		for id, stack := range goroutines() {
			if _, ok := before[id]; ok {
				continue
			}
			if (strings.Contains(stack, "ptun/openconnect.") || strings.Contains(stack, "github.com/pion/")) &&
				!strings.Contains(stack, "testing.tRunner") {
				leaked = append(leaked, stack)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%d goroutine(s) still running after Close:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
}

func ipChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// icmpEcho builds an IPv4 ICMP echo request.
func icmpEcho(src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	p := make([]byte, 20+8+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], seq)
	p[6] = 0x40 // don't fragment
	p[8] = 64
	p[9] = 1
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], ipChecksum(p[:20]))
	icmp := p[20:]
	icmp[0] = 8
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], payload)
	binary.BigEndian.PutUint16(icmp[2:], ipChecksum(icmp))
	return p
}

// parseEchoReply reads an IPv4 ICMP echo reply.
func parseEchoReply(p []byte) (src, dst netip.Addr, id, seq uint16, data []byte, ok bool) {
	if len(p) < 28 || p[0]>>4 != 4 || p[9] != 1 {
		return
	}
	ihl := int(p[0]&0xf) * 4
	if ihl < 20 || len(p) < ihl+8 || int(binary.BigEndian.Uint16(p[2:])) != len(p) {
		return
	}
	icmp := p[ihl:]
	if icmp[0] != 0 || ipChecksum(icmp) != 0 {
		return
	}
	src = netip.AddrFrom4([4]byte(p[12:16]))
	dst = netip.AddrFrom4([4]byte(p[16:20]))
	return src, dst, binary.BigEndian.Uint16(icmp[4:]), binary.BigEndian.Uint16(icmp[6:]), icmp[8:], true
}

func counterValue(s *ClientSession, name string) uint64 {
	for _, c := range s.Stats() {
		if c.Name == name {
			return c.Value
		}
	}
	panic("no counter " + name)
}
