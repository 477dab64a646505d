// Package wire holds the WireGuard message formats: fixed-size handshake
// messages (initiation, response, cookie reply) and the transport data
// header. Every field is little-endian. The package only lays bytes out and
// reads them back; it does no cryptography and never allocates.
//
// Each message starts with a 4-byte type header: the message type in the
// first byte and three reserved bytes that must be zero.
package wire

import (
	"encoding/binary"
	"errors"
)

// Message types, as carried in the first byte of every message.
const (
	TypeInitiation  = 1
	TypeResponse    = 2
	TypeCookieReply = 3
	TypeTransport   = 4
)

// Message sizes in bytes.
const (
	InitiationSize      = 148
	ResponseSize        = 92
	CookieReplySize     = 64
	TransportHeaderSize = 16 // type header, receiver index, counter
	TagSize             = 16 // Poly1305 tag that ends every transport message
	MinTransportSize    = TransportHeaderSize + TagSize
)

// Offsets of mac1 and mac2 within a marshaled Initiation or Response. mac1
// covers msg[:MAC1Offset] and mac2 covers msg[:MAC2Offset]; each MAC is 16
// bytes.
const (
	InitiationMAC1Offset = 116
	InitiationMAC2Offset = 132
	ResponseMAC1Offset   = 60
	ResponseMAC2Offset   = 76
)

// SenderOffset is where the sender index sits in an Initiation or Response.
const SenderOffset = 4

var (
	// ErrSize means a buffer has the wrong length for the message it
	// should hold. The caller should drop the datagram (and count it).
	ErrSize = errors.New("wire: wrong message size")
	// ErrType means the type header is not the expected one, or its
	// reserved bytes are not zero. The caller should drop the datagram.
	ErrType = errors.New("wire: wrong message type")
)

// MessageType returns the type of msg, read from its first 4 bytes (type
// byte followed by 3 zero bytes). It returns ErrSize if len(msg) < 4 and
// ErrType if a reserved byte is non-zero. It does not check that the type is
// one of the known ones.
func MessageType(msg []byte) (uint32, error) {
	if len(msg) < 4 {
		return 0, ErrSize
	}
	if msg[1]|msg[2]|msg[3] != 0 {
		return 0, ErrType
	}
	return uint32(msg[0]), nil
}

// checkHeader verifies that b has exactly size bytes and the type header typ.
func checkHeader(b []byte, size int, typ uint32) error {
	if len(b) != size {
		return ErrSize
	}
	if binary.LittleEndian.Uint32(b) != typ {
		return ErrType
	}
	return nil
}

// Initiation is the first handshake message, sent by the initiator.
// Ephemeral is in clear; Static and Timestamp are AEAD ciphertexts with
// their tags.
type Initiation struct {
	Sender    uint32
	Ephemeral [32]byte
	Static    [48]byte
	Timestamp [28]byte
	MAC1      [16]byte
	MAC2      [16]byte
}

// Marshal writes the message, type header included, into b[:InitiationSize].
// b must have len >= InitiationSize; a shorter b is a programming error and
// panics. It does not allocate.
func (m *Initiation) Marshal(b []byte) {
	b = b[:InitiationSize]
	binary.LittleEndian.PutUint32(b[0:], TypeInitiation)
	binary.LittleEndian.PutUint32(b[4:], m.Sender)
	copy(b[8:40], m.Ephemeral[:])
	copy(b[40:88], m.Static[:])
	copy(b[88:116], m.Timestamp[:])
	copy(b[116:132], m.MAC1[:])
	copy(b[132:148], m.MAC2[:])
}

// Unmarshal reads the message from b, which must be exactly InitiationSize
// bytes with an initiation type header. On error m is unchanged.
func (m *Initiation) Unmarshal(b []byte) error {
	if err := checkHeader(b, InitiationSize, TypeInitiation); err != nil {
		return err
	}
	m.Sender = binary.LittleEndian.Uint32(b[4:])
	copy(m.Ephemeral[:], b[8:40])
	copy(m.Static[:], b[40:88])
	copy(m.Timestamp[:], b[88:116])
	copy(m.MAC1[:], b[116:132])
	copy(m.MAC2[:], b[132:148])
	return nil
}

