package wg

import (
	"strings"
	"testing"
	"time"
)

// TestTimersFromEnvOnlyShortens: an override may shorten a protocol timer;
// one longer than the whitepaper's value (which would, for the reject time,
// keep keys past their lifetime) is an error that names the variable.
func TestTimersFromEnvOnlyShortens(t *testing.T) {
	names := []string{"PTUN_REKEY_AFTER_TIME", "PTUN_REJECT_AFTER_TIME", "PTUN_REKEY_ATTEMPT_TIME",
		"PTUN_REKEY_TIMEOUT", "PTUN_KEEPALIVE_TIMEOUT"}
	for _, n := range names {
		t.Setenv(n, "")
	}
	def := DefaultTimers()

	t.Setenv("PTUN_REJECT_AFTER_TIME", "3s")
	t.Setenv("PTUN_REKEY_AFTER_TIME", "2s")
	got, err := TimersFromEnv(def)
	if err != nil || got.RejectAfterTime != 3*time.Second || got.RekeyAfterTime != 2*time.Second {
		t.Fatalf("shortening: %+v, %v", got, err)
	}
	// Exactly the protocol's value is allowed.
	t.Setenv("PTUN_REJECT_AFTER_TIME", def.RejectAfterTime.String())
	t.Setenv("PTUN_REKEY_AFTER_TIME", "")
	if _, err := TimersFromEnv(def); err != nil {
		t.Fatalf("the protocol's own value refused: %v", err)
	}
	t.Setenv("PTUN_REJECT_AFTER_TIME", "")

	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			t.Setenv(n, "1000h")
			_, err := TimersFromEnv(def)
			if err == nil || !strings.Contains(err.Error(), n) {
				t.Fatalf("%s=1000h: err %v, want an error naming %s", n, err, n)
			}
			t.Setenv(n, "-1s")
			if _, err := TimersFromEnv(def); err == nil || !strings.Contains(err.Error(), n) {
				t.Fatalf("%s=-1s: err %v, want an error naming %s", n, err, n)
			}
		})
	}
}
