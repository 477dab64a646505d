package noise

import (
	"bytes"
	"crypto/hmac"
	"hash"
	"math/rand/v2"
	"testing"

	"golang.org/x/crypto/blake2s"
)

func newBlake2s() hash.Hash {
	h, err := blake2s.New256(nil)
	if err != nil {
		panic(err)
	}
	return h
}

// refHMAC is HMAC-BLAKE2s-256 by the standard library's HMAC.
func refHMAC(key []byte, data ...[]byte) []byte {
	m := hmac.New(newBlake2s, key)
	for _, d := range data {
		m.Write(d)
	}
	return m.Sum(nil)
}

func TestHMACMatchesStdlib(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 500 {
		key := make([]byte, r.IntN(blockSize+1))
		a := make([]byte, r.IntN(maxHashData/2+1))
		b := make([]byte, r.IntN(maxHashData/2+1))
		for _, s := range [][]byte{key, a, b} {
			for i := range s {
				s[i] = byte(r.Uint32())
			}
		}
		got := hmacSum(key, a, b)
		if want := refHMAC(key, a, b); !bytes.Equal(got[:], want) {
			t.Fatalf("hmac(%x, %x, %x) = %x, want %x", key, a, b, got, want)
		}
	}
}

// TestKDFMatchesDefinition recomputes KDF1..3 from the whitepaper's
// definition with crypto/hmac.
func TestKDFMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for range 100 {
		var key [hashSize]byte
		for i := range key {
			key[i] = byte(r.Uint32())
		}
		input := make([]byte, r.IntN(2)*32)
		for i := range input {
			input[i] = byte(r.Uint32())
		}
		tau0 := refHMAC(key[:], input)
		tau1 := refHMAC(tau0, []byte{1})
		tau2 := refHMAC(tau0, tau1, []byte{2})
		tau3 := refHMAC(tau0, tau2, []byte{3})

		c := key
		kdf1(&c, input)
		if !bytes.Equal(c[:], tau1) {
			t.Fatal("kdf1")
		}
		var k [hashSize]byte
		c = key
		kdf2(&c, &k, input)
		if !bytes.Equal(c[:], tau1) || !bytes.Equal(k[:], tau2) {
			t.Fatal("kdf2")
		}
		var tt [hashSize]byte
		c = key
		kdf3(&c, &tt, &k, input)
		if !bytes.Equal(c[:], tau1) || !bytes.Equal(tt[:], tau2) || !bytes.Equal(k[:], tau3) {
			t.Fatal("kdf3")
		}
	}
}

func TestInitialState(t *testing.T) {
	h := newBlake2s()
	h.Write([]byte("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"))
	ck := h.Sum(nil)
	h.Reset()
	h.Write(ck)
	h.Write([]byte("WireGuard v1 zx2c4 Jason@zx2c4.com"))
	if !bytes.Equal(initialChainKey[:], ck) || !bytes.Equal(initialHash[:], h.Sum(nil)) {
		t.Fatal("initial chaining key or hash")
	}
	var x [hashSize]byte
	copy(x[:], ck)
	data := []byte("0123456789abcdef0123456789abcdef0123456789abcdef")
	mixHash(&x, data)
	h.Reset()
	h.Write(ck)
	h.Write(data)
	if !bytes.Equal(x[:], h.Sum(nil)) {
		t.Fatal("mixHash")
	}
}

func TestHashingDoesNotAllocate(t *testing.T) {
	var c, k, tt [hashSize]byte
	in := make([]byte, 32)
	if a := testing.AllocsPerRun(100, func() { kdf3(&c, &tt, &k, in); mixHash(&c, in) }); a != 0 {
		t.Fatalf("%v allocs", a)
	}
}
