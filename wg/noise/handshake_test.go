package noise

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/wire"
)

// handshake runs a full exchange between initiator i and responder r and
// returns both sides' keys.
func handshake(t *testing.T, i, r *Local, psk PresharedKey) (ki, kr Keys) {
	t.Helper()
	init, st, err := CreateInitiation(i, r.Public, 111, Now())
	if err != nil {
		t.Fatal(err)
	}
	var mi wire.Initiation
	if err := mi.Unmarshal(marshalInitiation(init)); err != nil {
		t.Fatal(err)
	}
	info, err := ConsumeInitiation(r, &mi)
	if err != nil {
		t.Fatal(err)
	}
	if info.RemoteStatic != i.Public || info.RemoteIndex != 111 {
		t.Fatalf("info: %v %d", info.RemoteStatic, info.RemoteIndex)
	}
	resp, kr, err := CreateResponse(r, info, psk, 222)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Sender != 222 || resp.Receiver != 111 {
		t.Fatalf("response indices %d %d", resp.Sender, resp.Receiver)
	}
	var mr wire.Response
	if err := mr.Unmarshal(marshalResponse(resp)); err != nil {
		t.Fatal(err)
	}
	ki, err = st.ConsumeResponse(i, psk, &mr)
	if err != nil {
		t.Fatal(err)
	}
	return ki, kr
}

func TestHandshakeRoundTrip(t *testing.T) {
	for _, withPSK := range []bool{false, true} {
		i, r := mustLocal(t), mustLocal(t)
		var psk PresharedKey
		if withPSK {
			psk = mustPSK(t)
		}
		ki, kr := handshake(t, i, r, psk)
		if ki.Send != kr.Receive || ki.Receive != kr.Send {
			t.Fatalf("psk=%v: keys do not match", withPSK)
		}
		if ki.Send == ki.Receive {
			t.Fatal("send and receive keys are equal")
		}
		if !ki.Initiator || kr.Initiator {
			t.Fatal("initiator flags wrong")
		}
		if ki.LocalIndex != 111 || ki.RemoteIndex != 222 || kr.LocalIndex != 222 || kr.RemoteIndex != 111 {
			t.Fatalf("indices: %+v %+v", ki, kr)
		}
		// A second handshake yields fresh keys.
		ki2, _ := handshake(t, i, r, psk)
		if ki2.Send == ki.Send {
			t.Fatal("two handshakes gave the same keys")
		}
	}
}

func TestWrongPSK(t *testing.T) {
	i, r := mustLocal(t), mustLocal(t)
	psk := mustPSK(t)
	init, st, err := CreateInitiation(i, r.Public, 1, Now())
	if err != nil {
		t.Fatal(err)
	}
	info, err := ConsumeInitiation(r, init)
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err := CreateResponse(r, info, psk, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, wrong := range []PresharedKey{{}, mustPSK(t)} {
		if _, err := st.ConsumeResponse(i, wrong, resp); !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("wrong psk: %v", err)
		}
	}
	if _, err := st.ConsumeResponse(i, psk, resp); err != nil {
		t.Fatalf("right psk after failures: %v", err)
	}
}

// TestTamperInitiation flips every bit position's byte of a marshaled
// initiation: the device pipeline (Unmarshal, CheckMAC1, ConsumeInitiation)
// must reject each, and ConsumeInitiation alone must reject every change to
// the encrypted and hashed fields.
func TestTamperInitiation(t *testing.T) {
	i, r := mustLocal(t), mustLocal(t)
	gen, chk := NewCookieGenerator(r.Public), NewCookieChecker(r.Public)
	init, _, err := CreateInitiation(i, r.Public, 5, Now())
	if err != nil {
		t.Fatal(err)
	}
	good := marshalInitiation(init)
	gen.AddMACs(good)
	accept := func(b []byte) bool {
		var m wire.Initiation
		if m.Unmarshal(b) != nil || !chk.CheckMAC1(b) {
			return false
		}
		_, err := ConsumeInitiation(r, &m)
		return err == nil
	}
	if !accept(good) {
		t.Fatal("good initiation rejected")
	}
	for pos := 0; pos < wire.InitiationMAC2Offset; pos++ {
		for _, flip := range []byte{0x01, 0x80, 0xff} {
			b := bytes.Clone(good)
			b[pos] ^= flip
			if accept(b) {
				t.Fatalf("initiation with byte %d ^ %#x accepted", pos, flip)
			}
			if pos >= 8 && pos < wire.InitiationMAC1Offset {
				var m wire.Initiation
				_ = m.Unmarshal(b)
				if _, err := ConsumeInitiation(r, &m); !errors.Is(err, ErrAuthFailed) {
					t.Fatalf("ConsumeInitiation with byte %d ^ %#x: %v", pos, flip, err)
				}
			}
		}
	}
	// An initiation for someone else does not decrypt.
	var m wire.Initiation
	_ = m.Unmarshal(good)
	if _, err := ConsumeInitiation(mustLocal(t), &m); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("initiation for another responder: %v", err)
	}
}

