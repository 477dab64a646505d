package openconnect

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The CONNECT request and the tunnel parameters the server answers it
// with. Both peers match X-CSTP-* and X-DTLS-* names case-sensitively, so
// the names below are written exactly as they appear here.

// ConnectPath is the CONNECT request's target.
const ConnectPath = "/CSCOSSLC/tunnel"

// CookieName is the session cookie's name.
const CookieName = "webvpn"

// PSKNegotiate names the DTLS mode keyed from the TLS session's exporter.
const PSKNegotiate = "PSK-NEGOTIATE"

// PSKLabel is the exporter label of that key (32 bytes, no context).
const PSKLabel = "EXPORTER-openconnect-psk"

// ConnectRequest is what a client asks for in its CONNECT.
type ConnectRequest struct {
	Cookie    string
	Hostname  string // X-CSTP-Hostname
	UserAgent string
	BaseMTU   int  // X-CSTP-Base-MTU, 0 if absent
	MTU       int  // X-CSTP-MTU, 0 if absent
	IPv4      bool // X-CSTP-Address-Type allows IPv4 (or says nothing)
	IPv6      bool // X-CSTP-Address-Type allows IPv6 and X-CSTP-Full-IPv6-Capability
	// PSK reports that X-DTLS-CipherSuite offers PSK-NEGOTIATE.
	PSK bool
	// Previous holds the addresses a reconnecting client had (X-CSTP-Address).
	Previous []netip.Addr
}

// ErrBadConnect is the error for a CONNECT this package cannot serve.
var ErrBadConnect = errors.New("openconnect: bad CONNECT request")

// ParseConnect reads a CONNECT request's parameters.
func ParseConnect(r *Request) (ConnectRequest, error) {
	if r.Method != "CONNECT" || r.Target != ConnectPath {
		return ConnectRequest{}, fmt.Errorf("%w: %s %q", ErrBadConnect, clip(r.Method), clip(r.Target))
	}
	h := r.Headers
	c := ConnectRequest{
		Cookie:    h.Cookie(CookieName),
		Hostname:  h.Get("X-CSTP-Hostname"),
		UserAgent: h.Get("User-Agent"),
		IPv4:      true,
	}
	if c.Cookie == "" {
		return ConnectRequest{}, fmt.Errorf("%w: no %s cookie", ErrBadConnect, CookieName)
	}
	var err error
	if c.BaseMTU, err = optInt(h, "X-CSTP-Base-MTU", 0, 65535); err != nil {
		return ConnectRequest{}, err
	}
	if c.MTU, err = optInt(h, "X-CSTP-MTU", 0, 65535); err != nil {
		return ConnectRequest{}, err
	}
	if t := h.Get("X-CSTP-Address-Type"); t != "" {
		c.IPv4, c.IPv6 = false, false
		for f := range strings.SplitSeq(t, ",") {
			switch strings.TrimSpace(f) {
			case "IPv4":
				c.IPv4 = true
			case "IPv6":
				c.IPv6 = true
			}
		}
	}
	if !strings.EqualFold(h.Get("X-CSTP-Full-IPv6-Capability"), "true") {
		c.IPv6 = false
	}
	for s := range strings.SplitSeq(h.Get("X-DTLS-CipherSuite"), ":") {
		if strings.TrimSpace(s) == PSKNegotiate {
			c.PSK = true
		}
	}
	for _, v := range h.Values("X-CSTP-Address") {
		if a, err := netip.ParseAddr(v); err == nil {
			c.Previous = append(c.Previous, a)
		}
	}
	return c, nil
}

func optInt(h Headers, name string, lo, hi int) (int, error) {
	v := h.Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%w: %s %q", ErrBadConnect, name, clip(v))
	}
	return n, nil
}

