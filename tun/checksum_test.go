package tun

import (
	"math/rand/v2"
	"testing"
)

func TestOnesSumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for n := 0; n <= 300; n++ {
		for start := 0; start < 9; start++ {
			b := buf[start : start+n]
			if got, want := onesSum(b), refSum(b); got != want {
				t.Fatalf("onesSum(len %d at %d) = %#04x; want %#04x", n, start, got, want)
			}
		}
	}
	for range 200 {
		n := r.IntN(len(buf))
		b := buf[:n]
		if got, want := onesSum(b), refSum(b); got != want {
			t.Fatalf("onesSum(len %d) = %#04x; want %#04x", n, got, want)
		}
	}
	// All ones: every add carries.
	ff := make([]byte, 1500)
	for i := range ff {
		ff[i] = 0xff
	}
	if got, want := onesSum(ff), refSum(ff); got != want {
		t.Fatalf("onesSum(0xff...) = %#04x; want %#04x", got, want)
	}
}

func TestChecksumKnownVector(t *testing.T) {
	// IPv4 header from RFC 1071 style examples (Wikipedia's worked example).
	hdr := []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
		0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}
	if got := checksum(hdr, 0); got != 0xb861 {
		t.Fatalf("checksum = %#04x; want 0xb861", got)
	}
}

func FuzzChecksum(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0xff})
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33})
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := onesSum(b), refSum(b); got != want {
			t.Fatalf("onesSum = %#04x; want %#04x", got, want)
		}
	})
}
