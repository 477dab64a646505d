package wg

import (
	"fmt"
	"os"
	"time"

	"github.com/ptun-vpn/ptun/wg/replay"
)

// Protocol limits from the WireGuard whitepaper (§6). They are not options:
// changing them would break interoperability.
const (
	rekeyAfterMessages  = 1 << 60
	rejectAfterMessages = replay.RejectAfterMessages
	handshakeFloodGap   = 20 * time.Millisecond // least time between two initiations accepted from one peer
	maxTimerJitter      = 333 * time.Millisecond
)

// Timers are the protocol's time constants. The defaults are the
// whitepaper's; tests shorten them (never the message-count limits) to see a
// rekey or a retry within seconds. A peer with longer timers still
// interoperates: these only decide when this side acts.
type Timers struct {
	RekeyAfterTime   time.Duration // initiator starts a new handshake once its session is this old
	RejectAfterTime  time.Duration // a session this old is never used again
	RekeyAttemptTime time.Duration // give up retrying a handshake after this long
	RekeyTimeout     time.Duration // retry an unanswered handshake after this long
	KeepaliveTimeout time.Duration // answer received data with a keepalive if nothing was sent for this long
}

// DefaultTimers returns the whitepaper's values.
func DefaultTimers() Timers {
	return Timers{
		RekeyAfterTime:   120 * time.Second,
		RejectAfterTime:  180 * time.Second,
		RekeyAttemptTime: 90 * time.Second,
		RekeyTimeout:     5 * time.Second,
		KeepaliveTimeout: 10 * time.Second,
	}
}

// TimersFromEnv returns base with any of PTUN_REKEY_AFTER_TIME,
// PTUN_REJECT_AFTER_TIME, PTUN_REKEY_ATTEMPT_TIME, PTUN_REKEY_TIMEOUT and
// PTUN_KEEPALIVE_TIMEOUT (Go durations such as "3s") applied. They exist for
// tests, and may only shorten a timer: a value longer than the whitepaper's
// (DefaultTimers) would, for PTUN_REJECT_AFTER_TIME, keep keys in use past
// their lifetime and defeat forward secrecy, so it is an error naming the
// variable, as is an unparsable or non-positive value.
func TimersFromEnv(base Timers) (Timers, error) {
	protocol := DefaultTimers()
	for _, v := range []struct {
		name string
		dst  *time.Duration
		max  time.Duration
	}{
		{"PTUN_REKEY_AFTER_TIME", &base.RekeyAfterTime, protocol.RekeyAfterTime},
		{"PTUN_REJECT_AFTER_TIME", &base.RejectAfterTime, protocol.RejectAfterTime},
		{"PTUN_REKEY_ATTEMPT_TIME", &base.RekeyAttemptTime, protocol.RekeyAttemptTime},
		{"PTUN_REKEY_TIMEOUT", &base.RekeyTimeout, protocol.RekeyTimeout},
		{"PTUN_KEEPALIVE_TIMEOUT", &base.KeepaliveTimeout, protocol.KeepaliveTimeout},
	} {
		s := os.Getenv(v.name)
		if s == "" {
			continue
		}
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return base, fmt.Errorf("%s=%q: want a positive duration such as 3s", v.name, s)
		}
		if d > v.max {
			return base, fmt.Errorf("%s=%q: longer than the protocol's %v; the override may only shorten it", v.name, s, v.max)
		}
		*v.dst = d
	}
	if base.RejectAfterTime <= base.RekeyAfterTime {
		return base, fmt.Errorf("reject-after time (%v) must exceed rekey-after time (%v)", base.RejectAfterTime, base.RekeyAfterTime)
	}
	return base, nil
}
