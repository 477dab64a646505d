package client

import (
	"errors"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/profile"
)

func TestTLSGateway(t *testing.T) {
	p := &profile.Profile{Name: "work", Offer: profile.Offer{Gateways: []profile.Gateway{
		{Name: "gw-a"}, {Name: "gw-b", TLS: "https://198.18.0.2:443"}, {Name: "gw-c", TLS: "https://198.18.0.3:443"}}}}
	if g, err := tlsGateway(p, ""); err != nil || g.Name != "gw-b" {
		t.Errorf("the first with TLS: %+v %v, want gw-b", g, err)
	}
	if g, err := tlsGateway(p, "gw-c"); err != nil || g.Name != "gw-c" {
		t.Errorf("--gateway gw-c: %+v %v", g, err)
	}
	if _, err := tlsGateway(p, "gw-a"); !errors.Is(err, ErrNoTLS) || !strings.Contains(err.Error(), "gw-a") {
		t.Errorf("--gateway gw-a (no TLS): %v, want ErrNoTLS naming it", err)
	}
	if _, err := tlsGateway(p, "gw-x"); err == nil || !strings.Contains(err.Error(), "gw-a, gw-b, gw-c") {
		t.Errorf("--gateway gw-x: %v, want the gateways listed", err)
	}
	p.Offer.Gateways = p.Offer.Gateways[:1]
	if _, err := tlsGateway(p, ""); !errors.Is(err, ErrNoTLS) || !strings.Contains(err.Error(), "--tls") {
		t.Errorf("no gateway with TLS: %v, want ErrNoTLS saying how", err)
	}
}