// TestTamperResponse: every altered response fails, and the initiator's
// state survives all the failures so the genuine response still completes.
func TestTamperResponse(t *testing.T) {
	i, r := mustLocal(t), mustLocal(t)
	psk := mustPSK(t)
	gen, chk := NewCookieGenerator(i.Public), NewCookieChecker(i.Public)
	init, st, err := CreateInitiation(i, r.Public, 5, Now())
	if err != nil {
		t.Fatal(err)
	}
	info, err := ConsumeInitiation(r, init)
	if err != nil {
		t.Fatal(err)
	}
	resp, kr, err := CreateResponse(r, info, psk, 6)
	if err != nil {
		t.Fatal(err)
	}
	good := marshalResponse(resp)
	gen.AddMACs(good)
	for pos := 0; pos < wire.ResponseMAC2Offset; pos++ {
		for _, flip := range []byte{0x01, 0x80, 0xff} {
			b := bytes.Clone(good)
			b[pos] ^= flip
			var m wire.Response
			if m.Unmarshal(b) != nil || !chk.CheckMAC1(b) {
				continue
			}
			if _, err := st.ConsumeResponse(i, psk, &m); err == nil {
				t.Fatalf("response with byte %d ^ %#x accepted", pos, flip)
			}
			t.Errorf("byte %d ^ %#x passed mac1", pos, flip)
		}
		// Without the MAC check, ConsumeResponse alone catches every
		// change to the receiver, ephemeral and encrypted fields.
		if pos >= 8 && pos < wire.ResponseMAC1Offset {
			b := bytes.Clone(good)
			b[pos] ^= 0x40
			var m wire.Response
			_ = m.Unmarshal(b)
			if _, err := st.ConsumeResponse(i, psk, &m); !errors.Is(err, ErrAuthFailed) {
				t.Fatalf("ConsumeResponse with byte %d altered: %v", pos, err)
			}
		}
	}
	var m wire.Response
	_ = m.Unmarshal(good)
	ki, err := st.ConsumeResponse(i, psk, &m)
	if err != nil {
		t.Fatalf("genuine response after forgeries: %v", err)
	}
	if ki.Send != kr.Receive {
		t.Fatal("keys differ")
	}
	if _, err := st.ConsumeResponse(i, psk, &m); !errors.Is(err, ErrStateUsed) {
		t.Fatalf("second ConsumeResponse: %v", err)
	}
	if st.ephemeral != (PrivateKey{}) || st.chainKey != [hashSize]byte{} || st.hash != [hashSize]byte{} {
		t.Fatal("initiator secrets not cleared after use")
	}
}

func TestSingleUse(t *testing.T) {
	i, r := mustLocal(t), mustLocal(t)
	init, _, err := CreateInitiation(i, r.Public, 5, Now())
	if err != nil {
		t.Fatal(err)
	}
	info, err := ConsumeInitiation(r, init)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := CreateResponse(r, info, PresharedKey{}, 1); err != nil {
		t.Fatal(err)
	}
	if info.chainKey != [hashSize]byte{} || info.hash != [hashSize]byte{} {
		t.Fatal("responder chain state not cleared")
	}
	if _, _, err := CreateResponse(r, info, PresharedKey{}, 1); !errors.Is(err, ErrStateUsed) {
		t.Fatalf("second CreateResponse: %v", err)
	}
	if _, _, err := CreateResponse(r, nil, PresharedKey{}, 1); !errors.Is(err, ErrStateUsed) {
		t.Fatalf("nil info: %v", err)
	}
	var nilState *InitiatorState
	if _, err := nilState.ConsumeResponse(i, PresharedKey{}, &wire.Response{}); !errors.Is(err, ErrStateUsed) {
		t.Fatalf("nil state: %v", err)
	}
}

func TestWrongReceiverIndex(t *testing.T) {
	i, r := mustLocal(t), mustLocal(t)
	init, st, err := CreateInitiation(i, r.Public, 5, Now())
	if err != nil {
		t.Fatal(err)
	}
	info, _ := ConsumeInitiation(r, init)
	resp, _, err := CreateResponse(r, info, PresharedKey{}, 6)
	if err != nil {
		t.Fatal(err)
	}
	resp.Receiver = 4
	if _, err := st.ConsumeResponse(i, PresharedKey{}, resp); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong receiver: %v", err)
	}
	resp.Receiver = 5
	if _, err := st.ConsumeResponse(i, PresharedKey{}, resp); err != nil {
		t.Fatalf("right receiver afterwards: %v", err)
	}
}

// lowOrderPoints are Curve25519 public keys whose DH result is all zeros.
var lowOrderPoints = []PublicKey{
	{},  // 0
	{1}, // 1, order 4
	{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
		0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00}, // order 8
}

