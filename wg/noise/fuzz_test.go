package noise

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/wg/wire"
)

// The fuzz targets make fresh random identities in every process, so inputs
// that a cached corpus kept from an earlier run can never authenticate: any
// message that does must be one generated here.

func FuzzParseKey(f *testing.F) {
	k, _ := GeneratePrivateKey()
	f.Add(k.Hex())
	f.Add(k.Base64())
	f.Add(strings.ToUpper(k.Hex()))
	f.Add("")
	f.Add(strings.Repeat("=", 44))
	f.Add(strings.Repeat("A", 43) + "=")
	f.Add(strings.Repeat("A", 42) + "==")
	f.Add(strings.Repeat("0", 63) + "x")
	f.Fuzz(func(t *testing.T, s string) {
		if k, err := ParsePrivateKeyHex(s); err == nil {
			if !strings.EqualFold(k.Hex(), s) {
				t.Fatalf("hex %q parsed to %x", s, k)
			}
		}
		_, e1 := ParsePublicKeyHex(s)
		_, e2 := ParsePresharedKeyHex(s)
		_, e0 := ParsePrivateKeyHex(s)
		if (e0 == nil) != (e1 == nil) || (e1 == nil) != (e2 == nil) {
			t.Fatal("hex parsers disagree")
		}
		if k, err := ParsePublicKeyBase64(s); err == nil {
			if len(s) != 44 {
				t.Fatalf("base64 %q of length %d accepted", s, len(s))
			}
			// Non-canonical trailing bits may be accepted (as the wg
			// tool does), but the key re-encodes and re-parses stably.
			if k2, err := ParsePublicKeyBase64(k.Base64()); err != nil || k2 != k {
				t.Fatalf("base64 %q: re-parse %v", s, err)
			}
			if k.Base64()[:42] != s[:42] {
				t.Fatalf("base64 %q re-encodes as %q", s, k.Base64())
			}
		}
		_, e3 := ParsePrivateKeyBase64(s)
		_, e4 := ParsePresharedKeyBase64(s)
		_, e5 := ParsePublicKeyBase64(s)
		if (e3 == nil) != (e4 == nil) || (e4 == nil) != (e5 == nil) {
			t.Fatal("base64 parsers disagree")
		}
	})
}

func FuzzConsumeInitiation(f *testing.F) {
	i, r := mustLocal(f), mustLocal(f)
	gen, chk := NewCookieGenerator(r.Public), NewCookieChecker(r.Public)
	var valid [][]byte
	for n := range 3 {
		init, _, err := CreateInitiation(i, r.Public, uint32(n), Now())
		if err != nil {
			f.Fatal(err)
		}
		b := marshalInitiation(init)
		gen.AddMACs(b)
		valid = append(valid, b)
		f.Add(b)
	}
	f.Add(make([]byte, wire.InitiationSize))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		chk.CheckMAC1(b)
		chk.CheckMAC2(b, srcA)
		var m wire.Initiation
		if m.Unmarshal(b) != nil {
			return
		}
		info, err := ConsumeInitiation(r, &m)
		if err != nil {
			return
		}
		// Only the sender index and MACs are not authenticated by the
		// handshake itself.
		for _, v := range valid {
			if bytes.Equal(v[8:wire.InitiationMAC1Offset], b[8:wire.InitiationMAC1Offset]) {
				if info.RemoteStatic != i.Public || info.RemoteIndex != m.Sender {
					t.Fatalf("info %+v", info)
				}
				if _, _, err := CreateResponse(r, info, PresharedKey{}, 1); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
		t.Fatalf("forged initiation accepted: %x", b)
	})
}

func FuzzConsumeResponse(f *testing.F) {
	i, r := mustLocal(f), mustLocal(f)
	psk := mustPSK(f)
	gen := NewCookieGenerator(i.Public)
	init, st, err := CreateInitiation(i, r.Public, 77, Now())
	if err != nil {
		f.Fatal(err)
	}
	info, err := ConsumeInitiation(r, init)
	if err != nil {
		f.Fatal(err)
	}
	resp, kr, err := CreateResponse(r, info, psk, 88)
	if err != nil {
		f.Fatal(err)
	}
	valid := marshalResponse(resp)
	gen.AddMACs(valid)
	f.Add(valid)
	f.Add(make([]byte, wire.ResponseSize))
	f.Add([]byte{2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m wire.Response
		if m.Unmarshal(b) != nil {
			return
		}
		s := *st // each input gets the pristine state
		keys, err := s.ConsumeResponse(i, psk, &m)
		if err != nil {
			if s != *st {
				t.Fatal("failed ConsumeResponse changed the state")
			}
			return
		}
		// The sender index (and the MACs) are outside the transcript.
		if !bytes.Equal(valid[8:wire.ResponseMAC1Offset], b[8:wire.ResponseMAC1Offset]) {
			t.Fatalf("forged response accepted: %x", b)
		}
		if keys.Send != kr.Receive || keys.Receive != kr.Send || keys.RemoteIndex != m.Sender {
			t.Fatal("keys do not match")
		}
	})
}

func FuzzCookieReply(f *testing.F) {
	r := mustLocal(f)
	chk := NewCookieChecker(r.Public)
	msg := marshalInitiation(&wire.Initiation{Sender: 5})
	NewCookieGenerator(r.Public).AddMACs(msg)
	reply, err := chk.CreateReply(msg, srcA)
	if err != nil {
		f.Fatal(err)
	}
	valid := make([]byte, wire.CookieReplySize)
	reply.Marshal(valid)
	f.Add(valid)
	f.Add(make([]byte, wire.CookieReplySize))
	f.Add([]byte{3, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m wire.CookieReply
		if m.Unmarshal(b) != nil {
			return
		}
		g := NewCookieGenerator(r.Public)
		sent := bytes.Clone(msg)
		g.AddMACs(sent)
		if err := g.ConsumeReply(&m); err != nil {
			return
		}
		// Only the receiver index is outside the AEAD.
		if !bytes.Equal(valid[8:], b[8:]) {
			t.Fatalf("forged cookie reply accepted: %x", b)
		}
		g.AddMACs(sent)
		if !chk.CheckMAC2(sent, srcA) {
			t.Fatal("consumed cookie gives a bad mac2")
		}
	})
}
