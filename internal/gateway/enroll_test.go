package gateway

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/profile"
)

// refuser refuses every enrollment and counts the calls.
type refuser struct{ calls int }

func (r *refuser) Enroll(context.Context, Enrollment) (*profile.Offer, error) {
	r.calls++
	return nil, ErrInvalidInvite
}

// FuzzEnrollRequest: no body makes the API fail on its side (5xx) or
// panic; only a well-formed request reaches the Enroller.
func FuzzEnrollRequest(f *testing.F) {
	f.Add([]byte(`{"token":"v1.Kx3f9QzA.7oQm2Jd_kL-9wXyZ0123456789ab","public_key":"hvq3tknQWDEsRqMw7L+6XYpGJNnSrwj5Xd3n1CU+k1g=","device":"laptop"}`))
	f.Add([]byte(`{"token":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		e := &refuser{}
		h := EnrollHandler(e, nil)
		r := httptest.NewRequest(http.MethodPost, EnrollPath, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 || w.Code < 400 {
			t.Fatalf("status %d for %q", w.Code, body)
		}
		if e.calls > 0 && w.Code != http.StatusForbidden {
			t.Fatalf("the Enroller refused, the answer was %d", w.Code)
		}
	})
}

// TestSourceLimiterBounded: the limiter tracks at most max sources, and a
// source that waited gets its burst back.
func TestSourceLimiterBounded(t *testing.T) {
	l := newSourceLimiter(1, 2, 100)
	now := time.Unix(1000, 0)
	for i := range 1000 {
		l.allow(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), now)
	}
	if n := len(l.buckets); n > 100 {
		t.Fatalf("%d sources tracked, over 100", n)
	}
	a := netip.MustParseAddr("198.19.0.1")
	if !l.allow(a, now) || !l.allow(a, now) || l.allow(a, now) {
		t.Fatal("burst of 2 not kept")
	}
	if !l.allow(a, now.Add(time.Second)) {
		t.Fatal("a token did not come back after a second")
	}
}
