package openconnect

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The client side of the protocol: Login runs the HTTPS authentication
// exchange and returns the session cookie; Connect sends the CONNECT with
// it and returns a ClientSession that carries inner IP packets over CSTP,
// and over DTLS once that is up (client_dtls.go).

// DefaultUserAgent is the User-Agent the client sends. ocserv serves the
// openconnect dialect (IPv6 routes and DNS in X-CSTP-DNS) only to agents
// it recognises by prefix, case-insensitively: "Open AnyConnect VPN Agent
// v" followed by a version of 4 or more (anything else after "v" is taken
// as version 0, the old v3 dialect; without the "v", an unknown client),
// or "OpenConnect VPN Agent" (1.1.6 and later). ptun takes the latter
// rather than pose as some openconnect version.
const DefaultUserAgent = "OpenConnect VPN Agent (ptun)"

// clientVersion is the client's version in the config-auth documents.
const clientVersion = "ptun"

// Bounds of the authentication exchange.
const (
	// maxAuthRounds bounds the requests of one Login (ocserv needs three:
	// init, username, password).
	maxAuthRounds = 8
	// maxCookies bounds the cookies a server can make the client keep.
	maxCookies = 16
	// defaultStepTimeout bounds a step (dial, handshake, one HTTP
	// exchange) when the caller's context has no deadline.
	defaultStepTimeout = 30 * time.Second
)

// Client errors. Each tells the caller what to do.
var (
	// ErrAuthFailed: the server refused the credentials (wrong user name
	// or password). Retrying with the same ones is pointless. The error
	// is an *AuthError with the server's message.
	ErrAuthFailed = errors.New("openconnect: authentication failed")
	// ErrUnsupportedForm: the server asked for something the client
	// cannot answer (a second factor, a new password, SSO): the account
	// needs another kind of client.
	ErrUnsupportedForm = errors.New("openconnect: the server's login form asks for something this client cannot answer")
	// ErrCookieRejected: the server no longer accepts the session cookie
	// (it expired or the user logged out): Login again.
	ErrCookieRejected = errors.New("openconnect: the server rejected the session cookie")
	// ErrPinMismatch: the server's certificate does not match the pin:
	// a wrong server, or a man in the middle. Do not retry blindly.
	ErrPinMismatch = errors.New("openconnect: the server's certificate does not match the pin")
)

// An AuthError is a refused login: a 401, or a form that comes back with
// an error after the password was sent. It matches ErrAuthFailed.
type AuthError struct {
	Message string // the server's reason, untrusted text
}

func (e *AuthError) Error() string {
	if e.Message == "" {
		return ErrAuthFailed.Error()
	}
	return ErrAuthFailed.Error() + ": " + clip(e.Message)
}

// Unwrap makes errors.Is(err, ErrAuthFailed) hold.
func (e *AuthError) Unwrap() error { return ErrAuthFailed }

// ClientConfig configures Login and Connect.
type ClientConfig struct {
	// Server is the gateway's host:port.
	Server string
	// ServerName is the name sent in SNI and checked in the certificate
	// when there is no Pin; by default the host of Server.
	ServerName string
	// Pin, if set, is the only check of the server's certificate: an RFC
	// 7469 pin "pin-sha256:BASE64" of the leaf's SubjectPublicKeyInfo
	// (as openconnect --servercert takes it). Without it the certificate
	// must chain to RootCAs (nil: the system's roots).
	Pin     string
	RootCAs *x509.CertPool

	Username, Password string
	// Group is chosen when the server offers a group list; by default
	// its first entry.
	Group string

	// UserAgent defaults to DefaultUserAgent; Hostname (X-CSTP-Hostname)
	// to the machine's.
	UserAgent string
	Hostname  string

	// DisableDTLS keeps the session on CSTP (the CONNECT offers no PSK).
	DisableDTLS bool
	// DisableIPv6 asks for an IPv4 address only.
	DisableIPv6 bool
	// BaseMTU is the link MTU sent as X-CSTP-Base-MTU; 0 measures the TCP
	// connection's path MTU.
	BaseMTU int
	// DTLSTimeout bounds the DTLS handshake; default 12 s, as openconnect.
	DTLSTimeout time.Duration

	// Dial opens the TCP connection ("tcp") and the DTLS socket ("udp",
	// a connected UDP socket); default a net.Dialer. Tests use it to dial
	// from another network namespace.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Logf, if set, receives the client's log lines.
	Logf func(format string, args ...any)
}

