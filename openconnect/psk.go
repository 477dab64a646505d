package openconnect

import (
	"crypto/tls"
	"fmt"
)

// ExportPSK derives the DTLS pre-shared key of PSK-NEGOTIATE from the TLS
// session that carried the CONNECT: the session's exporter with the label
// PSKLabel, no context, 32 bytes. Both sides compute it; it never crosses
// the wire. It needs TLS 1.3 or the extended master secret, which Go's
// exporter insists on.
func ExportPSK(cs tls.ConnectionState) ([]byte, error) {
	k, err := cs.ExportKeyingMaterial(PSKLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("openconnect: the DTLS key: %w", err)
	}
	return k, nil
}
