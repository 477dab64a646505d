package uapi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/ptun-vpn/ptun/wgcfg"
)

// requestEnd returns the offset just past the blank line that ends the first
// message in data, or -1 if there is none.
func requestEnd(data []byte) int {
	if len(data) > 0 && data[0] == '\n' {
		return 1
	}
	if i := bytes.Index(data, []byte("\n\n")); i >= 0 {
		return i + 2
	}
	return -1
}

func FuzzParseSet(f *testing.F) {
	f.Add([]byte("\n"))
	f.Add([]byte("private_key=" + hexA + "\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\n"))
	f.Add([]byte("public_key=" + hexB + "\nremove=true\n\n"))
	f.Add([]byte("public_key=" + hexB + "\nupdate_only=true\npreshared_key=" + hexC + "\nendpoint=[2001:db8::1%eth0]:51820\n" +
		"persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=100.64.0.9/24\nallowed_ip=-2001:db8::/32\n" +
		"allowed_ip=-100.64.0.0/24\nprotocol_version=1\n\n"))
	f.Add([]byte("public_key=" + hexB + "\nallowed_ip=100.64.0.1/32\npublic_key=" + hexC + "\nendpoint=198.18.0.1:1\n\nlisten_port=2\n\n"))
	f.Add([]byte("listen_port=65536\n\n"))
	f.Add([]byte("endpoint=198.18.0.1:1\npublic_key=" + hexB + "\n\n"))
	f.Add([]byte("public_key=" + hexB + "\nprotocol_version=2\n\n"))
	f.Add([]byte("bogus\n" + strings.Repeat("y", 1100) + "\n\nlisten_port=1\n\n"))
	f.Add([]byte("listen_port=1"))

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		cfg, err := ParseSet(r)
		rest, _ := io.ReadAll(r)
		end := requestEnd(data)

		if err != nil {
			var ue *wgcfg.Error
			if !errors.As(err, &ue) {
				t.Fatalf("error %v is not *wgcfg.Error", err)
			}
			switch ue.Errno {
			case syscall.EINVAL, syscall.EPROTO:
				if end < 0 || !bytes.Equal(rest, data[end:]) {
					t.Fatalf("failed request not consumed to its blank line: %d bytes left of %d", len(rest), len(data))
				}
			case syscall.EIO:
				if end >= 0 {
					t.Fatalf("EIO although the request is complete: %v", err)
				}
			default:
				t.Fatalf("unexpected errno %v: %v", ue.Errno, err)
			}
			return
		}
		if end < 0 || !bytes.Equal(rest, data[end:]) {
			t.Fatalf("parsed request not consumed exactly: %d bytes left, want %d", len(rest), len(data)-end)
		}
		for _, p := range cfg.Peers {
			seen := map[netip.Prefix]bool{}
			for _, list := range [][]netip.Prefix{p.AddAllowedIPs, p.RemoveAllowedIPs} {
				for _, q := range list {
					if !q.IsValid() || q.Masked() != q {
						t.Fatalf("prefix %v not valid and masked", q)
					}
					if seen[q] {
						t.Fatalf("prefix %v listed twice", q)
					}
					seen[q] = true
				}
			}
			if p.Endpoint != nil && !p.Endpoint.IsValid() {
				t.Fatalf("invalid endpoint %v accepted", *p.Endpoint)
			}
		}

		var buf bytes.Buffer
		if err := WriteSet(&buf, cfg); err != nil {
			t.Fatalf("WriteSet of a parsed config: %v", err)
		}
		buf.WriteByte('\n')
		again, err := ParseSet(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !reflect.DeepEqual(normalise(again), normalise(cfg)) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", again, cfg)
		}
	})
}

// normalise makes empty and nil lists compare equal.
func normalise(cfg *wgcfg.DeviceConfig) *wgcfg.DeviceConfig {
	c := *cfg
	c.Peers = nil
	for _, p := range cfg.Peers {
		if len(p.AddAllowedIPs) == 0 {
			p.AddAllowedIPs = nil
		}
		if len(p.RemoveAllowedIPs) == 0 {
			p.RemoveAllowedIPs = nil
		}
		c.Peers = append(c.Peers, p)
	}
	return &c
}

func FuzzParseGet(f *testing.F) {
	var buf bytes.Buffer
	WriteGet(&buf, sampleState())
	buf.WriteString("errno=0\n\n")
	f.Add(buf.Bytes())
	f.Add([]byte("errno=0\n\n"))
	f.Add([]byte("errno=-22\n\n"))
	f.Add([]byte("listen_port=1\nfuture=1\npublic_key=" + hexB + "\nlast_handshake_time_sec=9223372036854775807\nlast_handshake_time_nsec=999999999\nerrno=0\n\n"))
	f.Add([]byte("public_key=" + hexB + "\nendpoint=[fe80::1%eth0]:1\nallowed_ip=100.64.0.9/10\nerrno=0\n\n"))
	f.Add([]byte("private_key=zz\nerrno=0\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseGet(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			var ue *wgcfg.Error
			if !errors.As(err, &ue) || ue.Errno == 0 {
				t.Fatalf("error %v is not an *wgcfg.Error with an errno", err)
			}
			return
		}
		var buf bytes.Buffer
		if err := WriteGet(&buf, st); err != nil {
			t.Fatalf("WriteGet of a parsed state: %v", err)
		}
		buf.WriteString("errno=0\n\n")
		again, err := ParseGet(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, buf.String())
		}
		if !statesEqual(again, st) {
			t.Fatalf("round trip changed the state:\n%+v\n%+v", again, st)
		}
	})
}
