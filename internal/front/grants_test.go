package front

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/metrics"
)

// TestSetMarkChecksTheSocket: the front marks only UDP sockets.
func TestSetMarkChecksTheSocket(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := setMark(r, 1); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("setMark on a pipe: %v, want EINVAL", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := setMark(f, 1); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("setMark on a TCP socket: %v, want EINVAL", err)
	}
	if os.Geteuid() == 0 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		uf, _ := c.File()
		defer uf.Close()
		if err := setMark(uf, 7); err != nil {
			t.Errorf("setMark on a UDP socket: %v", err)
		}
	}
}

// TestGrantSocket: an engine gets sockets only on the configured (or
// pending) port, with the front's fwmark, within its budget.
func TestGrantSocket(t *testing.T) {
	s := newSupervisor(Config{}, nil)
	s.port, s.pendingPort, s.mark, s.pendingMark = 51820, 51820, 0x10, 0x10
	ep := &engineProc{budget: socketBudget}
	for _, port := range []uint16{0, 22, 443, 51821, 65535} {
		if _, _, err := s.grantSocket(ep, ctl.SocketRequest{Port: port}); !errors.Is(err, syscall.EPERM) {
			t.Errorf("port %d: %v, want EPERM", port, err)
		}
	}
	port, mark, err := s.grantSocket(ep, ctl.SocketRequest{Port: 51820})
	if err != nil || port != 51820 || mark != 0x10 {
		t.Fatalf("configured port: %d %#x %v", port, mark, err)
	}
	for range socketBudget - 1 {
		if _, _, err := s.grantSocket(ep, ctl.SocketRequest{Port: 51820, V6: true}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.grantSocket(ep, ctl.SocketRequest{Port: 51820}); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("past the budget: %v, want EPERM", err)
	}
	// During a set that changes the port and mark, the new ones.
	s.pendingPort, s.pendingMark = 4000, 0x20
	ep.sockets = 0
	if port, mark, err := s.grantSocket(ep, ctl.SocketRequest{Port: 4000}); err != nil || port != 4000 || mark != 0x20 {
		t.Fatalf("pending port: %d %#x %v", port, mark, err)
	}
	// Any port configured: port 0, then the port it got for the other
	// family, and nothing else.
	s.port, s.pendingPort, s.boundPort = 0, 0, 0
	if _, _, err := s.grantSocket(ep, ctl.SocketRequest{Port: 0}); err != nil {
		t.Fatal(err)
	}
	s.boundPort = 34567
	if _, _, err := s.grantSocket(ep, ctl.SocketRequest{Port: 34567, V6: true}); err != nil {
		t.Fatalf("the bound port for the other family: %v", err)
	}
	if _, _, err := s.grantSocket(ep, ctl.SocketRequest{Port: 34568}); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("another port: %v, want EPERM", err)
	}
}

func TestAllowedMark(t *testing.T) {
	s := newSupervisor(Config{}, nil)
	s.mark, s.pendingMark = 0x10, 0x10
	for _, tc := range []struct {
		mark uint32
		ok   bool
	}{{0, true}, {0x10, true}, {0x11, false}, {0xffffffff, false}} {
		if err := s.allowedMark(tc.mark); (err == nil) != tc.ok || (err != nil && !errors.Is(err, syscall.EPERM)) {
			t.Errorf("allowedMark(%#x) = %v, want ok=%v", tc.mark, err, tc.ok)
		}
	}
	s.pendingMark = 0x20
	if s.allowedMark(0x20) != nil || s.allowedMark(0x10) != nil {
		t.Error("the pending and the current mark must both be allowed during a set")
	}
}

// TestEscapeLine: no engine text reaches the log as a control character,
// a new line, an escape sequence or a bidi override.
func TestEscapeLine(t *testing.T) {
	for in, want := range map[string]string{
		"plain text: ok":                "plain text: ok",
		"two\nlines":                    `two\nlines`,
		"front: forged\r\nptun: x":      `front: forged\x0d\nptun: x`,
		"\x1b[2J\x1b]0;title\x07":       `\x1b[2J\x1b]0;title\x07`,
		"back\\slash":                   `back\\slash`,
		"bidi \u202eevil":               `bidi \u{202e}evil`,
		"bad \xff utf8":                 `bad \xff utf8`,
		"tab\there, del\x7f, c1 \u0085": `tab\there, del\x7f, c1 \u{85}`,
		"日本語 stays":                     "日本語 stays",
	} {
		if got := escapeLine(in, 1024); got != want {
			t.Errorf("escapeLine(%q) = %q, want %q", in, got, want)
		}
	}
	long := escapeLine(strings.Repeat("\x00", 5000), maxLogLine)
	if len(long) > maxLogLine+16 || !strings.HasSuffix(long, "(cut)") {
		t.Errorf("a long line is not cut: %d bytes", len(long))
	}
}

func FuzzEscapeLine(f *testing.F) {
	f.Add("front: engine exited\n\x1b[31m")
	f.Add("\u202e\xff\x00")
	f.Fuzz(func(t *testing.T, s string) {
		out := escapeLine(s, maxLogLine)
		for _, r := range out {
			if r < 0x20 || r == 0x7f || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
				t.Fatalf("escapeLine(%q) kept %U", s, r)
			}
		}
		if !utf8.ValidString(out) {
			t.Fatalf("escapeLine(%q) is not valid UTF-8", s)
		}
	})
}

func TestTokenBucket(t *testing.T) {
	tb := newTokenBucket(10, 5)
	now := time.Unix(1000, 0)
	n := 0
	for range 100 {
		if tb.allow(now) {
			n++
		}
	}
	if n != 5 {
		t.Fatalf("burst: %d allowed, want 5", n)
	}
	now = now.Add(time.Second) // 10 more, capped at the burst of 5
	n = 0
	for range 100 {
		if tb.allow(now) {
			n++
		}
	}
	if n != 5 {
		t.Fatalf("after a second: %d allowed, want 5 (the burst)", n)
	}
	now = now.Add(200 * time.Millisecond)
	if !tb.allow(now) || !tb.allow(now) || tb.allow(now) {
		t.Fatal("200 ms at 10/s should allow exactly 2")
	}
}

func TestValidCounters(t *testing.T) {
	in := []metrics.Counter{
		{Name: "drop_bad_mac", Value: 1}, {Name: "x=1\nerrno=0", Value: 2}, {Name: "", Value: 3},
		{Name: "UPPER", Value: 4}, {Name: strings.Repeat("a", 65), Value: 5}, {Name: "rx_bytes_2", Value: 6},
	}
	got := validCounters(in)
	if len(got) != 2 || got[0].Name != "drop_bad_mac" || got[1].Name != "rx_bytes_2" {
		t.Fatalf("validCounters = %v", got)
	}
	many := make([]metrics.Counter, 5000)
	for i := range many {
		many[i].Name = "c"
	}
	if n := len(validCounters(many)); n != maxEngineCounters {
		t.Fatalf("%d counters kept, want %d", n, maxEngineCounters)
	}
}
