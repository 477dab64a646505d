package tun

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestHangHunt(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	seed := flow4(1, false).super(1, 2, 3, tcpFlagACK|tcpFlagPSH, payloadBytes(3000, 1), 1000)
	for i := range 2000 {
		d := append([]byte(nil), seed[:r.IntN(len(seed))]...)
		for range 3 {
			if len(d) > 0 {
				d[r.IntN(len(d))] = byte(r.Uint32())
			}
		}
		nb := uint8(r.Uint32())
		start := time.Now()
		fuzzVirtioReadOne(t, d, nb)
		if time.Since(start) > 100*time.Millisecond {
			t.Fatalf("slow %d: %x nb=%d", i, d[:10], nb)
		}
	}
}
