package front

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/ptun-vpn/ptun/uapi"
)

// TestConfigFromState: the set request built from a get answer gives a
// fresh device the same configuration, statistics aside.
func TestConfigFromState(t *testing.T) {
	const get = "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n" +
		"listen_port=12912\nfwmark=51820\n" +
		"public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n" +
		"preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52\n" +
		"protocol_version=1\nendpoint=198.18.0.2:51820\nlast_handshake_time_sec=1\nlast_handshake_time_nsec=2\n" +
		"tx_bytes=38333\nrx_bytes=2224\npersistent_keepalive_interval=25\n" +
		"allowed_ip=100.64.0.0/24\nallowed_ip=2001:db8::/64\n" +
		"public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n" +
		"protocol_version=1\nallowed_ip=100.64.9.9/32\n" +
		"errno=0\n\n"
	st, err := uapi.ParseGet(bufio.NewReader(strings.NewReader(get)))
	if err != nil {
		t.Fatal(err)
	}
	cfg := ConfigFromState(st)
	var b strings.Builder
	if err := uapi.WriteSet(&b, cfg); err != nil {
		t.Fatal(err)
	}
	set := b.String()
	for _, want := range []string{
		"private_key=e84b5a6d", "listen_port=12912\n", "fwmark=51820\n", "replace_peers=true\n",
		"public_key=b85996fe", "preshared_key=18851509", "endpoint=198.18.0.2:51820\n",
		"persistent_keepalive_interval=25\n", "replace_allowed_ips=true\n",
		"allowed_ip=100.64.0.0/24\n", "allowed_ip=2001:db8::/64\n",
		"public_key=58402e69", "allowed_ip=100.64.9.9/32\n",
	} {
		if !strings.Contains(set, want) {
			t.Errorf("set request lacks %q:\n%s", want, set)
		}
	}
	for _, stat := range []string{"tx_bytes", "rx_bytes", "last_handshake"} {
		if strings.Contains(set, stat) {
			t.Errorf("set request carries the statistic %s:\n%s", stat, set)
		}
	}
	// The second peer has no endpoint: none is invented.
	if strings.Count(set, "endpoint=") != 1 {
		t.Errorf("want one endpoint line:\n%s", set)
	}
	// It parses as a valid set request.
	if _, err := uapi.ParseSet(bufio.NewReader(strings.NewReader(set + "\n"))); err != nil {
		t.Fatalf("ParseSet of the replay: %v\n%s", err, set)
	}
}

// TestAllowed: an engine gets low ports and marks only as configured.
func TestAllowed(t *testing.T) {
	s := &supervisor{}
	s.port, s.mark = 443, 0x10
	for _, tc := range []struct {
		port uint16
		mark uint32
		ok   bool
	}{
		{0, 0, true}, {51820, 0, true}, {443, 0, true}, {443, 0x10, true},
		{22, 0, false}, {53, 0x10, false}, {0, 0x11, false}, {40000, 0xffff, false},
	} {
		err := s.allowed(tc.port, tc.mark)
		if (err == nil) != tc.ok {
			t.Errorf("allowed(%d, %#x) = %v, want ok=%v", tc.port, tc.mark, err, tc.ok)
		}
		if err != nil && !errors.Is(err, syscall.EPERM) {
			t.Errorf("allowed(%d, %#x): %v, want EPERM", tc.port, tc.mark, err)
		}
	}
	// During a set that changes them, old and new are both allowed.
	s.pendingPort, s.pendingMark = 80, 0x20
	if s.allowed(80, 0x20) != nil || s.allowed(443, 0x10) != nil {
		t.Error("pending port and mark refused")
	}
}

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