// Headers are the request headers a client sends with its CONNECT.
func (c ConnectRequest) Headers(host string) Headers {
	h := Headers{
		{"Host", host},
		{"User-Agent", c.UserAgent},
		{"Cookie", CookieName + "=" + c.Cookie},
		{"X-CSTP-Version", "1"},
		{"X-CSTP-Hostname", c.Hostname},
	}
	if c.BaseMTU > 0 {
		h.Add("X-CSTP-Base-MTU", strconv.Itoa(c.BaseMTU))
	}
	if c.MTU > 0 {
		h.Add("X-CSTP-MTU", strconv.Itoa(c.MTU))
	}
	switch {
	case c.IPv4 && c.IPv6:
		h.Add("X-CSTP-Address-Type", "IPv6,IPv4")
	case c.IPv6:
		h.Add("X-CSTP-Address-Type", "IPv6")
	default:
		h.Add("X-CSTP-Address-Type", "IPv4")
	}
	for _, a := range c.Previous {
		h.Add("X-CSTP-Address", a.String())
	}
	if c.IPv6 {
		h.Add("X-CSTP-Full-IPv6-Capability", "true")
	}
	if c.PSK {
		h.Add("X-DTLS-CipherSuite", PSKNegotiate)
	}
	return h
}

// Tunnel is what the server pushes to a client in its answer to CONNECT.
type Tunnel struct {
	ServerName string
	Hostname   string

	Address4 netip.Prefix // the client's IPv4 address, with its network's length
	Address6 netip.Prefix // the client's IPv6 address, with its network's length

	DNS           []netip.Addr
	DefaultDomain []string // search domains
	SplitDNS      []string
	// Include lists the routes through the tunnel; none means all
	// traffic. Exclude lists routes kept out of it.
	Include, Exclude []netip.Prefix
	TunnelAllDNS     bool

	MTU     int // the inner MTU
	BaseMTU int // the link MTU the server settled on

	DPD         int // seconds; 0: none
	Keepalive   int // seconds; 0: none
	IdleTimeout int // seconds; 0: none
	// RekeyTime is when the client should reconnect with its cookie
	// (method new-tunnel); 0: never.
	RekeyTime int
	Banner    string

	DTLS *DTLSParams // nil: no DTLS
}

// DTLSParams are the DTLS side of Tunnel.
type DTLSParams struct {
	Port      int
	AppID     []byte // the ClientHello session_id the client must send, at most 32 bytes
	DPD       int
	Keepalive int
}

