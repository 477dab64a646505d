package noise

import (
	"bytes"
	"encoding/binary"
	"time"
)

// Timestamp is a TAI64N label: 8 bytes of big-endian seconds since 1970
// plus 2^62, then 4 bytes of big-endian nanoseconds. Responders keep the
// newest one each peer sent and reject initiations whose timestamp is not
// After it, which defeats replayed initiations.
type Timestamp [12]byte

// tai64Base is the TAI64 label of 1970-01-01 00:00:00 (leap seconds are
// ignored, as every WireGuard implementation does).
const tai64Base = uint64(1) << 62

// timestampGranularity is the precision Now keeps: 2^24 ns (about 16.8 ms).
// Rounding hides the exact moment a handshake was made from whoever can
// decrypt it, and is still far finer than the rate at which a peer may
// initiate.
const timestampGranularity = 1 << 24

// Now returns the current time as a Timestamp, rounded down to
// timestampGranularity.
func Now() Timestamp {
	t := time.Now()
	ts := TimestampOf(t)
	binary.BigEndian.PutUint32(ts[8:], uint32(t.Nanosecond())&^(timestampGranularity-1))
	return ts
}

// TimestampOf returns t as a Timestamp, without rounding. Times before 1970
// are allowed (the label is offset by 2^62).
func TimestampOf(t time.Time) Timestamp {
	var ts Timestamp
	binary.BigEndian.PutUint64(ts[:8], tai64Base+uint64(t.Unix()))
	binary.BigEndian.PutUint32(ts[8:], uint32(t.Nanosecond()))
	return ts
}

// After reports whether t is strictly later than u. Big-endian labels
// compare like the times they encode, so this is a byte comparison.
func (t Timestamp) After(u Timestamp) bool {
	return bytes.Compare(t[:], u[:]) > 0
}
