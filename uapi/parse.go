package uapi

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// errLineTooLong marks a line longer than maxLineLen. The line was read to
// its end, so the stream is still framed.
var errLineTooLong = errors.New("uapi: line too long")

// lineReader reads the '\n'-terminated lines of one message, bounding each
// line and the whole message.
type lineReader struct {
	r      *bufio.Reader
	budget int // bytes the message may still use
	buf    [maxLineLen + 1]byte
}

func newLineReader(r *bufio.Reader, limit int) *lineReader {
	return &lineReader{r: r, budget: limit}
}

// next returns the next line without its '\n'; the slice is valid until the
// next call. It returns io.EOF if the stream ends before the line's first
// byte, io.ErrUnexpectedEOF (or the read error) if it ends inside it,
// errLineTooLong for a line too long (read and dropped), and ErrTooLarge
// when the message outgrows its budget (the stream is then left mid-line).
func (lr *lineReader) next() ([]byte, error) {
	n := 0
	read := 0
	tooLong := false
	for {
		frag, err := lr.r.ReadSlice('\n')
		read += len(frag)
		lr.budget -= len(frag)
		if lr.budget < 0 {
			return nil, ErrTooLarge
		}
		if !tooLong {
			if n+len(frag) > len(lr.buf) {
				tooLong = true
			} else {
				n += copy(lr.buf[n:], frag)
			}
		}
		switch {
		case err == nil:
			if tooLong {
				return nil, errLineTooLong
			}
			return lr.buf[:n-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if read == 0 {
				return nil, io.EOF
			}
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// skipToEnd reads and drops lines up to and including the blank line that
// ends the message. It returns nil once the message is consumed.
func (lr *lineReader) skipToEnd() error {
	for {
		line, err := lr.next()
		if errors.Is(err, errLineTooLong) {
			continue
		}
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
	}
}

// readError turns a failure to read a message into the *wgcfg.Error a parser
// returns.
func readError(err error) *wgcfg.Error {
	switch {
	case errors.Is(err, ErrTooLarge):
		return &wgcfg.Error{Errno: syscall.EMSGSIZE, Err: ErrTooLarge}
	case errors.Is(err, io.EOF):
		return &wgcfg.Error{Errno: syscall.EIO, Err: fmt.Errorf("uapi: message cut short: %w", io.ErrUnexpectedEOF)}
	default:
		return &wgcfg.Error{Errno: syscall.EIO, Err: fmt.Errorf("uapi: reading message: %w", err)}
	}
}

// quote renders a value for an error message, cut to a readable length.
func quote(v []byte) string {
	const max = 64
	if len(v) > max {
		return strconv.Quote(string(v[:max])) + "..."
	}
	return strconv.Quote(string(v))
}

func parseKey(v []byte) ([32]byte, bool) {
	var k [32]byte
	if len(v) != 2*len(k) {
		return k, false
	}
	_, err := hex.Decode(k[:], v)
	return k, err == nil
}

func parseUint(v []byte, bitSize int) (uint64, bool) {
	if len(v) == 0 || v[0] < '0' || v[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(v), 10, bitSize)
	return n, err == nil
}

// setParser holds the state of one set=1 request being parsed.
type setParser struct {
	cfg  wgcfg.DeviceConfig
	peer *wgcfg.PeerConfig // the peer being configured; nil before the first public_key
	err  *wgcfg.Error      // the first error; later lines are read but ignored

	// allowed_ip lines of the current peer in request order, resolved in
	// endPeer.
	ips  []allowedIPLine
	seen map[netip.Prefix]struct{}
}

type allowedIPLine struct {
	prefix netip.Prefix
	remove bool
}

func (p *setParser) fail(errno syscall.Errno, format string, args ...any) {
	if p.err == nil {
		p.err = &wgcfg.Error{Errno: errno, Err: fmt.Errorf("uapi: "+format, args...)}
	}
}

// ParseSet reads the body of a set=1 request from r (the set=1 line already
// read) through the blank line that ends it, and returns the configuration
// it asks for, fully validated.
//
// Lines must come in protocol order: device keys (private_key, listen_port,
// fwmark, replace_peers), then for each peer a public_key line followed by
// that peer's keys (remove, update_only, preshared_key, endpoint,
// persistent_keepalive_interval, replace_allowed_ips, allowed_ip — with a
// leading '-' to remove the prefix — and protocol_version, which must be 1).
//
// On error it still reads to the end of the request when it can, so the
// connection can carry the next one, and returns an *wgcfg.Error: EINVAL for a bad
// line, unknown key, bad value or key out of order, EPROTO for a
// protocol_version other than 1, EMSGSIZE (wrapping ErrTooLarge) for a
// request over MaxRequestSize, EIO if the stream fails or ends early. Error
// messages never contain key material.
func ParseSet(r *bufio.Reader) (*wgcfg.DeviceConfig, error) {
	lr := newLineReader(r, requestLimit)
	p := setParser{}
	for {
		line, err := lr.next()
		if errors.Is(err, errLineTooLong) {
			p.fail(syscall.EINVAL, "line longer than %d bytes", maxLineLen)
			continue
		}
		if err != nil {
			return nil, readError(err)
		}
		if len(line) == 0 {
			break
		}
		if p.err == nil {
			p.line(line)
		}
	}
	p.endPeer()
	if p.err != nil {
		return nil, p.err
	}
	return &p.cfg, nil
}

func (p *setParser) line(line []byte) {
	key, value, ok := bytes.Cut(line, []byte{'='})
	if !ok {
		// The line is not quoted: a mangled key line may hold key material.
		p.fail(syscall.EINVAL, "a %d-byte line is not key=value", len(line))
		return
	}
	k := string(key)
	switch k {
	case "private_key", "listen_port", "fwmark", "replace_peers":
		if p.peer != nil {
			p.fail(syscall.EINVAL, "device key %s after a public_key line", k)
			return
		}
		p.deviceKey(k, value)
	case "public_key":
		pk, ok := parseKey(value)
		if !ok {
			p.fail(syscall.EINVAL, "invalid public_key %s (want 64 hex digits)", quote(value))
			return
		}
		p.endPeer()
		p.cfg.Peers = append(p.cfg.Peers, wgcfg.PeerConfig{PublicKey: noise.PublicKey(pk)})
		p.peer = &p.cfg.Peers[len(p.cfg.Peers)-1]
	case "remove", "update_only", "preshared_key", "endpoint", "persistent_keepalive_interval",
		"replace_allowed_ips", "allowed_ip", "protocol_version":
		if p.peer == nil {
			p.fail(syscall.EINVAL, "peer key %s before any public_key line", k)
			return
		}
		p.peerKey(k, value)
	default:
		p.fail(syscall.EINVAL, "unknown key %s", quote(key))
	}
}

func (p *setParser) deviceKey(k string, value []byte) {
	switch k {
	case "private_key":
		sk, ok := parseKey(value)
		if !ok {
			p.fail(syscall.EINVAL, "invalid private_key (want 64 hex digits)")
			return
		}
		key := noise.PrivateKey(sk)
		p.cfg.PrivateKey = &key
	case "listen_port":
		n, ok := parseUint(value, 16)
		if !ok {
			p.fail(syscall.EINVAL, "invalid listen_port %s (want 0-65535)", quote(value))
			return
		}
		port := uint16(n)
		p.cfg.ListenPort = &port
	case "fwmark":
		n, ok := parseUint(value, 32)
		if !ok {
			p.fail(syscall.EINVAL, "invalid fwmark %s (want 0-4294967295)", quote(value))
			return
		}
		mark := uint32(n)
		p.cfg.FwMark = &mark
	case "replace_peers":
		if p.flag(k, value) {
			p.cfg.ReplacePeers = true
		}
	}
}

// flag checks the value of a key whose only value is "true".
func (p *setParser) flag(k string, value []byte) bool {
	if string(value) != "true" {
		p.fail(syscall.EINVAL, "invalid %s value %s (only \"true\" is allowed)", k, quote(value))
		return false
	}
	return true
}

func (p *setParser) peerKey(k string, value []byte) {
	peer := p.peer
	switch k {
	case "remove":
		if p.flag(k, value) {
			peer.Remove = true
		}
	case "update_only":
		if p.flag(k, value) {
			peer.UpdateOnly = true
		}
	case "preshared_key":
		psk, ok := parseKey(value)
		if !ok {
			p.fail(syscall.EINVAL, "invalid preshared_key (want 64 hex digits)")
			return
		}
		key := noise.PresharedKey(psk)
		peer.PresharedKey = &key
	case "endpoint":
		ep, err := netip.ParseAddrPort(string(value))
		if err != nil {
			p.fail(syscall.EINVAL, "invalid endpoint %s (want 198.18.0.1:51820 or [2001:db8::1]:51820)", quote(value))
			return
		}
		peer.Endpoint = &ep
	case "persistent_keepalive_interval":
		n, ok := parseUint(value, 16)
		if !ok {
			p.fail(syscall.EINVAL, "invalid persistent_keepalive_interval %s (want 0-65535)", quote(value))
			return
		}
		secs := uint16(n)
		peer.PersistentKeepalive = &secs
	case "replace_allowed_ips":
		if p.flag(k, value) {
			peer.ReplaceAllowedIPs = true
			p.ips = p.ips[:0] // earlier allowed_ip lines of this peer are moot
		}
	case "allowed_ip":
		remove := len(value) > 0 && value[0] == '-'
		if remove {
			value = value[1:]
		}
		pfx, err := netip.ParsePrefix(string(value))
		if err != nil {
			p.fail(syscall.EINVAL, "invalid allowed_ip %s", quote(value))
			return
		}
		p.ips = append(p.ips, allowedIPLine{prefix: pfx.Masked(), remove: remove})
	case "protocol_version":
		if string(value) != "1" {
			p.fail(syscall.EPROTO, "unsupported protocol_version %s (only 1)", quote(value))
		}
	}
}

// endPeer resolves the current peer's allowed_ip lines into its two lists:
// the last line naming a prefix decides whether it is added or removed.
func (p *setParser) endPeer() {
	if p.peer == nil || len(p.ips) == 0 {
		return
	}
	if p.seen == nil {
		p.seen = make(map[netip.Prefix]struct{}, len(p.ips))
	}
	clear(p.seen)
	for i := len(p.ips) - 1; i >= 0; i-- {
		l := p.ips[i]
		if _, dup := p.seen[l.prefix]; dup {
			continue
		}
		p.seen[l.prefix] = struct{}{}
		if l.remove {
			p.peer.RemoveAllowedIPs = append(p.peer.RemoveAllowedIPs, l.prefix)
		} else {
			p.peer.AddAllowedIPs = append(p.peer.AddAllowedIPs, l.prefix)
		}
	}
	reverse(p.peer.AddAllowedIPs)
	reverse(p.peer.RemoveAllowedIPs)
	p.ips = p.ips[:0]
}

func reverse[S ~[]E, E any](s S) {
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
}

// ParseGet reads a get=1 answer from r through its blank line. If the answer
// carries a non-zero errno it returns an *wgcfg.Error with that errno. Keys it does
// not know are skipped, as the wg tool does; a malformed answer is an
// *wgcfg.Error with EPROTO.
func ParseGet(r *bufio.Reader) (*wgcfg.DeviceState, error) {
	return parseGet(newLineReader(r, maxAnswerSize))
}

func parseGet(lr *lineReader) (*wgcfg.DeviceState, error) {
	st := &wgcfg.DeviceState{}
	var peer *wgcfg.PeerState
	var hsSec, hsNsec uint64
	var errno uint64
	haveErrno := false
	var bad *wgcfg.Error
	protoErr := func(format string, args ...any) {
		if bad == nil {
			bad = &wgcfg.Error{Errno: syscall.EPROTO, Err: fmt.Errorf("uapi: bad get answer: "+format, args...)}
		}
	}
	endPeer := func() {
		if peer != nil && (hsSec != 0 || hsNsec != 0) {
			peer.LastHandshake = time.Unix(int64(hsSec), int64(hsNsec))
		}
		hsSec, hsNsec = 0, 0
	}
	for {
		line, err := lr.next()
		if errors.Is(err, errLineTooLong) {
			protoErr("line longer than %d bytes", maxLineLen)
			continue
		}
		if err != nil {
			return nil, readError(err)
		}
		if len(line) == 0 {
			break
		}
		if bad != nil {
			continue
		}
		key, value, ok := bytes.Cut(line, []byte{'='})
		if !ok {
			protoErr("line %s is not key=value", quote(line))
			continue
		}
		k := string(key)
		okValue := true
		switch {
		case k == "errno":
			errno, okValue = parseErrno(value)
			haveErrno = true
		case k == "public_key":
			pk, ok := parseKey(value)
			if !ok {
				okValue = false
				break
			}
			endPeer()
			st.Peers = append(st.Peers, wgcfg.PeerState{PublicKey: noise.PublicKey(pk)})
			peer = &st.Peers[len(st.Peers)-1]
		case peer == nil:
			okValue = parseGetDeviceKey(st, k, value)
		default:
			okValue = parseGetPeerKey(peer, k, value, &hsSec, &hsNsec)
		}
		if !okValue {
			protoErr("invalid %s value %s", k, quote(value))
		}
	}
	endPeer()
	switch {
	case errno != 0:
		return nil, &wgcfg.Error{Errno: syscall.Errno(errno), Err: errors.New("uapi: get refused by the device")}
	case bad != nil:
		return nil, bad
	case !haveErrno:
		return nil, &wgcfg.Error{Errno: syscall.EPROTO, Err: errors.New("uapi: bad get answer: no errno line")}
	}
	return st, nil
}

// parseErrno reads an errno value, accepting both signs: wireguard-go and
// the kernel's convention write it negative.
func parseErrno(v []byte) (uint64, bool) {
	if len(v) > 0 && v[0] == '-' {
		v = v[1:]
	}
	return parseUint(v, 31)
}

func parseGetDeviceKey(st *wgcfg.DeviceState, k string, value []byte) bool {
	switch k {
	case "private_key":
		sk, ok := parseKey(value)
		st.PrivateKey = noise.PrivateKey(sk)
		return ok
	case "listen_port":
		n, ok := parseUint(value, 16)
		st.ListenPort = uint16(n)
		return ok
	case "fwmark":
		n, ok := parseUint(value, 32)
		st.FwMark = uint32(n)
		return ok
	}
	return true
}

func parseGetPeerKey(peer *wgcfg.PeerState, k string, value []byte, hsSec, hsNsec *uint64) bool {
	var ok bool
	switch k {
	case "preshared_key":
		var psk [32]byte
		psk, ok = parseKey(value)
		peer.PresharedKey = noise.PresharedKey(psk)
	case "protocol_version":
		ok = string(value) == "1"
	case "endpoint":
		var err error
		peer.Endpoint, err = netip.ParseAddrPort(string(value))
		ok = err == nil
	case "last_handshake_time_sec":
		*hsSec, ok = parseUint(value, 63)
	case "last_handshake_time_nsec":
		*hsNsec, ok = parseUint(value, 63)
		ok = ok && *hsNsec < uint64(time.Second)
	case "tx_bytes":
		peer.TxBytes, ok = parseUint(value, 64)
	case "rx_bytes":
		peer.RxBytes, ok = parseUint(value, 64)
	case "persistent_keepalive_interval":
		var n uint64
		n, ok = parseUint(value, 16)
		peer.PersistentKeepalive = uint16(n)
	case "allowed_ip":
		pfx, err := netip.ParsePrefix(string(value))
		peer.AllowedIPs = append(peer.AllowedIPs, pfx.Masked())
		ok = err == nil
	default:
		ok = true
	}
	return ok
}

// parseStats reads a stats=1 answer: name=value lines, then errno.
func parseStats(lr *lineReader) ([]metrics.Counter, error) {
	var out []metrics.Counter
	var errno uint64
	haveErrno := false
	var bad *wgcfg.Error
	for {
		line, err := lr.next()
		if errors.Is(err, errLineTooLong) {
			continue
		}
		if err != nil {
			return nil, readError(err)
		}
		if len(line) == 0 {
			break
		}
		key, value, ok := bytes.Cut(line, []byte{'='})
		var n uint64
		if ok {
			if string(key) == "errno" {
				errno, ok = parseErrno(value)
				haveErrno = true
				if ok {
					continue
				}
			} else {
				n, ok = parseUint(value, 64)
			}
		}
		if !ok {
			if bad == nil {
				bad = &wgcfg.Error{Errno: syscall.EPROTO, Err: fmt.Errorf("uapi: bad stats answer line %s", quote(line))}
			}
			continue
		}
		out = append(out, metrics.Counter{Name: string(key), Value: n})
	}
	switch {
	case errno != 0:
		return nil, &wgcfg.Error{Errno: syscall.Errno(errno), Err: errors.New("uapi: stats refused by the device")}
	case bad != nil:
		return nil, bad
	case !haveErrno:
		return nil, &wgcfg.Error{Errno: syscall.EPROTO, Err: errors.New("uapi: bad stats answer: no errno line")}
	}
	return out, nil
}

// parseStatus reads an answer that carries only an errno line (the answer to
// set=1) and returns the errno.
func parseStatus(lr *lineReader) (syscall.Errno, error) {
	var errno uint64
	haveErrno := false
	for {
		line, err := lr.next()
		if errors.Is(err, errLineTooLong) {
			continue
		}
		if err != nil {
			return 0, readError(err)
		}
		if len(line) == 0 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("errno=")); ok {
			if errno, ok = parseErrno(v); !ok {
				return 0, &wgcfg.Error{Errno: syscall.EPROTO, Err: fmt.Errorf("uapi: bad errno line %s", quote(line))}
			}
			haveErrno = true
		}
	}
	if !haveErrno {
		return 0, &wgcfg.Error{Errno: syscall.EPROTO, Err: errors.New("uapi: answer without an errno line")}
	}
	return syscall.Errno(errno), nil
}
