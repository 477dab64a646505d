// Package noise implements WireGuard's handshake: the
// Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s pattern with WireGuard's identifier
// and labels, the mac1/mac2 fields and cookie replies that protect it under
// load, TAI64N timestamps, and the key types with their text encodings.
//
// It is written from the WireGuard whitepaper (sections 5.4.2 to 5.4.7) on
// top of golang.org/x/crypto's BLAKE2s, ChaCha20-Poly1305,
// XChaCha20-Poly1305 and Curve25519. The package keeps no global mutable
// state; the device owns peers, indices and timers and calls in here for the
// cryptography only.
package noise

import "errors"

// Protocol strings from the whitepaper.
const (
	Construction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	Identifier   = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	LabelMAC1    = "mac1----"
	LabelCookie  = "cookie--"
)

var (
	// ErrInvalidKey means a key string has the wrong length or encoding,
	// or a public key is unusable (zero, or of low order so that
	// Diffie-Hellman with it yields zero). The caller should reject the
	// configuration that carried it.
	ErrInvalidKey = errors.New("noise: invalid key")

	// ErrAuthFailed means a handshake message or cookie reply did not
	// decrypt or authenticate, answers no message we sent, or carries a
	// degenerate public key. The caller should drop the message, count it
	// and not answer. State passed in (an InitiatorState, a
	// CookieGenerator) is unchanged, so a forged message cannot cancel a
	// genuine handshake.
	ErrAuthFailed = errors.New("noise: message authentication failed")

	// ErrStateUsed means an InitiatorState or InitiationInfo has already
	// produced session keys (they are single use). The caller should start
	// a new handshake.
	ErrStateUsed = errors.New("noise: handshake state already used")
)
