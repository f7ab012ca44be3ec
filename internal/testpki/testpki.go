// Package testpki makes throw-away certificate authorities and certificates
// for tests of TLS connections to brokers (and for scripts/brokers, which
// starts a secured Kafka): a CA, a server certificate for 127.0.0.1 and
// localhost, a client certificate, and a second CA that trusts none of them.
// Keys are ECDSA P-256; everything is written as PEM (keys as PKCS#8).
//
// It imports the standard library only and is never used by sluice itself.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is a set of PEM files in Dir.
type PKI struct {
	Dir string
	// CA is the trusted CA's certificate; OtherCA a CA that signed nothing
	// here (a "wrong CA" for tests).
	CA, OtherCA string
	// ServerCert and ServerKey: the broker's certificate (its chain: leaf
	// then CA) and key, for 127.0.0.1, ::1 and localhost.
	ServerCert, ServerKey string
	// ServerKeyStore is the key followed by the chain in one file (Kafka's
	// PEM key store).
	ServerKeyStore string
	// ClientCert and ClientKey: a client certificate signed by CA (CN
	// "sluice-client").
	ClientCert, ClientKey string
}

type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

// New writes a fresh PKI into dir (created if missing).
func New(dir string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &PKI{
		Dir: dir, CA: filepath.Join(dir, "ca.pem"), OtherCA: filepath.Join(dir, "other-ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ServerKeyStore: filepath.Join(dir, "server-keystore.pem"),
		ClientCert:     filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
	}
	ca, err := newCA("sluice test CA")
	if err != nil {
		return nil, err
	}
	other, err := newCA("sluice other CA")
	if err != nil {
		return nil, err
	}
	srv, srvKey, err := ca.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	cli, cliKey, err := ca.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "sluice-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	chain := append(append([]byte{}, srv...), ca.pem...)
	for _, f := range []struct {
		name string
		data []byte
	}{
		{p.CA, ca.pem}, {p.OtherCA, other.pem},
		{p.ServerCert, chain}, {p.ServerKey, srvKey},
		{p.ServerKeyStore, append(append([]byte{}, srvKey...), chain...)},
		{p.ClientCert, cli}, {p.ClientKey, cliKey},
	} {
		if err := os.WriteFile(f.name, f.data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func newCA(cn string) (*issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &issuer{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// sign issues tmpl (subject, names, usages) with a new key; it returns the
// certificate and the key as PEM.
func (ca *issuer) sign(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(10 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("testpki: %s: %w", tmpl.Subject.CommonName, err)
	}
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}