func (cfg *ClientConfig) logf(format string, args ...any) {
	if cfg.Logf != nil {
		cfg.Logf(format, args...)
	}
}

// PinSHA256 returns the RFC 7469 pin of a certificate's public key, in the
// form ClientConfig.Pin and openconnect --servercert take.
func PinSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "pin-sha256:" + base64.StdEncoding.EncodeToString(sum[:])
}

// parsePin decodes "pin-sha256:BASE64" into the 32-byte digest.
func parsePin(pin string) ([]byte, error) {
	b64, ok := strings.CutPrefix(pin, "pin-sha256:")
	if !ok {
		return nil, fmt.Errorf("openconnect: pin %q: want pin-sha256:BASE64", clip(pin))
	}
	sum, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("openconnect: pin %q: not a base64 SHA-256 digest", clip(pin))
	}
	return sum, nil
}

// client holds what Login and Connect share: the settings, the cookie jar
// and the open HTTPS connection, reused from one request to the next.
type client struct {
	cfg  ClientConfig
	tls  *tls.Config
	host string // the Host header
	jar  []Header
	conn *httpConn // nil until dialed or after the server closed it
}

func newClient(cfg ClientConfig) (*client, error) {
	if cfg.Server == "" {
		return nil, errors.New("openconnect: no server")
	}
	host, _, err := net.SplitHostPort(cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("openconnect: server %q: %w", cfg.Server, err)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	if cfg.DTLSTimeout <= 0 {
		cfg.DTLSTimeout = 12 * time.Second
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	tc := &tls.Config{
		ServerName: cfg.ServerName,
		RootCAs:    cfg.RootCAs,
		MinVersion: tls.VersionTLS12,
		// One CSTP frame per TLS record: ocserv ends a session whose
		// record is not exactly one frame, and Go would split the first
		// large writes into small records.
		DynamicRecordSizingDisabled: true,
	}
	if cfg.Pin != "" {
		want, err := parsePin(cfg.Pin)
		if err != nil {
			return nil, err
		}
		tc.InsecureSkipVerify = true // the pin below is the whole check
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return ErrPinMismatch
			}
			sum := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
			if subtle.ConstantTimeCompare(sum[:], want) != 1 {
				return fmt.Errorf("%w (it has %s)", ErrPinMismatch, PinSHA256(cs.PeerCertificates[0]))
			}
			return nil
		}
	}
	return &client{cfg: cfg, tls: tc, host: cfg.Server}, nil
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.raw.Close()
		c.conn = nil
	}
}

// httpConn is one TLS connection and the reader of its responses.
type httpConn struct {
	raw net.Conn
	bc  *batchConn // between raw and tc
	tc  *tls.Conn
	br  *bufio.Reader
}

// stepContext bounds one step by defaultStepTimeout unless ctx already has
// a deadline.
func stepContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultStepTimeout)
}

// dial opens a TLS connection to the server.
func (c *client) dial(ctx context.Context) (*httpConn, error) {
	ctx, cancel := stepContext(ctx)
	defer cancel()
	raw, err := c.cfg.Dial(ctx, "tcp", c.cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("openconnect: dial %s: %w", c.cfg.Server, err)
	}
	// Small packets (DPD, keepalives, interactive traffic) must not wait
	// for Nagle, and the unsent queue stays small (TCP-over-TCP).
	tuneCSTP(raw)
	// Under the TLS connection: a burst of frames (ClientSession's
	// BeginBatch) goes out in one write.
	bc := newBatchConn(raw)
	tc := tls.Client(bc, c.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("openconnect: TLS handshake with %s: %w", c.cfg.Server, err)
	}
	return &httpConn{raw: raw, bc: bc, tc: tc, br: NewReader(tc)}, nil
}

