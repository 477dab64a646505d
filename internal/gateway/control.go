package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// Two services keep connected devices current:
//
//   - the control service, inside the tunnel: plain HTTP on the gateway's
//     address in the first pool, port ControlPort, on the tunnel interface
//     only. A device GETs its current offer there (profile.ControlPath)
//     every few seconds, which also tells it that the gateway still
//     carries its traffic. No credential is needed: WireGuard has
//     authenticated the packet and the gateway's source check has tied
//     its source address to the device's key.
//   - the status endpoint, on the HTTPS API (enroll.StatusPath): a device
//     that no gateway answers asks whether it is still enrolled, proving
//     it holds its key, so that a revoked device says so and stops.

// ControlPort is the control service's TCP port on the gateway's tunnel
// address.
const ControlPort = 51821

// Limits of the two services, per source address.
const (
	controlRate  = 4 // requests a second (a device asks every 2 s)
	controlBurst = 20
	statusRate   = 0.5
	statusBurst  = 10
)

// offerSource answers the offer of the device whose tunnel address is a.
type offerSource interface {
	offerByAddr(a netip.Addr) (*profile.Offer, error)
}

// errNoDevice: no active device has that address.
var errNoDevice = errors.New("no enrolled device has this address")

// controlHandler serves profile.ControlPath from src.
func controlHandler(src offerSource, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	limits := newSourceLimiter(controlRate, controlBurst, maxSources)
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+profile.ControlPath, func(w http.ResponseWriter, r *http.Request) {
		a := remoteAddr(r)
		if !limits.allow(a, time.Now()) {
			w.Header().Set("Retry-After", "2")
			fail(w, http.StatusTooManyRequests, "too many requests: ask every few seconds")
			return
		}
		offer, err := src.offerByAddr(a)
		switch {
		case errors.Is(err, errNoDevice):
			fail(w, http.StatusNotFound, err.Error())
			return
		case err != nil:
			logger.Warn("control: no offer", "source", a, "err", err)
			fail(w, http.StatusServiceUnavailable, "the gateway cannot say now; keep the profile you have")
			return
		}
		b, err := json.Marshal(offer)
		if err != nil {
			fail(w, http.StatusInternalServerError, "encoding the offer")
			return
		}
		sum := sha256.Sum256(b)
		etag := `"` + hex.EncodeToString(sum[:16]) + `"`
		w.Header().Set("ETag", etag)
		w.Header().Set("Cache-Control", "no-store")
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	return mux
}

// listenControl listens on a:ControlPort, for connections that arrive on
// interface ifname only.
func listenControl(ctx context.Context, a netip.Addr, ifname string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(ctx, "tcp", netip.AddrPortFrom(a, ControlPort).String())
}

// statusHandler serves enroll.StatusPath for the gateway holding key,
// looking devices up in reg.
func statusHandler(key noise.PrivateKey, reg registry.Devices, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	limits := newSourceLimiter(statusRate, statusBurst, maxSources)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			fail(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		src := remoteAddr(r)
		if !limits.allow(src, time.Now()) {
			w.Header().Set("Retry-After", "10")
			fail(w, http.StatusTooManyRequests, "too many status requests from your address: wait and try again")
			return
		}
		req, err := enroll.DecodeStatusRequest(http.MaxBytesReader(w, r.Body, 1<<10))
		if err != nil {
			fail(w, http.StatusBadRequest, err.Error())
			return
		}
		if err := enroll.CheckStatus(req, key, time.Now()); err != nil {
			logger.Warn("status refused", "source", src, "err", err)
			fail(w, http.StatusForbidden, "the request's proof does not hold (is this device's clock right?)")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		d, err := reg.DeviceByKey(ctx, registry.Key(req.PublicKey))
		switch {
		case errors.Is(err, registry.ErrNotFound):
			fail(w, http.StatusNotFound, "this key is not enrolled here")
			return
		case err != nil:
			fail(w, http.StatusServiceUnavailable, "the registry is unreachable: try again later")
			return
		}
		ans := enroll.StatusAnswer{State: enroll.StateActive}
		if d.Revoked() {
			ans = enroll.StatusAnswer{State: enroll.StateRevoked, At: d.RevokedAt}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(ans)
	})
}
