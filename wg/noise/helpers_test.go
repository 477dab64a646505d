package noise

import (
	"sync"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/wg/wire"
)

// fakeClock is a settable time source for the cookie code.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func mustLocal(t testing.TB) *Local {
	t.Helper()
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return NewLocal(k)
}

func mustPSK(t testing.TB) PresharedKey {
	t.Helper()
	k, err := GeneratePresharedKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func marshalInitiation(m *wire.Initiation) []byte {
	b := make([]byte, wire.InitiationSize)
	m.Marshal(b)
	return b
}

func marshalResponse(m *wire.Response) []byte {
	b := make([]byte, wire.ResponseSize)
	m.Marshal(b)
	return b
}