// roundTrip sends one request on the open connection (dialing one if
// there is none) and reads its response. A kept-alive connection the
// server has closed meanwhile is replaced once. After a CONNECT answered
// 200 the connection is the tunnel's.
func (c *client) roundTrip(ctx context.Context, method, target string, h Headers, body []byte) (*Response, error) {
	reused := c.conn != nil
	resp, err := c.roundTripOnce(ctx, method, target, h, body)
	if err != nil && reused && ctx.Err() == nil && hungUp(err) {
		c.cfg.logf("openconnect: the server closed the kept-alive connection (%v); dialing again", err)
		resp, err = c.roundTripOnce(ctx, method, target, h, body)
	}
	return resp, err
}

// hungUp reports whether err is the peer closing the connection.
func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (c *client) roundTripOnce(ctx context.Context, method, target string, h Headers, body []byte) (*Response, error) {
	if c.conn == nil {
		conn, err := c.dial(ctx)
		if err != nil {
			return nil, err
		}
		c.conn = conn
	}
	conn := c.conn
	ctx, cancel := stepContext(ctx)
	defer cancel()
	deadline, _ := ctx.Deadline()
	conn.raw.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.raw.SetDeadline(time.Unix(1, 0)) })
	resp, err := func() (*Response, error) {
		if _, err := conn.tc.Write(AppendRequest(nil, method, target, h, body)); err != nil {
			return nil, err
		}
		return ReadResponse(conn.br, method == "CONNECT")
	}()
	if !stop() || err != nil {
		if err == nil || ctx.Err() != nil {
			err = errors.Join(ctx.Err(), err)
		}
		c.close()
		return nil, fmt.Errorf("openconnect: %s %s: %w", method, target, err)
	}
	conn.raw.SetDeadline(time.Time{})
	if strings.EqualFold(resp.Headers.Get("Connection"), "close") && !(method == "CONNECT" && resp.Status == 200) {
		c.close()
	}
	return resp, nil
}

// authHeaders are the headers of an authentication request, as
// openconnect sends them.
func (c *client) authHeaders(bodyLen int) Headers {
	h := Headers{
		{"Host", c.host},
		{"User-Agent", c.cfg.UserAgent},
		{"Accept", "*/*"},
		{"Accept-Encoding", "identity"},
		{"X-Transcend-Version", "1"},
		{"X-Aggregate-Auth", "1"},
	}
	if cookies := c.cookieHeader(); cookies != "" {
		h.Add("Cookie", cookies)
	}
	// Hide the length of the password in the record sizes.
	if pad := 64 - bodyLen%64; pad > 0 {
		h.Add("X-Pad", strings.Repeat("0", pad))
	}
	h.Add("Content-Type", "application/xml; charset=utf-8")
	return h
}

func (c *client) cookieHeader() string {
	var b strings.Builder
	for _, ck := range c.jar {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(ck.Name + "=" + ck.Value)
	}
	return b.String()
}

// takeCookies keeps the cookies a response sets and drops those it
// expires.
func (c *client) takeCookies(resp *Response) {
	for _, line := range resp.Headers.Values("Set-Cookie") {
		name, value, del, ok := ParseSetCookie(line, time.Now())
		if !ok {
			c.cfg.logf("openconnect: ignoring a malformed Set-Cookie %q", clip(line))
			continue
		}
		i := 0
		for ; i < len(c.jar) && c.jar[i].Name != name; i++ {
		}
		switch {
		case del && i < len(c.jar):
			c.jar = append(c.jar[:i], c.jar[i+1:]...)
		case del:
		case i < len(c.jar):
			c.jar[i].Value = value
		case len(c.jar) < maxCookies:
			c.jar = append(c.jar, Header{name, value})
		}
	}
}

