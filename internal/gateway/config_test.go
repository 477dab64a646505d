package gateway

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
)

// initOptions are the settings of a small gateway.
func initOptions() InitOptions {
	return InitOptions{
		Config: Config{Name: "gw1", Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"), API: netip.MustParseAddrPort("198.18.0.1:8443")},
		Pools:  []netip.Prefix{netip.MustParsePrefix("100.80.0.0/16")},
	}
}

// testCert is a certificate made for a test, in PEM, with its key.
type testCert struct {
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
	key     crypto.Signer
}

// makeCert makes a certificate for key valid from notBefore to notAfter,
// signed by parent (self-signed if nil). keyPEM is in PKCS #8, or in the
// key's own format (RSA PRIVATE KEY, EC PRIVATE KEY) if legacy.
func makeCert(t *testing.T, key crypto.Signer, notBefore, notAfter time.Time, parent *testCert, legacy bool) *testCert {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "vpn.example"},
		DNSNames:     []string{"vpn.example"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         parent == nil, BasicConstraintsValid: true,
	}
	signer, issuer := key, tmpl
	if parent != nil {
		signer, issuer = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	var keyBlock *pem.Block
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if legacy {
			keyBlock = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
		}
	case *ecdsa.PrivateKey:
		if legacy {
			b, err := x509.MarshalECPrivateKey(k)
			if err != nil {
				t.Fatal(err)
			}
			keyBlock = &pem.Block{Type: "EC PRIVATE KEY", Bytes: b}
		}
	}
	if keyBlock == nil {
		b, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		keyBlock = &pem.Block{Type: "PRIVATE KEY", Bytes: b}
	}
	return &testCert{cert: cert, key: key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM: pem.EncodeToMemory(keyBlock)}
}

func ecKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestInitOperatorCertificate: init --cert --key copies the operator's
// certificate chain and key into the state folder (the key 0600), and the
// pin is the leaf certificate's, whatever signed it. Both an ECDSA key
// in SEC 1 behind an EC PARAMETERS block (as openssl writes it) and an
// RSA key in PKCS #1 are read.
func TestInitOperatorCertificate(t *testing.T) {
	now := time.Now()
	ca := makeCert(t, ecKey(t), now.Add(-time.Hour), now.Add(10*365*24*time.Hour), nil, false)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		leaf *testCert
	}{
		{"ecdsa", makeCert(t, ecKey(t), now.Add(-time.Hour), now.Add(90*24*time.Hour), ca, true)},
		{"rsa", makeCert(t, rsaKey, now.Add(-time.Hour), now.Add(90*24*time.Hour), ca, true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := t.TempDir()
			chain := append(append([]byte(nil), tc.leaf.certPEM...), ca.certPEM...) // fullchain.pem
			keyPEM := tc.leaf.keyPEM
			if tc.name == "ecdsa" {
				keyPEM = append([]byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"), keyPEM...)
			}
			o := initOptions()
			o.CertFile = writeFile(t, files, "fullchain.pem", chain)
			o.KeyFile = writeFile(t, files, "privkey.pem", keyPEM)
			dir := filepath.Join(t.TempDir(), "gw")
			pin, err := Init(context.Background(), dir, o)
			if err != nil {
				t.Fatal(err)
			}
			if want := enroll.PinOf(tc.leaf.cert); pin != want {
				t.Errorf("pin %v, want the leaf's %v", pin, want)
			}
			if pin == enroll.PinOf(ca.cert) {
				t.Errorf("the pin is the CA's")
			}
			if got, err := Pin(dir); err != nil || got != pin {
				t.Errorf("Pin(dir) = %v, %v; want %v (what invites carry)", got, err, pin)
			}
			for name, want := range map[string][]byte{"cert.pem": chain, "key.pem": keyPEM} {
				got, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s is not a copy of what was given (%v)", name, err)
				}
			}
			if fi, err := os.Stat(filepath.Join(dir, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("key.pem: %v, %v; want mode 0600", fi.Mode(), err)
			}
			// What Run loads: the chain, and the leaf first.
			kp, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
			if err != nil || len(kp.Certificate) != 2 || !bytes.Equal(kp.Certificate[0], tc.leaf.cert.Raw) {
				t.Errorf("LoadX509KeyPair: %d certificates, %v", len(kp.Certificate), err)
			}
		})
	}
}