// Response is the second handshake message, sent by the responder. Empty is
// the tag of an AEAD over the empty plaintext.
type Response struct {
	Sender    uint32
	Receiver  uint32
	Ephemeral [32]byte
	Empty     [16]byte
	MAC1      [16]byte
	MAC2      [16]byte
}

// Marshal writes the message, type header included, into b[:ResponseSize].
// b must have len >= ResponseSize. It does not allocate.
func (m *Response) Marshal(b []byte) {
	b = b[:ResponseSize]
	binary.LittleEndian.PutUint32(b[0:], TypeResponse)
	binary.LittleEndian.PutUint32(b[4:], m.Sender)
	binary.LittleEndian.PutUint32(b[8:], m.Receiver)
	copy(b[12:44], m.Ephemeral[:])
	copy(b[44:60], m.Empty[:])
	copy(b[60:76], m.MAC1[:])
	copy(b[76:92], m.MAC2[:])
}

// Unmarshal reads the message from b, which must be exactly ResponseSize
// bytes with a response type header. On error m is unchanged.
func (m *Response) Unmarshal(b []byte) error {
	if err := checkHeader(b, ResponseSize, TypeResponse); err != nil {
		return err
	}
	m.Sender = binary.LittleEndian.Uint32(b[4:])
	m.Receiver = binary.LittleEndian.Uint32(b[8:])
	copy(m.Ephemeral[:], b[12:44])
	copy(m.Empty[:], b[44:60])
	copy(m.MAC1[:], b[60:76])
	copy(m.MAC2[:], b[76:92])
	return nil
}

// CookieReply answers a handshake message when the receiver is under load.
// Cookie is an XChaCha20-Poly1305 ciphertext (16-byte cookie + tag).
type CookieReply struct {
	Receiver uint32
	Nonce    [24]byte
	Cookie   [32]byte
}

// Marshal writes the message, type header included, into
// b[:CookieReplySize]. b must have len >= CookieReplySize. It does not
// allocate.
func (m *CookieReply) Marshal(b []byte) {
	b = b[:CookieReplySize]
	binary.LittleEndian.PutUint32(b[0:], TypeCookieReply)
	binary.LittleEndian.PutUint32(b[4:], m.Receiver)
	copy(b[8:32], m.Nonce[:])
	copy(b[32:64], m.Cookie[:])
}

// Unmarshal reads the message from b, which must be exactly CookieReplySize
// bytes with a cookie-reply type header. On error m is unchanged.
func (m *CookieReply) Unmarshal(b []byte) error {
	if err := checkHeader(b, CookieReplySize, TypeCookieReply); err != nil {
		return err
	}
	m.Receiver = binary.LittleEndian.Uint32(b[4:])
	copy(m.Nonce[:], b[8:32])
	copy(m.Cookie[:], b[32:64])
	return nil
}

// PutTransportHeader writes a transport data header (type 4, receiver index,
// 64-bit counter) into b[:TransportHeaderSize]. b must have len >=
// TransportHeaderSize. The encrypted payload and tag follow it.
func PutTransportHeader(b []byte, receiver uint32, counter uint64) {
	b = b[:TransportHeaderSize]
	binary.LittleEndian.PutUint32(b[0:], TypeTransport)
	binary.LittleEndian.PutUint32(b[4:], receiver)
	binary.LittleEndian.PutUint64(b[8:], counter)
}

// ParseTransportHeader reads the header of the transport data message b. It
// returns ErrSize if b is shorter than MinTransportSize (header plus an empty
// payload's tag) and ErrType if the type header is not TypeTransport.
func ParseTransportHeader(b []byte) (receiver uint32, counter uint64, err error) {
	if len(b) < MinTransportSize {
		return 0, 0, ErrSize
	}
	if binary.LittleEndian.Uint32(b) != TypeTransport {
		return 0, 0, ErrType
	}
	return binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint64(b[8:]), nil
}
