// Package enroll holds what a device and a gateway need to trust each other
// at enrollment without a CA and without trusting anything on first use:
// the gateway's own certificate (made at `ptun gateway init`), the pin of
// that certificate's public key, and the invite URL that carries both the
// pin and the one-time secret, and the HTTPS client that accepts only the
// pinned key.
//
// An invite URL looks like
//
//	https://198.18.0.1:8443/join#v1.Kx3f9QzA.7oQm2J…(22+ chars)&pin-sha256:AbC…=
//
// The part after '#' is a URL fragment, which a browser or HTTP client never
// sends: the secret reaches only the enrollment request's body, never a
// request line or a proxy's log. The pin is written as openconnect writes
// one (--servercert pin-sha256:BASE64), so the same string pins the
// gateway for both protocols.
package enroll

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// PinPrefix starts every pin string.
const PinPrefix = "pin-sha256:"

// Pin is the SHA-256 of a certificate's SubjectPublicKeyInfo.
type Pin [sha256.Size]byte

// PinOf returns the pin of cert's public key.
func PinOf(cert *x509.Certificate) Pin {
	return sha256.Sum256(cert.RawSubjectPublicKeyInfo)
}

// String writes the pin as "pin-sha256:BASE64".
func (p Pin) String() string { return PinPrefix + base64.StdEncoding.EncodeToString(p[:]) }

// ParsePin reads "pin-sha256:BASE64".
func ParsePin(s string) (Pin, error) {
	var p Pin
	b64, ok := strings.CutPrefix(s, PinPrefix)
	if !ok {
		return p, fmt.Errorf("enroll: %q is not a pin (want %sBASE64)", s, PinPrefix)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != len(p) {
		return p, fmt.Errorf("enroll: %q is not a SHA-256 pin in base64", s)
	}
	copy(p[:], b)
	return p, nil
}

// Matches reports, in constant time, whether cert's public key is the
// pinned one.
func (p Pin) Matches(cert *x509.Certificate) bool {
	got := PinOf(cert)
	return subtle.ConstantTimeCompare(got[:], p[:]) == 1
}

// Invite is a parsed invite URL.
type Invite struct {
	Base   *url.URL // the gateway's enrollment URL, without the fragment
	Prefix string   // the invite's public lookup prefix
	Secret string   // the one-time secret (at least 128 bits)
	Pin    Pin      // the gateway certificate's pin
}

// Lengths, in base64url characters without padding.
const (
	prefixLen    = 8  // 48 bits: a lookup key, not a secret
	minSecretLen = 22 // 132 bits
	maxSecretLen = 86 // 512 bits
)

// Token is what the device sends back: "v1.PREFIX.SECRET".
func (inv *Invite) Token() string { return "v1." + inv.Prefix + "." + inv.Secret }

// String writes the invite URL.
func (inv *Invite) String() string {
	u := *inv.Base
	u.Fragment, u.RawFragment = "", ""
	return u.String() + "#" + inv.Token() + "&" + inv.Pin.String()
}

// ParseToken reads "v1.PREFIX.SECRET" into prefix and secret.
func ParseToken(s string) (prefix, secret string, err error) {
	v, rest, ok := strings.Cut(s, ".")
	if !ok || v != "v1" {
		return "", "", errors.New("enroll: not an invite token (want v1.PREFIX.SECRET)")
	}
	prefix, secret, ok = strings.Cut(rest, ".")
	if !ok || len(prefix) != prefixLen || !base64url(prefix) {
		return "", "", errors.New("enroll: the invite's prefix is malformed")
	}
	if len(secret) < minSecretLen || len(secret) > maxSecretLen || !base64url(secret) {
		return "", "", errors.New("enroll: the invite's secret is malformed")
	}
	return prefix, secret, nil
}

func base64url(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// ParseInvite reads an invite URL. It accepts only https URLs with a host,
// a token and a pin; anything else is an error that says what is wrong.
func ParseInvite(s string) (*Invite, error) {
	if len(s) > 2048 {
		return nil, errors.New("enroll: the invite URL is too long")
	}
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("enroll: the invite is not a URL: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" || u.User != nil || u.Opaque != "" {
		return nil, errors.New("enroll: the invite must be an https://HOST[:PORT]/… URL, as `ptun gateway invite` prints it")
	}
	token, pin, ok := strings.Cut(u.Fragment, "&")
	if !ok {
		return nil, errors.New("enroll: the invite URL lacks its token and pin (the part after '#'): copy it whole")
	}
	inv := &Invite{}
	if inv.Prefix, inv.Secret, err = ParseToken(token); err != nil {
		return nil, err
	}
	if inv.Pin, err = ParsePin(pin); err != nil {
		return nil, err
	}
	u.Fragment, u.RawFragment = "", ""
	inv.Base = u
	return inv, nil
}
