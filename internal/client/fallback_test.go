package client

import (
	"testing"
	"time"
)

// TestFallbackFailing: a TLS path is left when the gateway refused its
// session or it has had none for tlsNoSession, and is then not taken
// again for tlsPause; one with a session is kept.
func TestFallbackFailing(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	var none *fallback
	if none.failing(now) || none.canEnter(now) || none.onTLS() {
		t.Fatal("no fallback: nothing to leave or take")
	}
	fb := &fallback{f: &ocFront{}, down: now}
	if !fb.canEnter(now) {
		t.Fatal("a fresh fallback may be taken")
	}
	if fb.failing(now.Add(tlsNoSession - time.Second)) {
		t.Error("left before tlsNoSession without a session")
	}
	if !fb.failing(now.Add(tlsNoSession)) {
		t.Error("kept after tlsNoSession without a session")
	}
	fb.down = time.Time{} // a session
	if fb.failing(now.Add(time.Hour)) {
		t.Error("a path with a session left")
	}
	fb.f.gaveUp = true
	if !fb.failing(now) {
		t.Error("kept after the gateway refused its session")
	}
	fb.notBefore = now.Add(tlsPause)
	if fb.canEnter(now.Add(tlsPause-time.Second)) || !fb.canEnter(now.Add(tlsPause)) {
		t.Error("tlsPause not kept")
	}
}
