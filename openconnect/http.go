package openconnect

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The HTTP/1.1 of the protocol, written here rather than taken from
// net/http for two reasons: the peers match X-CSTP-* and X-DTLS-* header
// names case-sensitively (net/http would send X-Cstp-Mtu), and the
// server must bound what one connection can make it hold before it is
// authenticated. Names keep the case they were sent with; lookups ignore
// case.

// Limits on one HTTP message.
const (
	// MaxLine bounds a request, status or header line (the reader's
	// buffer: a longer line is an error, never a larger buffer).
	MaxLine = 4096
	// MaxHeaders bounds the header lines of a message.
	MaxHeaders = 64
	// MaxHeaderBytes bounds the header block of a message.
	MaxHeaderBytes = 32 << 10
	// MaxBody bounds a message body. The XML documents of the
	// authentication exchange are a few hundred bytes.
	MaxBody = 64 << 10
)

// HTTP parse errors.
var (
	ErrLineTooLong    = errors.New("openconnect: HTTP line too long")
	ErrTooManyHeaders = errors.New("openconnect: too many HTTP header lines")
	ErrHeaderTooBig   = errors.New("openconnect: HTTP header block too big")
	ErrBodyTooBig     = errors.New("openconnect: HTTP body too big")
	ErrMalformedHTTP  = errors.New("openconnect: malformed HTTP message")
)

// A Header is one header line, its name as sent.
type Header struct {
	Name, Value string
}

// Headers is a message's header lines in order.
type Headers []Header

// Get returns the value of the first header named name (any case), or "".
func (h Headers) Get(name string) string {
	for _, x := range h {
		if strings.EqualFold(x.Name, name) {
			return x.Value
		}
	}
	return ""
}

// Values returns the values of every header named name (any case).
func (h Headers) Values(name string) []string {
	var v []string
	for _, x := range h {
		if strings.EqualFold(x.Name, name) {
			v = append(v, x.Value)
		}
	}
	return v
}

// Add appends a header with its name exactly as given.
func (h *Headers) Add(name, value string) { *h = append(*h, Header{name, value}) }

// Cookie returns the value of the cookie named name from the Cookie
// headers, or "".
func (h Headers) Cookie(name string) string {
	for _, line := range h.Values("Cookie") {
		for part := range strings.SplitSeq(line, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if ok && k == name {
				return v
			}
		}
	}
	return ""
}

// A Request is an HTTP/1.1 request.
type Request struct {
	Method, Target string
	Headers        Headers
	Body           []byte
}

// A Response is an HTTP/1.1 response.
type Response struct {
	Status  int
	Reason  string
	Headers Headers
	Body    []byte
}

// readLine reads one CRLF- (or LF-) terminated line of at most MaxLine
// bytes from br, whose buffer must be at least MaxLine.
func readLine(br *bufio.Reader) (string, error) {
	b, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", ErrLineTooLong
		}
		if errors.Is(err, io.EOF) && len(b) > 0 {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	if len(b) > MaxLine {
		return "", ErrLineTooLong
	}
	b = bytes.TrimSuffix(b[:len(b)-1], []byte{'\r'})
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return "", fmt.Errorf("%w: control character in a line", ErrMalformedHTTP)
		}
	}
	return string(b), nil
}

// NewReader returns a reader whose buffer suits ReadRequest and
// ReadResponse.
func NewReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, MaxLine) }

