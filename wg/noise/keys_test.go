package noise

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func TestRFC7748Vector(t *testing.T) {
	// RFC 7748 section 6.1.
	alice, err := ParsePrivateKeyHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := alice.PublicKey().Hex(), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"; got != want {
		t.Fatalf("public key %s, want %s", got, want)
	}
	bob, err := ParsePrivateKeyHex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
	if err != nil {
		t.Fatal(err)
	}
	bobPub := bob.PublicKey()
	if got, want := bobPub.Hex(), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"; got != want {
		t.Fatalf("public key %s, want %s", got, want)
	}
	ss, ok := alice.sharedSecret(&bobPub)
	if !ok || hex.EncodeToString(ss[:]) != "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742" {
		t.Fatalf("shared secret %x (%v)", ss, ok)
	}
	// NewLocal clamps, which does not change the public key.
	l := NewLocal(alice)
	if l.Public != alice.PublicKey() || l.Private[0]&7 != 0 || l.Private[31]&0xc0 != 0x40 {
		t.Fatalf("NewLocal: %x", l.Private)
	}
}

func TestGenerate(t *testing.T) {
	seen := map[PrivateKey]bool{}
	for range 20 {
		k, err := GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		if k[0]&7 != 0 || k[31]&0x80 != 0 || k[31]&0x40 == 0 {
			t.Fatalf("not clamped: %x", k)
		}
		if seen[k] || k.IsZero() || k.PublicKey().IsZero() {
			t.Fatal("duplicate or zero key")
		}
		seen[k] = true
		p, err := GeneratePresharedKey()
		if err != nil || p.IsZero() {
			t.Fatal("bad psk")
		}
	}
}

func TestIsZero(t *testing.T) {
	if !(PrivateKey{}).IsZero() || !(PublicKey{}).IsZero() || !(PresharedKey{}).IsZero() {
		t.Fatal("zero keys not zero")
	}
	for i := range KeySize {
		var a PrivateKey
		var b PublicKey
		var c PresharedKey
		a[i], b[i], c[i] = 1, 0x80, 0xff
		if a.IsZero() || b.IsZero() || c.IsZero() {
			t.Fatalf("key with byte %d set reported zero", i)
		}
	}
}

func TestEncodings(t *testing.T) {
	priv, _ := GeneratePrivateKey()
	pub := priv.PublicKey()
	psk, _ := GeneratePresharedKey()

	if k, err := ParsePrivateKeyHex(priv.Hex()); err != nil || k != priv {
		t.Fatal("private hex round trip")
	}
	if k, err := ParsePrivateKeyBase64(priv.Base64()); err != nil || k != priv {
		t.Fatal("private base64 round trip")
	}
	if k, err := ParsePublicKeyHex(pub.Hex()); err != nil || k != pub {
		t.Fatal("public hex round trip")
	}
	if k, err := ParsePublicKeyBase64(pub.Base64()); err != nil || k != pub || pub.String() != pub.Base64() {
		t.Fatal("public base64 round trip")
	}
	if k, err := ParsePresharedKeyHex(psk.Hex()); err != nil || k != psk {
		t.Fatal("psk hex round trip")
	}
	if k, err := ParsePresharedKeyBase64(psk.Base64()); err != nil || k != psk {
		t.Fatal("psk base64 round trip")
	}
	if k, err := ParsePublicKeyHex(strings.ToUpper(pub.Hex())); err != nil || k != pub {
		t.Fatal("upper-case hex")
	}
	if len(pub.Hex()) != 64 || len(pub.Base64()) != 44 || pub.Hex() != strings.ToLower(pub.Hex()) {
		t.Fatal("encoded lengths")
	}
	// A key as the wg tool prints it.
	const wgKey = "YNqHwpcAmVj0lVzPSt3oUnQvaO5GhiNWaZ/XDCfy8lI="
	if k, err := ParsePrivateKeyBase64(wgKey); err != nil || k.Base64() != wgKey {
		t.Fatalf("wg key: %v", err)
	}

	bad := []string{
		"", "00", strings.Repeat("0", 63), strings.Repeat("0", 65), strings.Repeat("g", 64),
		strings.Repeat("0", 62) + " 0",
		strings.Repeat("A", 43), strings.Repeat("A", 44), strings.Repeat("A", 45), strings.Repeat("A", 42) + "==",
		strings.Repeat("A", 43) + "\n", strings.Repeat("A", 42) + "\n=", strings.Repeat("A", 42) + "*=",
		wgKey[:43] + "A" + "=",
	}
	for _, s := range bad {
		_, e1 := ParsePrivateKeyHex(s)
		_, e2 := ParsePublicKeyHex(s)
		_, e3 := ParsePresharedKeyHex(s)
		_, e4 := ParsePrivateKeyBase64(s)
		_, e5 := ParsePublicKeyBase64(s)
		_, e6 := ParsePresharedKeyBase64(s)
		hexOK := len(s) == 64 && strings.Trim(s, "0123456789abcdefABCDEF") == ""
		for i, err := range []error{e1, e2, e3} {
			if hexOK != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidKey)) {
				t.Errorf("hex parser %d on %q: %v", i, s, err)
			}
		}
		for i, err := range []error{e4, e5, e6} {
			if err == nil || !errors.Is(err, ErrInvalidKey) {
				t.Errorf("base64 parser %d accepted %q", i, s)
			}
		}
	}
}

// TestIsLowOrder: the all-zero key and the other small-order points of
// Curve25519 are low order; generated keys are not.
func TestIsLowOrder(t *testing.T) {
	lowOrder := []string{
		"0000000000000000000000000000000000000000000000000000000000000000", // 0
		"0100000000000000000000000000000000000000000000000000000000000000", // 1
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800", // order 8
		"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157", // order 8
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // p-1
		"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // p
	}
	for _, h := range lowOrder {
		k, err := ParsePublicKeyHex(h)
		if err != nil {
			t.Fatal(err)
		}
		if !k.IsLowOrder() {
			t.Errorf("%s: IsLowOrder = false, want true", h)
		}
	}
	for range 20 {
		priv, err := GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		if pub := priv.PublicKey(); pub.IsLowOrder() {
			t.Errorf("generated key %s reported as low order", pub)
		}
	}
}
