package uapi

import (
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wgcfg"
)

func appendKeyLine(b []byte, name string, k *[32]byte) []byte {
	b = append(b, name...)
	b = append(b, '=')
	b = hex.AppendEncode(b, k[:])
	return append(b, '\n')
}

func appendUintLine(b []byte, name string, v uint64) []byte {
	b = append(b, name...)
	b = append(b, '=')
	b = strconv.AppendUint(b, v, 10)
	return append(b, '\n')
}

// WriteGet writes st as the key=value lines of a get=1 answer, in the order
// wireguard-go uses: private_key (only if set), listen_port, fwmark (only if
// not 0), then per peer public_key, preshared_key, protocol_version,
// endpoint (only if known), last_handshake_time_sec and _nsec, tx_bytes,
// rx_bytes, persistent_keepalive_interval and one allowed_ip line per
// prefix. It writes neither the errno line nor the blank line that end the
// answer. It checks st first and writes nothing if a prefix is invalid; the
// lines go to w in one Write.
func WriteGet(w io.Writer, st *wgcfg.DeviceState) error {
	b, err := appendGet(make([]byte, 0, getSize(st)), st)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// getSize estimates the length of st's get answer, errno line included.
func getSize(st *wgcfg.DeviceState) int {
	size := 128
	for i := range st.Peers {
		size += 400 + 56*len(st.Peers[i].AllowedIPs)
	}
	return size
}

func appendGet(b []byte, st *wgcfg.DeviceState) ([]byte, error) {
	for i := range st.Peers {
		for _, p := range st.Peers[i].AllowedIPs {
			if !p.IsValid() {
				return b, &wgcfg.Error{Errno: syscall.EINVAL, Err: fmt.Errorf("uapi: peer %d has an invalid allowed IP", i)}
			}
		}
	}
	var zero [32]byte
	if [32]byte(st.PrivateKey) != zero {
		b = appendKeyLine(b, "private_key", (*[32]byte)(&st.PrivateKey))
	}
	b = appendUintLine(b, "listen_port", uint64(st.ListenPort))
	if st.FwMark != 0 {
		b = appendUintLine(b, "fwmark", uint64(st.FwMark))
	}
	for i := range st.Peers {
		p := &st.Peers[i]
		b = appendKeyLine(b, "public_key", (*[32]byte)(&p.PublicKey))
		b = appendKeyLine(b, "preshared_key", (*[32]byte)(&p.PresharedKey))
		b = append(b, "protocol_version=1\n"...)
		if p.Endpoint.IsValid() {
			b = append(b, "endpoint="...)
			b = p.Endpoint.AppendTo(b)
			b = append(b, '\n')
		}
		var sec, nsec uint64
		if !p.LastHandshake.IsZero() && p.LastHandshake.Unix() >= 0 {
			sec, nsec = uint64(p.LastHandshake.Unix()), uint64(p.LastHandshake.Nanosecond())
		}
		b = appendUintLine(b, "last_handshake_time_sec", sec)
		b = appendUintLine(b, "last_handshake_time_nsec", nsec)
		b = appendUintLine(b, "tx_bytes", p.TxBytes)
		b = appendUintLine(b, "rx_bytes", p.RxBytes)
		b = appendUintLine(b, "persistent_keepalive_interval", uint64(p.PersistentKeepalive))
		for _, pfx := range p.AllowedIPs {
			b = append(b, "allowed_ip="...)
			b = pfx.AppendTo(b)
			b = append(b, '\n')
		}
	}
	return b, nil
}

// WriteSet writes cfg as the key=value lines of a set=1 request, without the
// set=1 line and the blank line around them. Every field cfg sets is
// written, so ParseSet of the output returns cfg (for a cfg from ParseSet,
// exactly). It checks cfg first and writes nothing if an endpoint or prefix
// is invalid; the lines go to w in one Write.
func WriteSet(w io.Writer, cfg *wgcfg.DeviceConfig) error {
	b, err := appendSet(nil, cfg)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func appendSet(b []byte, cfg *wgcfg.DeviceConfig) ([]byte, error) {
	for i := range cfg.Peers {
		p := &cfg.Peers[i]
		if p.Endpoint != nil && !p.Endpoint.IsValid() {
			return b, &wgcfg.Error{Errno: syscall.EINVAL, Err: fmt.Errorf("uapi: peer %d has an invalid endpoint", i)}
		}
		for _, list := range [2][]netip.Prefix{p.AddAllowedIPs, p.RemoveAllowedIPs} {
			for _, pfx := range list {
				if !pfx.IsValid() {
					return b, &wgcfg.Error{Errno: syscall.EINVAL, Err: fmt.Errorf("uapi: peer %d has an invalid allowed IP", i)}
				}
			}
		}
	}
	if cfg.PrivateKey != nil {
		b = appendKeyLine(b, "private_key", (*[32]byte)(cfg.PrivateKey))
	}
	if cfg.ListenPort != nil {
		b = appendUintLine(b, "listen_port", uint64(*cfg.ListenPort))
	}
	if cfg.FwMark != nil {
		b = appendUintLine(b, "fwmark", uint64(*cfg.FwMark))
	}
	if cfg.ReplacePeers {
		b = append(b, "replace_peers=true\n"...)
	}
	for i := range cfg.Peers {
		p := &cfg.Peers[i]
		b = appendKeyLine(b, "public_key", (*[32]byte)(&p.PublicKey))
		if p.Remove {
			b = append(b, "remove=true\n"...)
		}
		if p.UpdateOnly {
			b = append(b, "update_only=true\n"...)
		}
		if p.PresharedKey != nil {
			b = appendKeyLine(b, "preshared_key", (*[32]byte)(p.PresharedKey))
		}
		if p.Endpoint != nil {
			b = append(b, "endpoint="...)
			b = p.Endpoint.AppendTo(b)
			b = append(b, '\n')
		}
		if p.PersistentKeepalive != nil {
			b = appendUintLine(b, "persistent_keepalive_interval", uint64(*p.PersistentKeepalive))
		}
		if p.ReplaceAllowedIPs {
			b = append(b, "replace_allowed_ips=true\n"...)
		}
		for _, pfx := range p.AddAllowedIPs {
			b = append(b, "allowed_ip="...)
			b = pfx.AppendTo(b)
			b = append(b, '\n')
		}
		for _, pfx := range p.RemoveAllowedIPs {
			b = append(b, "allowed_ip=-"...)
			b = pfx.AppendTo(b)
			b = append(b, '\n')
		}
	}
	return b, nil
}

// validCounterName reports whether a counter name can go on a stats line.
func validCounterName(name string) bool {
	return name != "" && name != "errno" && !strings.ContainsAny(name, "=\n")
}

// appendStats appends one name=value line per counter; names that cannot
// be framed are skipped and returned so the caller can log them.
func appendStats(b []byte, counters []metrics.Counter) ([]byte, []string) {
	var skipped []string
	for _, c := range counters {
		if !validCounterName(c.Name) {
			skipped = append(skipped, c.Name)
			continue
		}
		b = appendUintLine(b, c.Name, c.Value)
	}
	return b, skipped
}
