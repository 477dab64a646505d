package enroll

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/noise"
)

func TestDeviceLogin(t *testing.T) {
	dev, gw, other := mustKey(t), mustKey(t), mustKey(t)
	now := time.Unix(1_800_000_000, 0)
	user, password, err := DeviceLogin(dev, gw.PublicKey(), now)
	if err != nil {
		t.Fatal(err)
	}
	if !IsDeviceLogin(user) || IsDeviceLogin("alice") || user != DeviceLoginPrefix+dev.PublicKey().Base64() {
		t.Fatalf("user %q", user)
	}
	p, err := ParseDeviceLogin(user, password)
	if err != nil {
		t.Fatal(err)
	}
	if p.PublicKey != dev.PublicKey() || p.Time != now.Unix() {
		t.Fatalf("parsed %+v", p)
	}
	if err := p.Check(gw, now.Add(time.Minute)); err != nil {
		t.Fatalf("a good proof: %v", err)
	}
	bad := func(name string, p DeviceLoginProof, key noise.PrivateKey, at time.Time) {
		t.Helper()
		if err := p.Check(key, at); !errors.Is(err, ErrBadProof) {
			t.Errorf("%s: Check = %v, want ErrBadProof", name, err)
		}
	}
	bad("another gateway's key", p, other, now)
	bad("too old", p, gw, now.Add(MaxStatusSkew+time.Second))
	bad("from the future", p, gw, now.Add(-MaxStatusSkew-time.Second))
	moved := p
	moved.Time++
	bad("another time", moved, gw, now)
	stolen := p
	stolen.PublicKey = other.PublicKey()
	bad("another device's key", stolen, gw, now)
	flipped := p
	flipped.MAC = append([]byte(nil), p.MAC...)
	flipped.MAC[31] ^= 0x80
	bad("a flipped bit", flipped, gw, now)
	low := p
	low.PublicKey = noise.PublicKey{1}
	bad("a low-order key", low, gw, now)

	// A status request's proof, of the same key and time, is no login.
	st, err := NewStatusRequest(dev, gw.PublicKey(), now)
	if err != nil {
		t.Fatal(err)
	}
	asLogin := DeviceLoginProof{PublicKey: st.PublicKey, Time: st.Time, MAC: st.Proof}
	bad("a status request's proof", asLogin, gw, now)

	secs := strconv.FormatInt(now.Unix(), 10)
	mac := base64.StdEncoding.EncodeToString(p.MAC)
	for _, tc := range [][2]string{
		{"alice", password},
		{DeviceLoginPrefix, password},
		{DeviceLoginPrefix + "AAAA", password},
		{user, ""},
		{user, secs},
		{user, "." + mac},
		{user, "-1." + mac},
		{user, "+5." + mac},
		{user, "99999999999999999999." + mac},
		{user, secs + "." + mac[:40]},
		{user, secs + "." + base64.StdEncoding.EncodeToString(make([]byte, 31))},
		{user, secs + "." + strings.TrimRight(mac, "=")},
		{user, secs + "." + mac + "."},
	} {
		if _, err := ParseDeviceLogin(tc[0], tc[1]); !errors.Is(err, ErrMalformedLogin) {
			t.Errorf("ParseDeviceLogin(%q, %q) = %v, want ErrMalformedLogin", tc[0], tc[1], err)
		}
	}
}

// FuzzParseDeviceLogin: any user name and password parse or fail with
// ErrMalformedLogin, and what parses checks without a panic and prints
// back to the same login.
func FuzzParseDeviceLogin(f *testing.F) {
	dev, gw := mustKey(f), mustKey(f)
	user, password, err := DeviceLogin(dev, gw.PublicKey(), time.Unix(1_800_000_000, 0))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(user, password)
	f.Add(user, "1.AAAA")
	f.Add("alice", "secret")
	f.Add(DeviceLoginPrefix+"x", "")
	f.Fuzz(func(t *testing.T, user, password string) {
		p, err := ParseDeviceLogin(user, password)
		if err != nil {
			if !errors.Is(err, ErrMalformedLogin) {
				t.Fatalf("error %v does not wrap ErrMalformedLogin", err)
			}
			return
		}
		if len(p.MAC) != 32 {
			t.Fatalf("a %d-byte MAC", len(p.MAC))
		}
		_ = p.Check(gw, time.Unix(p.Time, 0))
		if DeviceLoginPrefix+p.PublicKey.Base64() != user {
			t.Fatalf("user %q parsed to key %s", user, p.PublicKey.Base64())
		}
	})
}
