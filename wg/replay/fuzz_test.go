package replay

import (
	"encoding/binary"
	"testing"
)

// FuzzFilter decodes the input as a sequence of signed counter steps and
// requires the filter to agree with the map model at every step.
func FuzzFilter(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 0, 1, 0, 0xff, 0xff, 2, 0})
	f.Add(binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(nil, 0x7fff), 0x8001))
	f.Add([]byte{0, 0x40, 0, 0xc0, 0xc0, 0xff, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		var fl Filter
		m := model{seen: map[uint64]bool{}}
		limit := uint64(rejectAfterMessages)
		if len(b) > 0 && b[0]&1 == 1 {
			limit = 1 << 15
		}
		c := uint64(0)
		for len(b) >= 2 {
			// Steps of -32768..32767, scaled so jumps past the ring happen.
			step := int64(int16(binary.LittleEndian.Uint16(b)))
			b = b[2:]
			c += uint64(step)
			got, want := fl.ValidateCounter(c, limit), m.validate(c, limit)
			if got != want {
				t.Fatalf("counter %d (highest %d): filter %v, model %v", c, m.highest, got, want)
			}
		}
	})
}