// Headers renders t as the CONNECT answer's headers, names in the peers'
// exact case.
func (t *Tunnel) Headers() Headers {
	h := Headers{{"X-CSTP-Version", "1"}}
	if t.ServerName != "" {
		h.Add("X-CSTP-Server-Name", t.ServerName)
	}
	if t.Hostname != "" {
		h.Add("X-CSTP-Hostname", t.Hostname)
	}
	if t.Address4.IsValid() {
		h.Add("X-CSTP-Address", t.Address4.Addr().String())
		h.Add("X-CSTP-Netmask", net.IP(net.CIDRMask(t.Address4.Bits(), 32)).String())
	}
	if t.Address6.IsValid() {
		h.Add("X-CSTP-Address-IP6", t.Address6.String())
	}
	for _, d := range t.DNS {
		h.Add("X-CSTP-DNS", d.String())
	}
	if len(t.DefaultDomain) > 0 {
		h.Add("X-CSTP-Default-Domain", strings.Join(t.DefaultDomain, " "))
	}
	for _, d := range t.SplitDNS {
		h.Add("X-CSTP-Split-DNS", d)
	}
	for _, p := range t.Include {
		if p.Addr().Is4() {
			h.Add("X-CSTP-Split-Include", p.String())
		} else {
			h.Add("X-CSTP-Split-Include-IP6", p.String())
		}
	}
	for _, p := range t.Exclude {
		if p.Addr().Is4() {
			h.Add("X-CSTP-Split-Exclude", p.String())
		} else {
			h.Add("X-CSTP-Split-Exclude-IP6", p.String())
		}
	}
	h.Add("X-CSTP-Tunnel-All-DNS", strconv.FormatBool(t.TunnelAllDNS))
	h.Add("X-CSTP-DPD", strconv.Itoa(t.DPD))
	h.Add("X-CSTP-Keepalive", strconv.Itoa(t.Keepalive))
	h.Add("X-CSTP-Idle-Timeout", secondsOrNone(t.IdleTimeout))
	h.Add("X-CSTP-Session-Timeout", "none")
	if t.RekeyTime > 0 {
		h.Add("X-CSTP-Rekey-Time", strconv.Itoa(t.RekeyTime))
		h.Add("X-CSTP-Rekey-Method", "new-tunnel")
	} else {
		h.Add("X-CSTP-Rekey-Method", "none")
	}
	if t.BaseMTU > 0 {
		h.Add("X-CSTP-Base-MTU", strconv.Itoa(t.BaseMTU))
	}
	h.Add("X-CSTP-MTU", strconv.Itoa(t.MTU))
	if t.Banner != "" {
		h.Add("X-CSTP-Banner", t.Banner)
	}
	if d := t.DTLS; d != nil {
		h.Add("X-DTLS-Port", strconv.Itoa(d.Port))
		h.Add("X-DTLS-App-ID", hex.EncodeToString(d.AppID))
		h.Add("X-DTLS-CipherSuite", PSKNegotiate)
		h.Add("X-DTLS-DPD", strconv.Itoa(d.DPD))
		h.Add("X-DTLS-Keepalive", strconv.Itoa(d.Keepalive))
		h.Add("X-DTLS-MTU", strconv.Itoa(t.MTU))
	}
	return h
}

func secondsOrNone(n int) string {
	if n <= 0 {
		return "none"
	}
	return strconv.Itoa(n)
}

// ErrBadTunnel is the error for a CONNECT answer a client cannot use.
var ErrBadTunnel = errors.New("openconnect: bad tunnel parameters")

