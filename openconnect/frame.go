// Package openconnect speaks the OpenConnect VPN protocol (the one Cisco
// AnyConnect speaks, draft-mavrogiannopoulos-openconnect): an HTTPS
// exchange that authenticates a user and ends in a CONNECT whose TLS stream
// then carries CSTP frames, with DTLS over UDP as the fast path.
//
// The package is the protocol only: framing (this file), the XML
// authentication documents (auth.go), the HTTP/1.1 messages with their
// exact-case headers (http.go, headers.go), the server's sessions
// (server.go) and DTLS (dtls.go). Who checks passwords, which addresses a
// user gets and where the inner packets go are the caller's: see
// Authenticator and Tunnel.
package openconnect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A CSTP frame is an 8-byte header and a payload, one frame per TLS record:
//
//	0..3  'S' 'T' 'F' 0x01
//	4..5  payload length, big-endian
//	6     type
//	7     0
//
// Over DTLS the header is the type byte alone, one frame per record.
const (
	HeaderLen = 8

	// MaxPayload bounds a frame's payload. A TLS record carries at most
	// 16384 bytes, and a frame must fit in one with its header.
	MaxPayload = 16384 - HeaderLen
)

// Frame types.
const (
	TypeData       byte = 0x00
	TypeDPDRequest byte = 0x03
	TypeDPDReply   byte = 0x04
	TypeDisconnect byte = 0x05
	TypeKeepalive  byte = 0x07
	TypeCompressed byte = 0x08
	TypeTerminate  byte = 0x09
)

// DisconnectLogout is the first payload byte of a client's DISCONNECT
// that ends its session (a logout); an empty one only ends the connection.
const DisconnectLogout byte = 0xb0

var magic = [4]byte{'S', 'T', 'F', 0x01}

// Frame errors. A frame that fails to parse ends its session.
var (
	ErrBadMagic    = errors.New("openconnect: not a CSTP frame (bad magic)")
	ErrFrameTooBig = errors.New("openconnect: CSTP frame too big")
	ErrBadReserved = errors.New("openconnect: CSTP frame with a non-zero reserved byte")
	ErrShortFrame  = errors.New("openconnect: CSTP frame truncated")
)

// TypeName names a frame type for logs and counters.
func TypeName(t byte) string {
	switch t {
	case TypeData:
		return "data"
	case TypeDPDRequest:
		return "dpd-req"
	case TypeDPDReply:
		return "dpd-resp"
	case TypeDisconnect:
		return "disconnect"
	case TypeKeepalive:
		return "keepalive"
	case TypeCompressed:
		return "compressed"
	case TypeTerminate:
		return "terminate"
	}
	return fmt.Sprintf("type-%#02x", t)
}

// PutHeader writes a CSTP header for a payload of n bytes into b[:8].
func PutHeader(b []byte, typ byte, n int) {
	_ = b[HeaderLen-1]
	copy(b, magic[:])
	binary.BigEndian.PutUint16(b[4:], uint16(n))
	b[6] = typ
	b[7] = 0
}

// AppendFrame appends a whole CSTP frame to b.
func AppendFrame(b []byte, typ byte, payload []byte) []byte {
	var h [HeaderLen]byte
	PutHeader(h[:], typ, len(payload))
	return append(append(b, h[:]...), payload...)
}

// ParseHeader checks a CSTP header and returns the frame's type and
// payload length.
func ParseHeader(h []byte) (typ byte, n int, err error) {
	if len(h) < HeaderLen {
		return 0, 0, ErrShortFrame
	}
	if [4]byte(h[:4]) != magic {
		return 0, 0, ErrBadMagic
	}
	if h[7] != 0 {
		return 0, 0, ErrBadReserved
	}
	n = int(binary.BigEndian.Uint16(h[4:]))
	if n > MaxPayload {
		return 0, 0, ErrFrameTooBig
	}
	return h[6], n, nil
}

// ParseFrame parses one whole CSTP frame (as one TLS record carries it).
// The payload aliases b.
func ParseFrame(b []byte) (typ byte, payload []byte, err error) {
	typ, n, err := ParseHeader(b)
	if err != nil {
		return 0, nil, err
	}
	if len(b) != HeaderLen+n {
		if len(b) < HeaderLen+n {
			return 0, nil, ErrShortFrame
		}
		return 0, nil, fmt.Errorf("openconnect: %d bytes after a CSTP frame", len(b)-HeaderLen-n)
	}
	return typ, b[HeaderLen:], nil
}

// FrameReader reads CSTP frames from a byte stream. It is liberal about
// how the peer cut the stream into records: a frame may span records or
// share one.
type FrameReader struct {
	r   io.Reader
	buf []byte
}

// NewFrameReader reads frames from r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: r, buf: make([]byte, HeaderLen+MaxPayload)}
}

// Next reads the next frame. The payload is valid until the next call.
// A malformed header is an error and the stream cannot go on.
func (fr *FrameReader) Next() (typ byte, payload []byte, err error) {
	if _, err := io.ReadFull(fr.r, fr.buf[:HeaderLen]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = ErrShortFrame
		}
		return 0, nil, err
	}
	typ, n, err := ParseHeader(fr.buf[:HeaderLen])
	if err != nil {
		return 0, nil, err
	}
	if _, err := io.ReadFull(fr.r, fr.buf[HeaderLen:HeaderLen+n]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = ErrShortFrame
		}
		return 0, nil, err
	}
	return typ, fr.buf[HeaderLen : HeaderLen+n], nil
}
