package enroll

import (
	"crypto"
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
	"strings"
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
	if err := WriteKeyPair(dir, certPEM, keyPEM); err != nil {
		return Pin{}, err
	}
	return PinOfPEM(certPEM)
}

// WriteKeyPair writes certPEM to dir/cert.pem (0644) and keyPEM to
// dir/key.pem (0600), refusing to overwrite either. On failure it removes
// the one it wrote, and never a file that was there before.
func WriteKeyPair(dir string, certPEM, keyPEM []byte) (err error) {
	var written []string
	defer func() {
		if err != nil {
			for _, f := range written {
				os.Remove(f)
			}
		}
	}()
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"key.pem", keyPEM, 0o600}, {"cert.pem", certPEM, 0o644}} {
		path := filepath.Join(dir, f.name)
		fd, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return fmt.Errorf("enroll: %w", err)
		}
		written = append(written, path)
		_, werr := fd.Write(f.data)
		if cerr := fd.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("enroll: %w", werr)
		}
	}
	return nil
}

// PinOfPEM returns the pin of the first certificate in PEM data.
func PinOfPEM(data []byte) (Pin, error) {
	cert, err := ParseCertificatePEM(data)
	if err != nil {
		return Pin{}, err
	}
	return PinOf(cert), nil
}

// ParseCertificatePEM parses the first PEM block of data, which must be a
// certificate: the leaf of a chain, whose intermediates may follow it.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("enroll: no certificate in the PEM data (its first block must be the CERTIFICATE)")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	return cert, nil
}

// ParsePrivateKeyPEM parses the first private key in PEM data: PKCS #8,
// PKCS #1 (RSA) or SEC 1 (EC), unencrypted, as crypto/tls loads them.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("enroll: no private key in the PEM data (want an unencrypted PKCS #8, RSA or EC PRIVATE KEY)")
		}
		if block.Type != "PRIVATE KEY" && !strings.HasSuffix(block.Type, " PRIVATE KEY") {
			continue
		}
		if _, encrypted := block.Headers["DEK-Info"]; encrypted || block.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, errors.New("enroll: the private key is encrypted: give it unencrypted (openssl pkey -in KEY -out KEY.pem)")
		}
		var key any
		var err error
		switch block.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("enroll: the private key does not parse: %w", err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("enroll: a %T private key cannot sign TLS handshakes", key)
		}
		return signer, nil
	}
}

// KeyMatches reports whether key is the private half of cert's public key.
func KeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
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