// ParseTunnel reads the tunnel parameters of a CONNECT answer, as a
// client does. It needs an address and an MTU; DTLS is offered only with
// PSK-NEGOTIATE, a port and an App-ID.
func ParseTunnel(h Headers) (Tunnel, error) {
	var t Tunnel
	bad := func(name, v string) (Tunnel, error) {
		return Tunnel{}, fmt.Errorf("%w: %s %q", ErrBadTunnel, name, clip(v))
	}
	num := func(name string) (int, bool) {
		v := h.Get(name)
		if v == "" || v == "none" {
			return 0, true
		}
		n, err := strconv.Atoi(v)
		return n, err == nil && n >= 0 && n <= 1<<30
	}
	t.ServerName = h.Get("X-CSTP-Server-Name")
	t.Hostname = h.Get("X-CSTP-Hostname")
	t.Banner = h.Get("X-CSTP-Banner")
	if v := h.Get("X-CSTP-Address"); v != "" {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			return bad("X-CSTP-Address", v)
		}
		bits := 32
		if m := h.Get("X-CSTP-Netmask"); m != "" {
			ip := net.ParseIP(m).To4()
			if ip == nil {
				return bad("X-CSTP-Netmask", m)
			}
			ones, total := net.IPMask(ip).Size()
			if total != 32 {
				return bad("X-CSTP-Netmask", m)
			}
			bits = ones
		}
		t.Address4 = netip.PrefixFrom(a, bits)
	}
	if v := h.Get("X-CSTP-Address-IP6"); v != "" {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is6() {
			return bad("X-CSTP-Address-IP6", v)
		}
		t.Address6 = p
	}
	if !t.Address4.IsValid() && !t.Address6.IsValid() {
		return Tunnel{}, fmt.Errorf("%w: no address", ErrBadTunnel)
	}
	for _, name := range []string{"X-CSTP-DNS", "X-CSTP-DNS-IP6"} {
		for _, v := range h.Values(name) {
			a, err := netip.ParseAddr(v)
			if err != nil {
				return bad(name, v)
			}
			t.DNS = append(t.DNS, a)
		}
	}
	t.DefaultDomain = strings.Fields(h.Get("X-CSTP-Default-Domain"))
	t.SplitDNS = slices.Clone(h.Values("X-CSTP-Split-DNS"))
	routes := func(name string) ([]netip.Prefix, error) {
		var ps []netip.Prefix
		for _, v := range h.Values(name) {
			p, err := parseRoute(v)
			if err != nil {
				return nil, fmt.Errorf("%w: %s %q", ErrBadTunnel, name, clip(v))
			}
			ps = append(ps, p)
		}
		return ps, nil
	}
	for _, n := range []string{"X-CSTP-Split-Include", "X-CSTP-Split-Include-IP6"} {
		ps, err := routes(n)
		if err != nil {
			return Tunnel{}, err
		}
		t.Include = append(t.Include, ps...)
	}
	for _, n := range []string{"X-CSTP-Split-Exclude", "X-CSTP-Split-Exclude-IP6"} {
		ps, err := routes(n)
		if err != nil {
			return Tunnel{}, err
		}
		t.Exclude = append(t.Exclude, ps...)
	}
	t.TunnelAllDNS = h.Get("X-CSTP-Tunnel-All-DNS") == "true"
	var ok bool
	for _, f := range []struct {
		name string
		dst  *int
	}{{"X-CSTP-DPD", &t.DPD}, {"X-CSTP-Keepalive", &t.Keepalive}, {"X-CSTP-Idle-Timeout", &t.IdleTimeout},
		{"X-CSTP-Base-MTU", &t.BaseMTU}} {
		if *f.dst, ok = num(f.name); !ok {
			return bad(f.name, h.Get(f.name))
		}
	}
	if h.Get("X-CSTP-Rekey-Method") == "new-tunnel" {
		if t.RekeyTime, ok = num("X-CSTP-Rekey-Time"); !ok {
			return bad("X-CSTP-Rekey-Time", h.Get("X-CSTP-Rekey-Time"))
		}
	}
	mtu, ok1 := num("X-CSTP-MTU")
	dmtu, ok2 := num("X-DTLS-MTU")
	if !ok1 || !ok2 {
		return bad("X-CSTP-MTU", h.Get("X-CSTP-MTU"))
	}
	t.MTU = max(mtu, dmtu)
	if t.MTU < 576 || t.MTU > MaxPayload {
		return bad("X-CSTP-MTU", strconv.Itoa(t.MTU))
	}
	if strings.TrimSpace(h.Get("X-DTLS-CipherSuite")) == PSKNegotiate {
		port, okp := num("X-DTLS-Port")
		id, err := hex.DecodeString(h.Get("X-DTLS-App-ID"))
		if okp && port > 0 && port < 65536 && err == nil && len(id) > 0 && len(id) <= 32 {
			d := &DTLSParams{Port: port, AppID: id}
			d.DPD, _ = num("X-DTLS-DPD")
			d.Keepalive, _ = num("X-DTLS-Keepalive")
			t.DTLS = d
		}
	}
	return t, nil
}

// parseRoute parses a split route: addr/len, or IPv4 addr/dotted-mask.
func parseRoute(s string) (netip.Prefix, error) {
	addr, mask, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, errors.New("no prefix length")
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Prefix{}, err
	}
	bits, err := strconv.Atoi(mask)
	if err != nil {
		ip := net.ParseIP(mask).To4()
		if ip == nil || !a.Is4() {
			return netip.Prefix{}, errors.New("bad mask")
		}
		ones, total := net.IPMask(ip).Size()
		if total != 32 {
			return netip.Prefix{}, errors.New("non-contiguous mask")
		}
		bits = ones
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}