func TestLowOrderKeys(t *testing.T) {
	i, r := mustLocal(t), mustLocal(t)
	for _, p := range lowOrderPoints {
		if _, _, err := CreateInitiation(i, p, 1, Now()); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("initiation to low-order key %x: %v", p, err)
		}
	}
	if _, _, err := CreateInitiation(nil, r.Public, 1, Now()); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("nil local: %v", err)
	}

	// A low-order ephemeral in an initiation or response is rejected.
	init, st, err := CreateInitiation(i, r.Public, 1, Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range lowOrderPoints {
		bad := *init
		bad.Ephemeral = p
		if _, err := ConsumeInitiation(r, &bad); !errors.Is(err, ErrAuthFailed) {
			t.Errorf("low-order initiation ephemeral: %v", err)
		}
	}
	info, err := ConsumeInitiation(r, init)
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err := CreateResponse(r, info, PresharedKey{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range lowOrderPoints {
		bad := *resp
		bad.Ephemeral = p
		if _, err := st.ConsumeResponse(i, PresharedKey{}, &bad); !errors.Is(err, ErrAuthFailed) {
			t.Errorf("low-order response ephemeral: %v", err)
		}
	}
	if _, err := ConsumeInitiation(nil, init); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("nil local: %v", err)
	}
	if _, err := ConsumeInitiation(r, nil); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("nil msg: %v", err)
	}
}

// TestTimestampReplay shows how a responder spots replayed initiations: the
// timestamp of a replay, or of an older initiation, is not After the newest
// one accepted.
func TestTimestampReplay(t *testing.T) {
	i, r := mustLocal(t), mustLocal(t)
	base := time.Now()
	older := TimestampOf(base.Add(-time.Second))
	newer := TimestampOf(base)

	initOld, _, _ := CreateInitiation(i, r.Public, 1, older)
	initNew, _, _ := CreateInitiation(i, r.Public, 2, newer)
	var last Timestamp
	accept := func(m *wire.Initiation) bool {
		info, err := ConsumeInitiation(r, m)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Timestamp.After(last) {
			return false
		}
		last = info.Timestamp
		return true
	}
	if !accept(initNew) {
		t.Fatal("first initiation rejected")
	}
	if accept(initNew) {
		t.Fatal("replayed initiation accepted")
	}
	if accept(initOld) {
		t.Fatal("older initiation accepted")
	}
	initNewest, _, _ := CreateInitiation(i, r.Public, 3, TimestampOf(base.Add(time.Nanosecond)))
	if !accept(initNewest) {
		t.Fatal("newer initiation rejected")
	}
}

func TestTimestamp(t *testing.T) {
	epoch := TimestampOf(time.Unix(0, 0))
	if want := (Timestamp{0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}); epoch != want {
		t.Fatalf("epoch = %x, want %x", epoch, want)
	}
	ts := TimestampOf(time.Unix(0x01020304, 0x05060708))
	if want := (Timestamp{0x40, 0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08}); ts != want {
		t.Fatalf("got %x, want %x", ts, want)
	}
	if TimestampOf(time.Unix(-1, 0)).After(epoch) || !epoch.After(TimestampOf(time.Unix(-1, 999999999))) {
		t.Fatal("pre-1970 ordering")
	}
	times := []time.Time{time.Unix(0, 0), time.Unix(0, 1), time.Unix(0, 999999999), time.Unix(1, 0), time.Unix(1<<40, 5)}
	for a := range times {
		for b := range times {
			if got, want := TimestampOf(times[a]).After(TimestampOf(times[b])), times[a].After(times[b]); got != want {
				t.Fatalf("After(%v, %v) = %v", times[a], times[b], got)
			}
		}
	}
	before := TimestampOf(time.Now().Add(-time.Second))
	now := Now()
	if !now.After(before) || now.After(TimestampOf(time.Now().Add(time.Second))) {
		t.Fatal("Now is not now")
	}
	if nanos := uint32(now[8])<<24 | uint32(now[9])<<16 | uint32(now[10])<<8 | uint32(now[11]); nanos%timestampGranularity != 0 || nanos >= 1e9 {
		t.Fatalf("Now's nanoseconds %d not rounded to %d", nanos, timestampGranularity)
	}
}

func BenchmarkInitiation(b *testing.B) {
	i, r := mustLocal(b), mustLocal(b)
	b.SetBytes(wire.InitiationSize)
	b.ReportAllocs()
	for b.Loop() {
		init, _, err := CreateInitiation(i, r.Public, 1, Now())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ConsumeInitiation(r, init); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

func BenchmarkConsumeInitiation(b *testing.B) {
	i, r := mustLocal(b), mustLocal(b)
	init, _, err := CreateInitiation(i, r.Public, 1, Now())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(wire.InitiationSize)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ConsumeInitiation(r, init); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkFullHandshake(b *testing.B) {
	i, r := mustLocal(b), mustLocal(b)
	psk := mustPSK(b)
	b.SetBytes(wire.InitiationSize + wire.ResponseSize)
	b.ReportAllocs()
	for b.Loop() {
		init, st, err := CreateInitiation(i, r.Public, 1, Now())
		if err != nil {
			b.Fatal(err)
		}
		info, err := ConsumeInitiation(r, init)
		if err != nil {
			b.Fatal(err)
		}
		resp, _, err := CreateResponse(r, info, psk, 2)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.ConsumeResponse(i, psk, resp); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}
