package noise

import (
	"crypto/subtle"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

// The whitepaper's HASH is BLAKE2s-256, its HMAC is HMAC (RFC 2104) over
// BLAKE2s-256, and its MAC is keyed BLAKE2s with a 16-byte output. Every
// input the handshake feeds them is a few dozen bytes, so the helpers below
// build each input in a stack buffer and call blake2s.Sum256 on it: no
// allocation per handshake for the hashing (TestHMACMatchesStdlib checks the
// HMAC composition against crypto/hmac).

const (
	hashSize    = blake2s.Size    // 32
	macSize     = blake2s.Size128 // 16
	blockSize   = blake2s.BlockSize
	maxHashData = 96 // longest data any helper here is given, with room to spare
)

var (
	// initialChainKey is C_i = HASH(CONSTRUCTION).
	initialChainKey = blake2s.Sum256([]byte(Construction))
	// initialHash is H_i = HASH(C_i || IDENTIFIER).
	initialHash = hashConcat(initialChainKey[:], []byte(Identifier))
	// zeroNonce is the AEAD nonce of every handshake encryption: each key
	// is used exactly once.
	zeroNonce [chacha20poly1305.NonceSize]byte
)

// hashConcat returns HASH(a || b). len(a)+len(b) must not exceed
// hashSize+maxHashData, which holds for every call in this package (the
// inputs are fixed-size protocol fields).
func hashConcat(a, b []byte) [hashSize]byte {
	var buf [hashSize + maxHashData]byte
	n := copy(buf[:], a)
	if n+len(b) > len(buf) {
		panic("noise: internal hash input too long")
	}
	n += copy(buf[n:], b)
	sum := blake2s.Sum256(buf[:n])
	clear(buf[:n])
	return sum
}

// mixHash sets h = HASH(h || data).
func mixHash(h *[hashSize]byte, data []byte) {
	*h = hashConcat(h[:], data)
}

// hmacSum returns HMAC-BLAKE2s-256(key, a || b). len(key) must be at most
// blockSize and len(a)+len(b) at most maxHashData.
func hmacSum(key []byte, a, b []byte) [hashSize]byte {
	var buf [blockSize + maxHashData]byte
	if len(key) > blockSize || len(a)+len(b) > maxHashData {
		panic("noise: internal HMAC input too long")
	}
	// Inner hash: HASH((K ^ ipad) || message).
	copy(buf[:blockSize], key)
	for i := range blockSize {
		buf[i] ^= 0x36
	}
	n := blockSize + copy(buf[blockSize:], a)
	n += copy(buf[n:], b)
	inner := blake2s.Sum256(buf[:n])
	// Outer hash: HASH((K ^ opad) || inner).
	for i := range blockSize {
		buf[i] ^= 0x36 ^ 0x5c
	}
	copy(buf[blockSize:], inner[:])
	out := blake2s.Sum256(buf[:blockSize+hashSize])
	clear(buf[:])
	clear(inner[:])
	return out
}

// kdf returns the first len(outs) outputs of the whitepaper's KDF_n(key,
// input): tau0 = HMAC(key, input), tau1 = HMAC(tau0, 0x1),
// tau_i = HMAC(tau0, tau_{i-1} || i).
func kdf(key *[hashSize]byte, input []byte, outs ...*[hashSize]byte) {
	prk := hmacSum(key[:], input, nil)
	var prev [hashSize]byte
	for i, out := range outs {
		counter := [1]byte{byte(i + 1)}
		if i == 0 {
			prev = hmacSum(prk[:], counter[:], nil)
		} else {
			prev = hmacSum(prk[:], prev[:], counter[:])
		}
		*out = prev
	}
	clear(prk[:])
	clear(prev[:])
}

// kdf1 sets *c = KDF1(c, input).
func kdf1(c *[hashSize]byte, input []byte) {
	kdf(c, input, c)
}

// kdf2 sets (*c, *k) = KDF2(c, input).
func kdf2(c, k *[hashSize]byte, input []byte) {
	kdf(c, input, c, k)
}

// kdf3 sets (*c, *t, *k) = KDF3(c, input).
func kdf3(c, t, k *[hashSize]byte, input []byte) {
	kdf(c, input, c, t, k)
}

// seal encrypts plaintext into dst[:0] with ChaCha20-Poly1305 under key, a
// zero nonce and the additional data ad. It fails only where the AEAD is
// unavailable (FIPS 140-only mode).
func seal(dst []byte, key *[hashSize]byte, plaintext, ad []byte) error {
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return err
	}
	aead.Seal(dst[:0], zeroNonce[:], plaintext, ad)
	return nil
}

// open decrypts ciphertext into dst[:0] and reports whether it
// authenticated.
func open(dst []byte, key *[hashSize]byte, ciphertext, ad []byte) bool {
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return false
	}
	_, err = aead.Open(dst[:0], zeroNonce[:], ciphertext, ad)
	return err == nil
}

// mac computes the whitepaper's MAC(key, data) = keyed BLAKE2s-128 into out.
func mac(out *[macSize]byte, key []byte, data []byte) {
	h, err := blake2s.New128(key)
	if err != nil {
		panic("noise: blake2s: " + err.Error()) // only for an empty or oversized key
	}
	h.Write(data)
	var sum [macSize]byte
	copy(out[:], h.Sum(sum[:0]))
}

// macEqual compares two MACs in constant time.
func macEqual(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}
