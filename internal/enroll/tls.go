package enroll

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// certLifetime is how long a gateway's own certificate is valid: a pin is
// what makes it trusted, so its expiry only forces a new pin, and clients
// would all need new invites.
const certLifetime = 20 * 365 * 24 * time.Hour

// NewCertificate makes a self-signed ECDSA P-256 certificate for names
// (DNS names or IP addresses) and returns its PEM encoding and that of its
// private key.
func NewCertificate(names []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "ptun gateway"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(certLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// WriteCertificate makes a certificate for names and writes it to
// dir/cert.pem (0644) and its key to dir/key.pem (0600), refusing to
// overwrite either. It returns the certificate's pin.
func WriteCertificate(dir string, names []string) (Pin, error) {
	certPEM, keyPEM, err := NewCertificate(names)
	if err != nil {
		return Pin{}, err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"key.pem", keyPEM, 0o600}, {"cert.pem", certPEM, 0o644}} {
		fd, err := os.OpenFile(filepath.Join(dir, f.name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return Pin{}, fmt.Errorf("enroll: %w", err)
		}
		_, werr := fd.Write(f.data)
		if cerr := fd.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return Pin{}, fmt.Errorf("enroll: %w", werr)
		}
	}
	return PinOfPEM(certPEM)
}

// PinOfPEM returns the pin of the first certificate in PEM data.
func PinOfPEM(data []byte) (Pin, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return Pin{}, errors.New("enroll: no certificate in the PEM data")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return Pin{}, fmt.Errorf("enroll: %w", err)
	}
	return PinOf(cert), nil
}

// ErrPinMismatch is returned (wrapped) when the server's certificate is not
// the pinned one: the URL is stale, or someone is in the middle.
var ErrPinMismatch = errors.New("enroll: the server's certificate does not match the invite's pin")

// PinnedTLS is a client TLS configuration that trusts exactly the
// certificate whose public key pin names, whatever its issuer, names or
// dates: no CA and no first-use trust.
func PinnedTLS(pin Pin) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is not verified against CAs: the pin below is the
		// whole check, and it runs on every handshake.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: it sent none", ErrPinMismatch)
			}
			if !pin.Matches(cs.PeerCertificates[0]) {
				return fmt.Errorf("%w: it has %v, the invite %v", ErrPinMismatch, PinOf(cs.PeerCertificates[0]), pin)
			}
			return nil
		},
	}
}

// PinnedClient is an HTTP client over PinnedTLS with bounded timeouts and
// no proxy (the invite names the gateway itself).
func PinnedClient(pin Pin) *http.Client {
	return &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     PinnedTLS(pin),
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConns:        1,
			Proxy:               nil,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("enroll: the gateway answered with a redirect, which enrollment never follows")
		},
	}
}