// TestInitRefusesBadCertificates: --cert without --key or the reverse, a
// key that is not the certificate's, an expired certificate, one not valid
// yet, files that are not PEM or do not exist: each is a one-line error
// naming the flag, and Init writes nothing (the state folder is not even
// made).
func TestInitRefusesBadCertificates(t *testing.T) {
	now := time.Now()
	files := t.TempDir()
	good := makeCert(t, ecKey(t), now.Add(-time.Hour), now.Add(24*time.Hour), nil, false)
	other := makeCert(t, ecKey(t), now.Add(-time.Hour), now.Add(24*time.Hour), nil, false)
	expired := makeCert(t, ecKey(t), now.Add(-48*time.Hour), now.Add(-24*time.Hour), nil, false)
	future := makeCert(t, ecKey(t), now.Add(24*time.Hour), now.Add(48*time.Hour), nil, false)
	certFile := writeFile(t, files, "cert.pem", good.certPEM)
	keyFile := writeFile(t, files, "key.pem", good.keyPEM)
	encrypted := writeFile(t, files, "encrypted.pem", []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"))
	for _, tc := range []struct {
		name, cert, key string
		want            []string // in the error
	}{
		{"only --cert", certFile, "", []string{"--cert and --key go together"}},
		{"only --key", "", keyFile, []string{"--cert and --key go together"}},
		{"another certificate's key", certFile, writeFile(t, files, "other.key", other.keyPEM), []string{"--key", "other.key", "is not the private key", "cert.pem"}},
		{"expired", writeFile(t, files, "expired.pem", expired.certPEM), writeFile(t, files, "expired.key", expired.keyPEM), []string{"--cert", "expired.pem", "expired at " + expired.cert.NotAfter.UTC().Format(time.RFC3339)}},
		{"not valid yet", writeFile(t, files, "future.pem", future.certPEM), writeFile(t, files, "future.key", future.keyPEM), []string{"--cert", "future.pem", "not valid yet"}},
		{"the files swapped", keyFile, certFile, []string{"--cert", "no certificate"}},
		{"a certificate as the key", certFile, certFile, []string{"--key", "no private key"}},
		{"an encrypted key", certFile, encrypted, []string{"--key", "encrypted"}},
		{"a missing certificate", filepath.Join(files, "missing.pem"), keyFile, []string{"--cert", "missing.pem", "no such file"}},
		{"a missing key", certFile, filepath.Join(files, "missing.key"), []string{"--key", "missing.key", "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := initOptions()
			o.CertFile, o.KeyFile = tc.cert, tc.key
			dir := filepath.Join(t.TempDir(), "gw")
			_, err := Init(context.Background(), dir, o)
			if err == nil {
				t.Fatal("Init succeeded")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("the error is not one line: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("the error %q does not say %q", msg, w)
				}
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("Init wrote %s (%v)", dir, err)
			}
		})
	}
}

// TestInitRemovesWhatItMade: an init that fails after it started writing
// (here a cert.pem that was in the folder already) removes every file it
// made and leaves the one that was there.
func TestInitRemovesWhatItMade(t *testing.T) {
	for _, operator := range []bool{false, true} {
		dir := t.TempDir()
		stray := writeFile(t, dir, "cert.pem", []byte("not ours\n"))
		o := initOptions()
		if operator {
			c := makeCert(t, ecKey(t), time.Now().Add(-time.Hour), time.Now().Add(time.Hour), nil, false)
			files := t.TempDir()
			o.CertFile, o.KeyFile = writeFile(t, files, "c.pem", c.certPEM), writeFile(t, files, "k.pem", c.keyPEM)
		}
		if _, err := Init(context.Background(), dir, o); err == nil {
			t.Fatalf("operator certificate %v: Init over an existing cert.pem succeeded", operator)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 || ents[0].Name() != "cert.pem" {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("operator certificate %v: after a failed Init the folder holds %v, want only the cert.pem that was there", operator, names)
		}
		if b, _ := os.ReadFile(stray); string(b) != "not ours\n" {
			t.Errorf("operator certificate %v: the existing cert.pem was changed: %q", operator, b)
		}
	}
}
