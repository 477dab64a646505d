package wire

import (
	"bytes"
	"testing"
)

func seedsFor(f *testing.F, size int, typ byte) {
	f.Add([]byte{})
	f.Add([]byte{typ, 0, 0, 0})
	b := make([]byte, size)
	b[0] = typ
	f.Add(b)
	c := bytes.Clone(b)
	for i := range c[4:] {
		c[4+i] = byte(i * 7)
	}
	f.Add(c)
	f.Add(c[:size-1])
	f.Add(append(bytes.Clone(c), 0))
	d := bytes.Clone(c)
	d[2] = 1
	f.Add(d)
}

// checkMessageType requires MessageType to agree with what Unmarshal saw.
func checkMessageType(t *testing.T, b []byte, want uint32) {
	typ, err := MessageType(b)
	if err != nil || typ != want {
		t.Fatalf("Unmarshal accepted %x but MessageType = %d, %v", b, typ, err)
	}
}

func FuzzInitiation(f *testing.F) {
	seedsFor(f, InitiationSize, TypeInitiation)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Initiation
		if m.Unmarshal(b) != nil {
			return
		}
		checkMessageType(t, b, TypeInitiation)
		out := make([]byte, InitiationSize)
		m.Marshal(out)
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip:\n in %x\nout %x", b, out)
		}
	})
}

func FuzzResponse(f *testing.F) {
	seedsFor(f, ResponseSize, TypeResponse)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Response
		if m.Unmarshal(b) != nil {
			return
		}
		checkMessageType(t, b, TypeResponse)
		out := make([]byte, ResponseSize)
		m.Marshal(out)
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip:\n in %x\nout %x", b, out)
		}
	})
}

func FuzzCookieReply(f *testing.F) {
	seedsFor(f, CookieReplySize, TypeCookieReply)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m CookieReply
		if m.Unmarshal(b) != nil {
			return
		}
		checkMessageType(t, b, TypeCookieReply)
		out := make([]byte, CookieReplySize)
		m.Marshal(out)
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip:\n in %x\nout %x", b, out)
		}
	})
}

func FuzzTransportHeader(f *testing.F) {
	seedsFor(f, MinTransportSize, TypeTransport)
	seedsFor(f, 1500, TypeTransport)
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = MessageType(b)
		recv, ctr, err := ParseTransportHeader(b)
		if err != nil {
			return
		}
		if len(b) < MinTransportSize {
			t.Fatalf("accepted %d bytes", len(b))
		}
		checkMessageType(t, b, TypeTransport)
		out := bytes.Clone(b)
		PutTransportHeader(out, recv, ctr)
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip:\n in %x\nout %x", b, out)
		}
	})
}