func (c *client) cookie(name string) string {
	for _, ck := range c.jar {
		if ck.Name == name {
			return ck.Value
		}
	}
	return ""
}

// ParseSetCookie reads a Set-Cookie header: the cookie's name and value,
// and whether it deletes the cookie (an empty value, Max-Age ≤ 0, or an
// Expires before now). ok is false for a malformed header.
func ParseSetCookie(line string, now time.Time) (name, value string, del, ok bool) {
	first, attrs, _ := strings.Cut(line, ";")
	name, value, ok = strings.Cut(strings.TrimSpace(first), "=")
	name = strings.TrimSpace(name)
	value = strings.TrimSpace(value)
	if !ok || !validToken(name) || len(value) > MaxLine {
		return "", "", false, false
	}
	if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
		value = value[1 : len(value)-1]
	}
	if value != "" && !validCookie(value) {
		return "", "", false, false
	}
	del = value == ""
	for attr := range strings.SplitSeq(attrs, ";") {
		k, v, _ := strings.Cut(strings.TrimSpace(attr), "=")
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "max-age":
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n <= 0 {
				del = true
			}
		case "expires":
			if t, ok := parseCookieTime(strings.TrimSpace(v)); ok && t.Before(now) {
				del = true
			}
		}
	}
	return name, value, del, true
}

func parseCookieTime(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC1123, "Mon, 02-Jan-2006 15:04:05 MST", time.RFC850, time.ANSIC} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// FillForm answers a server's login form: the user name and the password
// where it asks for them, the hidden inputs' own values, and a group from
// a group list. It returns the fields for ClientReply and the group to
// select ("" for none). A form that asks for anything else fails with
// ErrUnsupportedForm; one that asks for a credential the caller did not
// give fails too.
func FillForm(form *Form, username, password, group string) (fields map[string]string, selected string, err error) {
	if form == nil || len(form.Inputs)+len(form.Selects) == 0 {
		return nil, "", fmt.Errorf("%w: an empty form", ErrUnsupportedForm)
	}
	if len(form.Inputs) > 32 || len(form.Selects) > 4 {
		return nil, "", fmt.Errorf("%w: a form of %d inputs", ErrUnsupportedForm, len(form.Inputs)+len(form.Selects))
	}
	fields = map[string]string{}
	for _, in := range form.Inputs {
		switch typ := strings.ToLower(in.Type); {
		case typ == "hidden":
			// ClientReply sends its own value.
		case typ == "submit" || typ == "reset":
		case (typ == "text" || typ == "") && in.Name == "username":
			if username == "" {
				return nil, "", fmt.Errorf("%w: it asks for a user name and none was given", ErrUnsupportedForm)
			}
			fields[in.Name] = username
		case typ == "password" && in.Name == "password":
			if password == "" {
				return nil, "", fmt.Errorf("%w: it asks for a password and none was given", ErrUnsupportedForm)
			}
			fields[in.Name] = password
		default:
			return nil, "", fmt.Errorf("%w: input %q of type %q (%q)", ErrUnsupportedForm, clip(in.Name), clip(in.Type), clip(in.Label))
		}
	}
	for _, sel := range form.Selects {
		if sel.Name != "group_list" {
			return nil, "", fmt.Errorf("%w: a choice %q", ErrUnsupportedForm, clip(sel.Name))
		}
		if len(sel.Options) == 0 {
			return nil, "", fmt.Errorf("%w: an empty group list", ErrUnsupportedForm)
		}
		selected = ""
		for _, o := range sel.Options {
			v := optionValue(o)
			if group == "" || v == group {
				selected = v
				break
			}
		}
		if selected == "" {
			return nil, "", fmt.Errorf("%w: no group %q in the server's list", ErrUnsupportedForm, clip(group))
		}
	}
	return fields, selected, nil
}

