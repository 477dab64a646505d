// Package client is ptun's remote-access client: `ptun join` (this file)
// enrolls the device and stores its profile.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// Join enrolls this device with the gateway an invite URL names and stores
// the profile as name in dir. The device's private key is made here and
// never sent; the gateway is trusted only if its certificate has the
// invite's pin. A profile of that name that exists already is an error,
// and nothing is written unless the enrollment succeeded.
func Join(ctx context.Context, invite, name, device, dir string) (*profile.Profile, error) {
	if err := profile.CheckName(name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if err := profile.CheckName(device); err != nil {
		return nil, fmt.Errorf("--device: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, name+".json")); err == nil {
		return nil, fmt.Errorf("a profile %q exists already in %s: choose another --name, or remove it", name, dir)
	}
	inv, err := enroll.ParseInvite(invite)
	if err != nil {
		return nil, err
	}
	priv, err := noise.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(gateway.EnrollRequest{Token: inv.Token(), PublicKey: priv.PublicKey(), Device: device})
	if err != nil {
		return nil, err
	}
	endpoint := url.URL{Scheme: "https", Host: inv.Base.Host, Path: gateway.EnrollPath}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := enroll.PinnedClient(inv.Pin).Do(req)
	if err != nil {
		if errors.Is(err, enroll.ErrPinMismatch) {
			return nil, fmt.Errorf("the gateway at %s is not the one that made the invite (its certificate's pin differs): ask for a new invite, and check that nobody is in the middle: %w", inv.Base.Host, err)
		}
		return nil, fmt.Errorf("reaching the gateway at %s: %w", inv.Base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg := gateway.ErrorMessage(resp.Body)
		if msg == "" {
			msg = resp.Status
		}
		return nil, fmt.Errorf("the gateway refused the enrollment: %s", msg)
	}
	offer, err := profile.DecodeOffer(resp.Body)
	if err != nil {
		return nil, err
	}
	p := &profile.Profile{Name: name, Offer: *offer, PrivateKey: priv.Base64(), Pin: inv.Pin.String(), EnrolledAt: time.Now().UTC()}
	if err := profile.Save(dir, p); err != nil {
		return nil, err
	}
	return p, nil
}
