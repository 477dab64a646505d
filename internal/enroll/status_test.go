package enroll

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/noise"
)

func mustKey(t testing.TB) noise.PrivateKey {
	k, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestStatusProof(t *testing.T) {
	dev, gw, other := mustKey(t), mustKey(t), mustKey(t)
	now := time.Unix(1_800_000_000, 0)
	req, err := NewStatusRequest(dev, gw.PublicKey(), now)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckStatus(req, gw, now.Add(time.Minute)); err != nil {
		t.Fatalf("a good proof: %v", err)
	}
	b, _ := json.Marshal(req)
	back, err := DecodeStatusRequest(bytes.NewReader(b))
	if err != nil || CheckStatus(back, gw, now) != nil {
		t.Fatalf("round trip: %v", err)
	}
	bad := func(name string, r StatusRequest, key noise.PrivateKey, at time.Time) {
		t.Helper()
		if err := CheckStatus(&r, key, at); !errors.Is(err, ErrBadProof) {
			t.Errorf("%s: CheckStatus = %v, want ErrBadProof", name, err)
		}
	}
	bad("another gateway's key", *req, other, now)
	bad("too old", *req, gw, now.Add(MaxStatusSkew+time.Second))
	bad("from the future", *req, gw, now.Add(-MaxStatusSkew-time.Second))
	moved := *req
	moved.Time++
	bad("another time", moved, gw, now)
	stolen := *req
	stolen.PublicKey = other.PublicKey()
	bad("another device's key", stolen, gw, now)
	flipped := *req
	flipped.Proof = append([]byte(nil), req.Proof...)
	flipped.Proof[0] ^= 1
	bad("a flipped bit", flipped, gw, now)
	low := *req
	low.PublicKey = noise.PublicKey{1} // of low order (the point 1)
	bad("a low-order key", low, gw, now)

	for _, in := range []string{``, `{}`, `{"public_key":"` + req.PublicKey.Base64() + `","time":1}`,
		`{"public_key":"` + req.PublicKey.Base64() + `","time":1,"proof":"AAAA"}`, `{"x":1}`, string(b) + string(b),
		`{"public_key":"` + req.PublicKey.Base64() + `","time":1,"proof":"` + string(bytes.Repeat([]byte("A"), 2000)) + `"}`} {
		if _, err := DecodeStatusRequest(bytes.NewReader([]byte(in))); err == nil {
			t.Errorf("DecodeStatusRequest(%.60q) accepted it", in)
		}
	}
}

func FuzzDecodeStatusRequest(f *testing.F) {
	dev, gw := mustKey(f), mustKey(f)
	req, _ := NewStatusRequest(dev, gw.PublicKey(), time.Unix(1_800_000_000, 0))
	b, _ := json.Marshal(req)
	f.Add(b)
	f.Add([]byte(`{"public_key":"","time":0,"proof":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeStatusRequest(bytes.NewReader(data))
		if err != nil {
			return
		}
		if r.PublicKey.IsZero() || len(r.Proof) != 32 {
			t.Fatalf("accepted %+v", r)
		}
		// Whatever it is, checking it never panics and a forged one fails.
		if CheckStatus(r, gw, time.Unix(r.Time, 0)) == nil && !bytes.Equal(r.Proof, req.Proof) {
			t.Fatalf("a forged proof holds: %+v", r)
		}
	})
}
