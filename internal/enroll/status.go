package enroll

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"golang.org/x/crypto/curve25519"

	"github.com/ptun-vpn/ptun/wg/noise"
)

// A device that no gateway answers asks a gateway's API whether it is
// still enrolled (StatusPath), so that a revoked device can say so and
// stop retrying. It proves it holds its private key without a signature
// scheme: the proof is an HMAC keyed by the X25519 secret of the device's
// key and the gateway's, which only those two can compute, over the
// device's public key and the time. The answer tells the device nothing it
// could not learn by trying, and a replayed request (within MaxStatusSkew)
// only asks the same question again.

// StatusPath is the device status endpoint, under a gateway's API URL.
const StatusPath = "/api/v1/device/status"

// MaxStatusSkew is how far a status request's time may be from the
// gateway's clock.
const MaxStatusSkew = 5 * time.Minute

// StatusRequest is a device's question.
type StatusRequest struct {
	PublicKey noise.PublicKey `json:"public_key"`
	Time      int64           `json:"time"`  // Unix seconds
	Proof     []byte          `json:"proof"` // StatusProof
}

// Device states a status answer gives.
const (
	StateActive  = "active"
	StateRevoked = "revoked"
)

// StatusAnswer is the gateway's answer.
type StatusAnswer struct {
	State string    `json:"state"` // StateActive or StateRevoked
	At    time.Time `json:"at,omitzero"`
}

// ErrBadProof is returned by CheckStatus for a request whose proof or time
// does not hold.
var ErrBadProof = errors.New("enroll: the status request's proof does not hold")

// Labels of the key proofs: a status request's, and a TLS login's
// (tlslogin.go), so that neither is taken for the other.
const (
	statusLabel   = "ptun device status v1\n"
	tlsLoginLabel = "ptun tls login v1\n"
)

// keyProof is the proof labelled label of key pub at time t, keyed by the
// X25519 secret ss of the device's key and the gateway's.
func keyProof(label string, ss []byte, pub noise.PublicKey, t int64) []byte {
	m := hmac.New(sha256.New, ss)
	m.Write([]byte(label))
	m.Write(pub[:])
	m.Write([]byte("\n" + strconv.FormatInt(t, 10)))
	return m.Sum(nil)
}

// newKeyProof is the proof labelled label of the device holding dev to
// the gateway whose key is gw, at time t.
func newKeyProof(label string, dev noise.PrivateKey, gw noise.PublicKey, t int64) ([]byte, error) {
	ss, err := curve25519.X25519(dev[:], gw[:])
	if err != nil {
		return nil, fmt.Errorf("enroll: the gateway's key: %w", err)
	}
	return keyProof(label, ss, dev.PublicKey(), t), nil
}

// checkKeyProof verifies mac, the proof labelled label of key pub at time
// t, for the gateway holding gw at time now: an error wrapping ErrBadProof
// if t is more than MaxStatusSkew from now or the proof does not hold.
func checkKeyProof(label string, gw noise.PrivateKey, pub noise.PublicKey, t int64, mac []byte, now time.Time) error {
	d := now.Sub(time.Unix(t, 0))
	if d > MaxStatusSkew || d < -MaxStatusSkew {
		return fmt.Errorf("%w: its time is %v from the gateway's clock", ErrBadProof, d.Round(time.Second))
	}
	ss, err := curve25519.X25519(gw[:], pub[:])
	if err != nil {
		return fmt.Errorf("%w: the key is of low order", ErrBadProof)
	}
	if !hmac.Equal(mac, keyProof(label, ss, pub, t)) {
		return ErrBadProof
	}
	return nil
}

// NewStatusRequest is the request of the device holding dev to the gateway
// whose key is gw, at time now.
func NewStatusRequest(dev noise.PrivateKey, gw noise.PublicKey, now time.Time) (*StatusRequest, error) {
	t := now.Unix()
	proof, err := newKeyProof(statusLabel, dev, gw, t)
	if err != nil {
		return nil, err
	}
	return &StatusRequest{PublicKey: dev.PublicKey(), Time: t, Proof: proof}, nil
}

// CheckStatus verifies r for the gateway holding gw at time now.
func CheckStatus(r *StatusRequest, gw noise.PrivateKey, now time.Time) error {
	return checkKeyProof(statusLabel, gw, r.PublicKey, r.Time, r.Proof, now)
}

// DecodeStatusRequest reads one request of at most 1 KiB.
func DecodeStatusRequest(rd io.Reader) (*StatusRequest, error) {
	dec := json.NewDecoder(io.LimitReader(rd, 1<<10))
	dec.DisallowUnknownFields()
	var r StatusRequest
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("malformed status request: %w", err)
	}
	if dec.More() {
		return nil, errors.New("malformed status request: more than one JSON value")
	}
	if r.PublicKey.IsZero() || len(r.Proof) != sha256.Size {
		return nil, errors.New("malformed status request: it needs a public key and a 32-byte proof")
	}
	return &r, nil
}