// readHeaders reads header lines up to the blank line.
func readHeaders(br *bufio.Reader) (Headers, error) {
	var h Headers
	total := 0
	for {
		line, err := readLine(br)
		if err != nil {
			return nil, err
		}
		if line == "" {
			return h, nil
		}
		total += len(line)
		if total > MaxHeaderBytes {
			return nil, ErrHeaderTooBig
		}
		if len(h) == MaxHeaders {
			return nil, ErrTooManyHeaders
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !validToken(name) {
			return nil, fmt.Errorf("%w: header line %q", ErrMalformedHTTP, clip(line))
		}
		h = append(h, Header{name, strings.Trim(value, " \t")})
	}
}

// validToken reports whether s is an HTTP token (a method or header name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// readBody reads the body its Content-Length announces. A message with
// no Content-Length has none (the protocol never chunks).
func readBody(br *bufio.Reader, h Headers) ([]byte, error) {
	if te := h.Get("Transfer-Encoding"); te != "" {
		return nil, fmt.Errorf("%w: Transfer-Encoding %q", ErrMalformedHTTP, clip(te))
	}
	cls := h.Values("Content-Length")
	if len(cls) == 0 {
		return nil, nil
	}
	if len(cls) > 1 {
		return nil, fmt.Errorf("%w: %d Content-Length headers", ErrMalformedHTTP, len(cls))
	}
	n, err := strconv.ParseUint(cls[0], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%w: Content-Length %q", ErrMalformedHTTP, clip(cls[0]))
	}
	if n > MaxBody {
		return nil, ErrBodyTooBig
	}
	if n == 0 {
		return nil, nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

// ReadRequest reads one request from br (made by NewReader).
func ReadRequest(br *bufio.Reader) (*Request, error) {
	line, err := readLine(br)
	if err != nil {
		return nil, err
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !validToken(method) || target == "" || strings.ContainsAny(target, " \t") {
		return nil, fmt.Errorf("%w: request line %q", ErrMalformedHTTP, clip(line))
	}
	if proto != "HTTP/1.1" && proto != "HTTP/1.0" {
		return nil, fmt.Errorf("%w: protocol %q", ErrMalformedHTTP, clip(proto))
	}
	h, err := readHeaders(br)
	if err != nil {
		return nil, err
	}
	req := &Request{Method: method, Target: target, Headers: h}
	if method != "CONNECT" {
		if req.Body, err = readBody(br, h); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// ReadResponse reads one response from br (made by NewReader). The body
// of a successful CONNECT is the tunnel, not read here.
func ReadResponse(br *bufio.Reader, connect bool) (*Response, error) {
	line, err := readLine(br)
	if err != nil {
		return nil, err
	}
	proto, rest, ok := strings.Cut(line, " ")
	if !ok || (proto != "HTTP/1.1" && proto != "HTTP/1.0") || len(rest) < 3 {
		return nil, fmt.Errorf("%w: status line %q", ErrMalformedHTTP, clip(line))
	}
	code, reason, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if err != nil || len(code) != 3 || status < 100 {
		return nil, fmt.Errorf("%w: status %q", ErrMalformedHTTP, clip(code))
	}
	h, err := readHeaders(br)
	if err != nil {
		return nil, err
	}
	resp := &Response{Status: status, Reason: reason, Headers: h}
	if !(connect && status == 200) {
		if resp.Body, err = readBody(br, h); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// AppendRequest appends a request with its headers exactly as given and
// a Content-Length for a body.
func AppendRequest(b []byte, method, target string, h Headers, body []byte) []byte {
	b = fmt.Appendf(b, "%s %s HTTP/1.1\r\n", method, target)
	b = appendHeaders(b, h)
	if body != nil {
		b = fmt.Appendf(b, "Content-Length: %d\r\n", len(body))
	}
	b = append(b, "\r\n"...)
	return append(b, body...)
}

// AppendResponse appends a response with its headers exactly as given.
// Every response but a CONNECT's 200 has a Content-Length.
func AppendResponse(b []byte, status int, reason string, h Headers, body []byte, tunnel bool) []byte {
	b = fmt.Appendf(b, "HTTP/1.1 %d %s\r\n", status, reason)
	b = appendHeaders(b, h)
	if !tunnel {
		b = fmt.Appendf(b, "Content-Length: %d\r\n", len(body))
	}
	b = append(b, "\r\n"...)
	return append(b, body...)
}

func appendHeaders(b []byte, h Headers) []byte {
	for _, x := range h {
		b = append(b, x.Name...)
		b = append(b, ": "...)
		b = append(b, sanitizeValue(x.Value)...)
		b = append(b, "\r\n"...)
	}
	return b
}

// sanitizeValue keeps a header value on its line whatever it holds.
func sanitizeValue(v string) string {
	if !strings.ContainsAny(v, "\r\n") {
		return v
	}
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
}

// clip shortens untrusted text quoted in an error.
func clip(s string) string {
	const n = 64
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