func optionValue(o Option) string {
	if o.Value != "" {
		return o.Value
	}
	return strings.TrimSpace(o.Text)
}

// asks reports whether a form has a visible input named name.
func asks(form *Form, name string) bool {
	for _, in := range form.Inputs {
		if in.Name == name && !strings.EqualFold(in.Type, "hidden") {
			return true
		}
	}
	return false
}

// actionPath is where a form is posted: its action's path on the same
// server.
func actionPath(action string) (string, error) {
	if action == "" {
		return "/", nil
	}
	if rest, ok := strings.CutPrefix(action, "https://"); ok {
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			return "/", nil
		}
		action = rest[i:]
	}
	if !strings.HasPrefix(action, "/") || len(action) > 256 || strings.ContainsAny(action, " \t\r\n") {
		return "", fmt.Errorf("openconnect: the form posts to %q", clip(action))
	}
	return action, nil
}

// Login authenticates to the server with the configured user name and
// password and returns the session cookie for Connect. A refused
// password is an *AuthError (errors.Is ErrAuthFailed).
func Login(ctx context.Context, cfg ClientConfig) (cookie string, err error) {
	c, err := newClient(cfg)
	if err != nil {
		return "", err
	}
	defer c.close()
	return c.login(ctx)
}

// LoginAndConnect runs Login and Connect on one TLS connection, as
// openconnect does.
func LoginAndConnect(ctx context.Context, cfg ClientConfig) (*ClientSession, error) {
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	cookie, err := c.login(ctx)
	if err != nil {
		c.close()
		return nil, err
	}
	return c.connect(ctx, cookie)
}

func (c *client) login(ctx context.Context) (string, error) {
	st := loginState{body: ClientInit(clientVersion, "https://"+c.host+"/").Marshal(), target: "/"}
	for round := 0; round < maxAuthRounds; round++ {
		resp, err := c.roundTrip(ctx, "POST", st.target, c.authHeaders(len(st.body)), st.body)
		if err != nil {
			return "", err
		}
		if cookie, err := c.loginStep(&st, resp); err != nil || cookie != "" {
			return cookie, err
		}
	}
	return "", fmt.Errorf("openconnect: login: no answer after %d rounds", maxAuthRounds)
}

// loginState is where a Login is: the next request's body and target,
// and whether the password went out already.
type loginState struct {
	body         []byte
	target       string
	sentPassword bool
}

// loginStep reads one answer of the exchange: the cookie when it is
// complete, else the next request in st.
func (c *client) loginStep(st *loginState, resp *Response) (cookie string, err error) {
	c.takeCookies(resp)
	switch resp.Status {
	case 200:
	case 401, 403:
		return "", &AuthError{Message: resp.Reason}
	default:
		return "", fmt.Errorf("openconnect: login: the server answered %d %s", resp.Status, clip(resp.Reason))
	}
	doc, err := ParseServerDoc(resp.Body)
	if err != nil {
		return "", fmt.Errorf("openconnect: login: %w", err)
	}
	if doc.Type == DocComplete {
		cookie := c.cookie(CookieName)
		if cookie == "" {
			cookie = doc.SessionToken
		}
		if !validCookie(cookie) {
			return "", fmt.Errorf("openconnect: login completed without a usable %s cookie", CookieName)
		}
		return cookie, nil
	}
	if doc.Auth == nil || doc.Auth.Form == nil {
		return "", fmt.Errorf("openconnect: login: an auth-request without a form")
	}
	form := doc.Auth.Form
	if doc.Auth.Error != "" {
		return "", &AuthError{Message: doc.Auth.Error}
	}
	// A form that asks for credentials again after the password went
	// out is the server's way of saying it was wrong.
	if st.sentPassword && (asks(form, "password") || asks(form, "username")) {
		return "", &AuthError{Message: doc.Auth.Message}
	}
	fields, group, err := FillForm(form, c.cfg.Username, c.cfg.Password, c.cfg.Group)
	if err != nil {
		return "", err
	}
	if st.target, err = actionPath(form.Action); err != nil {
		return "", err
	}
	reply := ClientReply(clientVersion, form, fields, doc.Opaque)
	reply.GroupSelect = group
	st.body = reply.Marshal()
	st.sentPassword = st.sentPassword || asks(form, "password")
	return "", nil
}

