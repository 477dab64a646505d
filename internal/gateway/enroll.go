// Package gateway is ptun's gateway control plane: the HTTPS enrollment API
// that turns an invite into a device and its profile (this file), and,
// built on the registry, what keeps the gateway's engine in step with it.
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/profile"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// EnrollPath is the enrollment endpoint, under the gateway's API URL.
const EnrollPath = "/api/v1/enroll"

// EnrollRequest is what a device sends: the invite's token, its public key
// (the private key never leaves the device) and the name it wants.
type EnrollRequest struct {
	Token     string          `json:"token"`
	PublicKey noise.PublicKey `json:"public_key"`
	Device    string          `json:"device"`
}

// Enrollment is one checked request for an Enroller.
type Enrollment struct {
	Prefix, Secret string
	PublicKey      noise.PublicKey
	Device         string
	Source         netip.Addr // who asked, for the audit log
}

// Enroller turns a valid invite into a device: it checks the secret and, all
// or nothing, uses the invite once, creates the device with its addresses
// and returns the offer.
type Enroller interface {
	Enroll(ctx context.Context, e Enrollment) (*profile.Offer, error)
}

// Errors an Enroller returns (wrapped) for the answer's status.
var (
	// ErrInvalidInvite: unknown, forged, expired or used up. The answer
	// does not say which, so that guessing learns nothing.
	ErrInvalidInvite = errors.New("the invite is not valid (unknown, expired or used up): ask for a new one")
	// ErrConflict: the key or the device name is enrolled already.
	ErrConflict = errors.New("already enrolled")
	// ErrBadRequest: the request cannot be served as it is (a device
	// name or key the registry refuses).
	ErrBadRequest = errors.New("the enrollment request is not valid")
	// ErrUnavailable: the gateway cannot enroll now (a pool is exhausted,
	// the registry is unreachable); it says why.
	ErrUnavailable = errors.New("enrollment is unavailable")
)

// Limits of the enrollment API.
const (
	maxEnrollBody  = 4 << 10
	enrollRate     = 0.2 // requests a second per source address
	enrollBurst    = 10
	maxSources     = 4096 // sources whose rate is tracked
	enrollDeadline = 10 * time.Second
)

// EnrollHandler serves EnrollPath with e. logger (nil: none) hears of every
// attempt and its outcome.
func EnrollHandler(e Enroller, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &enrollHandler{e: e, log: logger, limits: newSourceLimiter(enrollRate, enrollBurst, maxSources)}
	mux := http.NewServeMux()
	mux.Handle("POST "+EnrollPath, h)
	mux.HandleFunc(EnrollPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "POST")
		fail(w, http.StatusMethodNotAllowed, "use POST")
	})
	return mux
}

type enrollHandler struct {
	e      Enroller
	log    *slog.Logger
	limits *sourceLimiter
}

func (h *enrollHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	src := remoteAddr(r)
	if !h.limits.allow(src, time.Now()) {
		h.log.Warn("enrollment refused: rate limit", "source", src)
		w.Header().Set("Retry-After", "10")
		fail(w, http.StatusTooManyRequests, "too many enrollment attempts from your address: wait and try again")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		fail(w, http.StatusUnsupportedMediaType, "send application/json")
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxEnrollBody))
	dec.DisallowUnknownFields()
	var req EnrollRequest
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			fail(w, http.StatusRequestEntityTooLarge, "request body over 4 KiB")
			return
		}
		fail(w, http.StatusBadRequest, "malformed request: "+err.Error())
		return
	}
	if dec.More() {
		fail(w, http.StatusBadRequest, "malformed request: more than one JSON value")
		return
	}
	prefix, secret, err := enroll.ParseToken(req.Token)
	if err != nil {
		h.log.Warn("enrollment refused: malformed token", "source", src)
		fail(w, http.StatusForbidden, ErrInvalidInvite.Error())
		return
	}
	if req.PublicKey.IsZero() || req.PublicKey.IsLowOrder() {
		fail(w, http.StatusBadRequest, "the public key is not usable")
		return
	}
	if err := profile.CheckName(req.Device); err != nil {
		fail(w, http.StatusBadRequest, "device name: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), enrollDeadline)
	defer cancel()
	offer, err := h.e.Enroll(ctx, Enrollment{Prefix: prefix, Secret: secret, PublicKey: req.PublicKey, Device: req.Device, Source: src})
	if err == nil {
		err = offer.Check() // never hand out what a device would refuse
	}
	if err != nil {
		status := http.StatusInternalServerError
		msg := "enrollment failed on the gateway; its log says why"
		switch {
		case errors.Is(err, ErrInvalidInvite):
			status, msg = http.StatusForbidden, ErrInvalidInvite.Error()
		case errors.Is(err, ErrConflict):
			status, msg = http.StatusConflict, err.Error()
		case errors.Is(err, ErrBadRequest):
			status, msg = http.StatusBadRequest, err.Error()
		case errors.Is(err, ErrUnavailable):
			status, msg = http.StatusServiceUnavailable, err.Error()
		}
		h.log.Warn("enrollment refused", "source", src, "prefix", prefix, "device", req.Device, "err", logDetail(err))
		fail(w, status, msg)
		return
	}
	h.log.Info("device enrolled", "source", src, "prefix", prefix, "user", offer.User, "device", offer.Device)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(offer)
}

// apiError is every error answer's body.
type apiError struct {
	Error string `json:"error"`
}

func fail(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(apiError{Error: msg})
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		a, _ := netip.ParseAddr(host)
		return a.Unmap()
	}
	return ap.Addr().Unmap()
}

// NewServer is an HTTPS server for handler with the timeouts and limits an
// Internet-facing API needs (a slow client is cut off).
func NewServer(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          nil,
	}
}

// sourceLimiter is a token bucket per source address, for at most max
// sources: when full, the stalest entries go.
type sourceLimiter = keyLimiter[netip.Addr]

// keyLimiter is a token bucket per key (a source address, an admin's
// name), for at most max keys: when full, the stalest entries go.
type keyLimiter[K comparable] struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	max     int
	buckets map[K]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newSourceLimiter(rate, burst float64, max int) *sourceLimiter {
	return newKeyLimiter[netip.Addr](rate, burst, max)
}

func newKeyLimiter[K comparable](rate, burst float64, max int) *keyLimiter[K] {
	return &keyLimiter[K]{rate: rate, burst: burst, max: max, buckets: map[K]*bucket{}}
}

func (l *keyLimiter[K]) allow(src K, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.evict(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[src] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// evict drops the buckets that have refilled (they hold no state worth
// keeping), then, if that was not enough, arbitrary ones down to half.
func (l *keyLimiter[K]) evict(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, a)
		}
	}
	for a := range l.buckets {
		if len(l.buckets) < l.max/2 {
			break
		}
		delete(l.buckets, a)
	}
}

// ErrorMessage reads an error answer's message (empty if there is none),
// for clients.
func ErrorMessage(body io.Reader) string {
	var e apiError
	if err := json.NewDecoder(io.LimitReader(body, 4<<10)).Decode(&e); err != nil || e.Error == "" {
		return ""
	}
	return e.Error
}
