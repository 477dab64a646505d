package noise

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"

	"golang.org/x/crypto/curve25519"
)

// KeySize is the size in bytes of every key type here.
const KeySize = 32

// PrivateKey is a Curve25519 private key, stored clamped.
type PrivateKey [KeySize]byte

// PublicKey is a Curve25519 public key.
type PublicKey [KeySize]byte

// PresharedKey is the optional symmetric key mixed into the handshake (the
// "psk" of IKpsk2). The zero key means none is configured.
type PresharedKey [KeySize]byte

// GeneratePrivateKey returns a new clamped private key from crypto/rand.
func GeneratePrivateKey() (PrivateKey, error) {
	var k PrivateKey
	if _, err := rand.Read(k[:]); err != nil {
		return PrivateKey{}, err
	}
	k.clamp()
	return k, nil
}

// GeneratePresharedKey returns a new preshared key from crypto/rand.
func GeneratePresharedKey() (PresharedKey, error) {
	var k PresharedKey
	if _, err := rand.Read(k[:]); err != nil {
		return PresharedKey{}, err
	}
	return k, nil
}

// clamp applies the Curve25519 scalar clamping (RFC 7748 section 5).
func (k *PrivateKey) clamp() {
	k[0] &= 248
	k[31] = k[31]&127 | 64
}

// PublicKey returns the public key of k. Keys are clamped by the scalar
// multiplication, so an unclamped k gives the same result as its clamped
// form.
func (k PrivateKey) PublicKey() PublicKey {
	var p PublicKey
	// The product of a (clamped) scalar with the base point is never the
	// identity, which is the only error X25519 can report here.
	out, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err == nil {
		copy(p[:], out)
	}
	return p
}

// sharedSecret returns the X25519 Diffie-Hellman result of k and pub, or
// false when pub is of low order (the result would be all zeros).
func (k *PrivateKey) sharedSecret(pub *PublicKey) (ss [KeySize]byte, ok bool) {
	out, err := curve25519.X25519(k[:], pub[:])
	if err != nil {
		return ss, false
	}
	copy(ss[:], out)
	clear(out)
	return ss, true
}

var zeroKey [KeySize]byte

// lowOrderProbe is a clamped scalar: clamping makes every scalar a multiple
// of the cofactor 8, so it maps a point of low order (and only such a
// point) to the identity, which X25519 reports as an error.
var lowOrderProbe = [KeySize]byte{0: 8, 31: 64}

// IsLowOrder reports whether k is a point of small order (the all-zero key
// among them), with which Diffie-Hellman yields nothing secret, so that no
// handshake with it can succeed. Such a key is still a valid
// configuration, as in the kernel and wireguard-go.
func (k PublicKey) IsLowOrder() bool {
	_, err := curve25519.X25519(lowOrderProbe[:], k[:])
	return err != nil
}

// IsZero reports in constant time whether k is all zeros (no key set).
func (k PrivateKey) IsZero() bool { return subtle.ConstantTimeCompare(k[:], zeroKey[:]) == 1 }

// IsZero reports in constant time whether k is all zeros.
func (k PublicKey) IsZero() bool { return subtle.ConstantTimeCompare(k[:], zeroKey[:]) == 1 }

// IsZero reports in constant time whether k is all zeros (no PSK set).
func (k PresharedKey) IsZero() bool { return subtle.ConstantTimeCompare(k[:], zeroKey[:]) == 1 }

// Hex returns k as 64 lowercase hex digits, the UAPI encoding.
func (k PrivateKey) Hex() string { return hex.EncodeToString(k[:]) }

// Hex returns k as 64 lowercase hex digits, the UAPI encoding.
func (k PublicKey) Hex() string { return hex.EncodeToString(k[:]) }

// Hex returns k as 64 lowercase hex digits, the UAPI encoding.
func (k PresharedKey) Hex() string { return hex.EncodeToString(k[:]) }

// Base64 returns k in standard padded base64 (44 characters), the
// encoding of the wg tool and configuration files.
func (k PrivateKey) Base64() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Base64 returns k in standard padded base64 (44 characters).
func (k PublicKey) Base64() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Base64 returns k in standard padded base64 (44 characters).
func (k PresharedKey) Base64() string { return base64.StdEncoding.EncodeToString(k[:]) }

// String returns the base64 form of k, so public keys log readably.
func (k PublicKey) String() string { return k.Base64() }

func parseHex(s string) (k [KeySize]byte, err error) {
	if len(s) != 2*KeySize {
		return k, ErrInvalidKey
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return [KeySize]byte{}, ErrInvalidKey
	}
	return k, nil
}

func parseBase64(s string) (k [KeySize]byte, err error) {
	if len(s) != base64.StdEncoding.EncodedLen(KeySize) {
		return k, ErrInvalidKey
	}
	var buf [KeySize + 2]byte // 44 characters decode to at most 33 bytes
	n, err := base64.StdEncoding.Decode(buf[:], []byte(s))
	if err != nil || n != KeySize {
		clear(buf[:])
		return k, ErrInvalidKey
	}
	copy(k[:], buf[:KeySize])
	clear(buf[:])
	return k, nil
}

// ParsePrivateKeyHex parses 64 hex digits (either case). The key is taken
// as given (UAPI keys are not clamped on the wire; X25519 clamps when it
// uses them). It returns ErrInvalidKey on any other input.
func ParsePrivateKeyHex(s string) (PrivateKey, error) {
	k, err := parseHex(s)
	return PrivateKey(k), err
}

// ParsePublicKeyHex parses 64 hex digits; ErrInvalidKey otherwise.
func ParsePublicKeyHex(s string) (PublicKey, error) {
	k, err := parseHex(s)
	return PublicKey(k), err
}

// ParsePresharedKeyHex parses 64 hex digits; ErrInvalidKey otherwise.
func ParsePresharedKeyHex(s string) (PresharedKey, error) {
	k, err := parseHex(s)
	return PresharedKey(k), err
}

// ParsePrivateKeyBase64 parses a 44-character padded base64 key, as the wg
// tool prints it; ErrInvalidKey otherwise.
func ParsePrivateKeyBase64(s string) (PrivateKey, error) {
	k, err := parseBase64(s)
	return PrivateKey(k), err
}

// ParsePublicKeyBase64 parses a 44-character padded base64 key;
// ErrInvalidKey otherwise.
func ParsePublicKeyBase64(s string) (PublicKey, error) {
	k, err := parseBase64(s)
	return PublicKey(k), err
}

// ParsePresharedKeyBase64 parses a 44-character padded base64 key;
// ErrInvalidKey otherwise.
func ParsePresharedKeyBase64(s string) (PresharedKey, error) {
	k, err := parseBase64(s)
	return PresharedKey(k), err
}

// Local is this device's static identity. It is immutable once built; when
// the private key changes the device builds a new Local and replaces the old
// one wholesale, so readers need no lock.
type Local struct {
	Private PrivateKey
	Public  PublicKey
}

// NewLocal returns the identity for priv, which it clamps (as the kernel
// and wg tool do) before deriving the public key.
func NewLocal(priv PrivateKey) *Local {
	priv.clamp()
	return &Local{Private: priv, Public: priv.PublicKey()}
}

// MarshalText writes the key in base64, as wg(8) shows it (JSON then
// carries a public key as a string).
func (k PublicKey) MarshalText() ([]byte, error) { return []byte(k.Base64()), nil }

// UnmarshalText reads a base64 key.
func (k *PublicKey) UnmarshalText(b []byte) error {
	p, err := ParsePublicKeyBase64(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}
