package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"golang.zx2c4.com/wireguard/device"
)

func fill(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

func randomInitiation(r *rand.Rand) Initiation {
	var m Initiation
	m.Sender = r.Uint32()
	fill(r, m.Ephemeral[:])
	fill(r, m.Static[:])
	fill(r, m.Timestamp[:])
	fill(r, m.MAC1[:])
	fill(r, m.MAC2[:])
	return m
}

func randomResponse(r *rand.Rand) Response {
	var m Response
	m.Sender = r.Uint32()
	m.Receiver = r.Uint32()
	fill(r, m.Ephemeral[:])
	fill(r, m.Empty[:])
	fill(r, m.MAC1[:])
	fill(r, m.MAC2[:])
	return m
}

func randomCookieReply(r *rand.Rand) CookieReply {
	var m CookieReply
	m.Receiver = r.Uint32()
	fill(r, m.Nonce[:])
	fill(r, m.Cookie[:])
	return m
}

// binaryLE encodes v the way wireguard-go lays its message structs out.
func binaryLE(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestLayoutMatchesWireGuardGo marshals random messages both here and with
// wireguard-go's message structs and requires identical bytes.
func TestLayoutMatchesWireGuardGo(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		in := randomInitiation(r)
		got := make([]byte, InitiationSize)
		in.Marshal(got)
		want := binaryLE(t, &device.MessageInitiation{
			Type: device.MessageInitiationType, Sender: in.Sender, Ephemeral: in.Ephemeral,
			Static: in.Static, Timestamp: in.Timestamp, MAC1: in.MAC1, MAC2: in.MAC2,
		})
		if !bytes.Equal(got, want) {
			t.Fatalf("initiation layout differs:\n got %x\nwant %x", got, want)
		}

		re := randomResponse(r)
		got = make([]byte, ResponseSize)
		re.Marshal(got)
		want = binaryLE(t, &device.MessageResponse{
			Type: device.MessageResponseType, Sender: re.Sender, Receiver: re.Receiver,
			Ephemeral: re.Ephemeral, Empty: re.Empty, MAC1: re.MAC1, MAC2: re.MAC2,
		})
		if !bytes.Equal(got, want) {
			t.Fatalf("response layout differs:\n got %x\nwant %x", got, want)
		}

		cr := randomCookieReply(r)
		got = make([]byte, CookieReplySize)
		cr.Marshal(got)
		want = binaryLE(t, &device.MessageCookieReply{
			Type: device.MessageCookieReplyType, Receiver: cr.Receiver, Nonce: cr.Nonce, Cookie: cr.Cookie,
		})
		if !bytes.Equal(got, want) {
			t.Fatalf("cookie reply layout differs:\n got %x\nwant %x", got, want)
		}

		var hdr [TransportHeaderSize]byte
		recv, ctr := r.Uint32(), r.Uint64()
		PutTransportHeader(hdr[:], recv, ctr)
		want = binaryLE(t, struct {
			Type, Receiver uint32
			Counter        uint64
		}{device.MessageTransportType, recv, ctr})
		if !bytes.Equal(hdr[:], want) {
			t.Fatalf("transport header differs:\n got %x\nwant %x", hdr, want)
		}
	}
	if InitiationMAC1Offset != device.MessageInitiationSize-32 || ResponseMAC1Offset != device.MessageResponseSize-32 ||
		InitiationMAC2Offset != InitiationSize-16 || ResponseMAC2Offset != ResponseSize-16 {
		t.Fatal("MAC offsets are not the last 32/16 bytes")
	}
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 100 {
		in := randomInitiation(r)
		b := make([]byte, InitiationSize+7) // longer buffers are fine for Marshal
		in.Marshal(b)
		var in2 Initiation
		if err := in2.Unmarshal(b[:InitiationSize]); err != nil || in2 != in {
			t.Fatalf("initiation: err %v, %+v != %+v", err, in2, in)
		}
		if typ, err := MessageType(b); err != nil || typ != TypeInitiation {
			t.Fatalf("MessageType = %d, %v", typ, err)
		}

		re := randomResponse(r)
		b = make([]byte, ResponseSize)
		re.Marshal(b)
		var re2 Response
		if err := re2.Unmarshal(b); err != nil || re2 != re {
			t.Fatalf("response: err %v", err)
		}

		cr := randomCookieReply(r)
		b = make([]byte, CookieReplySize)
		cr.Marshal(b)
		var cr2 CookieReply
		if err := cr2.Unmarshal(b); err != nil || cr2 != cr {
			t.Fatalf("cookie reply: err %v", err)
		}

		b = make([]byte, MinTransportSize)
		recv, ctr := r.Uint32(), r.Uint64()
		PutTransportHeader(b, recv, ctr)
		gr, gc, err := ParseTransportHeader(b)
		if err != nil || gr != recv || gc != ctr {
			t.Fatalf("transport: %d %d %v", gr, gc, err)
		}
	}
}

func TestRejects(t *testing.T) {
	var in Initiation
	good := make([]byte, InitiationSize)
	in.Marshal(good)

	if err := in.Unmarshal(good[:InitiationSize-1]); !errors.Is(err, ErrSize) {
		t.Errorf("short initiation: %v", err)
	}
	if err := in.Unmarshal(append(good, 0)); !errors.Is(err, ErrSize) {
		t.Errorf("long initiation: %v", err)
	}
	for i := 0; i < 4; i++ {
		b := bytes.Clone(good)
		b[i] ^= 0x80
		if err := in.Unmarshal(b); !errors.Is(err, ErrType) {
			t.Errorf("type byte %d flipped: %v", i, err)
		}
	}
	var re Response
	if err := re.Unmarshal(make([]byte, ResponseSize)); !errors.Is(err, ErrType) {
		t.Errorf("zero response: %v", err)
	}
	var cr CookieReply
	b := make([]byte, CookieReplySize)
	b[0] = TypeResponse
	if err := cr.Unmarshal(b); !errors.Is(err, ErrType) {
		t.Errorf("cookie reply with response type: %v", err)
	}

	if _, err := MessageType([]byte{1, 0, 0}); !errors.Is(err, ErrSize) {
		t.Errorf("3-byte MessageType: %v", err)
	}
	if _, err := MessageType([]byte{1, 0, 1, 0}); !errors.Is(err, ErrType) {
		t.Errorf("reserved byte set: %v", err)
	}
	if typ, err := MessageType([]byte{9, 0, 0, 0}); err != nil || typ != 9 {
		t.Errorf("unknown type: %d %v", typ, err)
	}

	tb := make([]byte, MinTransportSize)
	PutTransportHeader(tb, 1, 2)
	if _, _, err := ParseTransportHeader(tb[:MinTransportSize-1]); !errors.Is(err, ErrSize) {
		t.Errorf("short transport: %v", err)
	}
	tb[0] = TypeInitiation
	if _, _, err := ParseTransportHeader(tb); !errors.Is(err, ErrType) {
		t.Errorf("transport with wrong type: %v", err)
	}
}

func TestNoAllocs(t *testing.T) {
	var in Initiation
	var re Response
	var cr CookieReply
	b := make([]byte, InitiationSize)
	allocs := testing.AllocsPerRun(100, func() {
		in.Marshal(b)
		_ = in.Unmarshal(b)
		re.Marshal(b)
		_ = re.Unmarshal(b[:ResponseSize])
		cr.Marshal(b)
		_ = cr.Unmarshal(b[:CookieReplySize])
		PutTransportHeader(b, 7, 9)
		_, _, _ = ParseTransportHeader(b)
		_, _ = MessageType(b)
	})
	if allocs != 0 {
		t.Fatalf("%v allocs per run, want 0", allocs)
	}
}

func BenchmarkParseTransportHeader(b *testing.B) {
	buf := make([]byte, 1500)
	PutTransportHeader(buf, 7, 9)
	b.SetBytes(TransportHeaderSize)
	b.ReportAllocs()
	var sum uint64
	for b.Loop() {
		r, c, _ := ParseTransportHeader(buf)
		sum += uint64(r) + c
	}
	_ = sum
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func BenchmarkInitiationUnmarshal(b *testing.B) {
	buf := make([]byte, InitiationSize)
	var m Initiation
	m.Marshal(buf)
	b.SetBytes(InitiationSize)
	b.ReportAllocs()
	for b.Loop() {
		_ = m.Unmarshal(buf)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}
