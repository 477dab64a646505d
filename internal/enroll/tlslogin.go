package enroll

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ptun-vpn/ptun/wg/noise"
)

// An enrolled device that cannot reach its gateway over UDP logs in to the
// gateway's OpenConnect (TLS) listener with its WireGuard key rather than a
// password, so that `ptun up` can carry its tunnel over TLS with the same
// addresses and rules. The login goes in the protocol's user name and
// password fields, which every OpenConnect client and server already
// carry:
//
//	user:     "ptun-device:" + the device's public key (base64)
//	password: Unix seconds + "." + base64(HMAC-SHA256(X25519(device, gateway),
//	          "ptun tls login v1\n" + public key + "\n" + seconds))
//
// As with the status request, only the device and the gateway can compute
// the proof. It travels inside TLS to the gateway's engine, which hands it
// to the gateway's front; the gateway takes each proof once (see
// CheckDeviceLogin's caller), so one seen by an engine cannot be used
// again, and one older than MaxStatusSkew not at all. A registry user
// name cannot hold ':', so no password login is taken for a device login.

// DeviceLoginPrefix starts the user name of a device-key login.
const DeviceLoginPrefix = "ptun-device:"

// IsDeviceLogin reports whether user is a device-key login's user name.
func IsDeviceLogin(user string) bool { return strings.HasPrefix(user, DeviceLoginPrefix) }

// DeviceLogin is the user name and password with which the device holding
// dev logs in, at time now, to the gateway whose key is gw.
func DeviceLogin(dev noise.PrivateKey, gw noise.PublicKey, now time.Time) (user, password string, err error) {
	t := now.Unix()
	mac, err := newKeyProof(tlsLoginLabel, dev, gw, t)
	if err != nil {
		return "", "", err
	}
	return DeviceLoginPrefix + dev.PublicKey().Base64(), strconv.FormatInt(t, 10) + "." + base64.StdEncoding.EncodeToString(mac), nil
}

// ErrMalformedLogin is returned by ParseDeviceLogin for a device login
// that is not of the form above.
var ErrMalformedLogin = errors.New("enroll: malformed device login")

// DeviceLoginProof is a device login, parsed.
type DeviceLoginProof struct {
	PublicKey noise.PublicKey
	Time      int64  // Unix seconds
	MAC       []byte // 32 bytes
}

// ParseDeviceLogin parses a device login's user name and password (see
// above); it checks their form only, not the proof.
func ParseDeviceLogin(user, password string) (DeviceLoginProof, error) {
	key, ok := strings.CutPrefix(user, DeviceLoginPrefix)
	if !ok {
		return DeviceLoginProof{}, fmt.Errorf("%w: the user name does not start with %q", ErrMalformedLogin, DeviceLoginPrefix)
	}
	pub, err := noise.ParsePublicKeyBase64(key)
	if err != nil {
		return DeviceLoginProof{}, fmt.Errorf("%w: the key: %v", ErrMalformedLogin, err)
	}
	secs, mac, ok := strings.Cut(password, ".")
	if !ok || len(secs) == 0 || len(secs) > 19 || strings.Trim(secs, "0123456789") != "" {
		return DeviceLoginProof{}, fmt.Errorf("%w: the password is not SECONDS.PROOF", ErrMalformedLogin)
	}
	t, err := strconv.ParseInt(secs, 10, 64)
	if err != nil {
		return DeviceLoginProof{}, fmt.Errorf("%w: the time: %v", ErrMalformedLogin, err)
	}
	m, err := base64.StdEncoding.Strict().DecodeString(mac)
	if err != nil || len(m) != sha256.Size {
		return DeviceLoginProof{}, fmt.Errorf("%w: the proof is not the base64 of 32 bytes", ErrMalformedLogin)
	}
	return DeviceLoginProof{PublicKey: pub, Time: t, MAC: m}, nil
}

// Check verifies p for the gateway holding gw at time now: an error
// wrapping ErrBadProof if its time is more than MaxStatusSkew from now or
// its MAC does not hold.
func (p DeviceLoginProof) Check(gw noise.PrivateKey, now time.Time) error {
	return checkKeyProof(tlsLoginLabel, gw, p.PublicKey, p.Time, p.MAC, now)
}