// validCookie reports whether a cookie can go in a Cookie header as is.
func validCookie(v string) bool {
	if v == "" || len(v) > MaxLine {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c == '"' || c == ',' || c == ';' || c == '\\' || c >= 0x7f {
			return false
		}
	}
	return true
}

// Connect opens the tunnel with a cookie from Login, on a new TLS
// connection. A cookie the server no longer takes is ErrCookieRejected.
// ctx bounds the connection's setup, not the session.
func Connect(ctx context.Context, cfg ClientConfig, cookie string) (*ClientSession, error) {
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	return c.connect(ctx, cookie)
}

// connect sends the CONNECT and starts the session; on error it closes c.
func (c *client) connect(ctx context.Context, cookie string) (*ClientSession, error) {
	fail := func(err error) (*ClientSession, error) {
		c.close()
		return nil, err
	}
	if !validCookie(cookie) {
		return fail(fmt.Errorf("openconnect: an invalid cookie"))
	}
	if c.conn == nil {
		conn, err := c.dial(ctx)
		if err != nil {
			return fail(err)
		}
		c.conn = conn
	}
	base := c.cfg.BaseMTU
	if base <= 0 {
		base = pathMTU(c.conn.raw)
	}
	req := ConnectRequest{
		Cookie:    cookie,
		Hostname:  c.cfg.Hostname,
		UserAgent: c.cfg.UserAgent,
		BaseMTU:   base,
		// openconnect's request: the base less the worst DTLS overhead
		// (82), UDP (8) and IPv4 (20).
		MTU:  max(base-110, 576),
		IPv4: true,
		IPv6: !c.cfg.DisableIPv6,
		PSK:  !c.cfg.DisableDTLS,
	}
	resp, err := c.roundTrip(ctx, "CONNECT", ConnectPath, req.Headers(c.host), nil)
	if err != nil {
		return fail(err)
	}
	switch {
	case resp.Status == 200:
	case resp.Status == 401:
		return fail(fmt.Errorf("%w (%d %s)", ErrCookieRejected, resp.Status, clip(resp.Reason)))
	case resp.Headers.Get("X-Reason") != "":
		return fail(fmt.Errorf("openconnect: CONNECT: %d %s: %s", resp.Status, clip(resp.Reason), clip(resp.Headers.Get("X-Reason"))))
	default:
		return fail(fmt.Errorf("openconnect: CONNECT: the server answered %d %s", resp.Status, clip(resp.Reason)))
	}
	t, err := ParseTunnel(resp.Headers)
	if err != nil {
		return fail(err)
	}
	if c.cfg.DisableDTLS {
		t.DTLS = nil
	}
	conn := c.conn
	c.conn = nil // the session's now
	s := newClientSession(c.cfg, conn.raw, conn.tc, conn.br, t, cookie)
	s.batch = conn.bc
	if t.DTLS != nil {
		psk, err := ExportPSK(conn.tc.ConnectionState())
		if err == nil {
			err = s.startDTLS(ctx, psk)
		}
		if err != nil {
			// The tunnel works without it.
			c.cfg.logf("openconnect: no DTLS: %v", err)
		}
	}
	s.start()
	return s, nil
}

// sanitizeReason renders a server's disconnect reason for an error.
func sanitizeReason(b []byte) string {
	b = bytes.TrimLeft(b, "\xb0")
	var sb strings.Builder
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			sb.WriteByte(c)
		}
	}
	return clip(sb.String())
}
