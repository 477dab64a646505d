package front

import (
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/transport/transporttest"
	"github.com/ptun-vpn/ptun/tun/tuntest"
	"github.com/ptun-vpn/ptun/wg"
)

// TestEngineRunning: EngineRunning is nil while an engine runs, says so
// while none does (the engine died and no new one would start), nil again
// once one took over, and an error once the front shuts down.
func TestEngineRunning(t *testing.T) {
	var failStarts atomic.Bool
	ft := startFrontWith(t, "quiet", func(cfg *Config) {
		start := cfg.EngineCommand
		cfg.EngineCommand = func() (*exec.Cmd, error) {
			if failStarts.Load() {
				return nil, syscall.EAGAIN
			}
			return start()
		}
	})
	if err := EngineRunning(ft.s); err != nil {
		t.Fatalf("with an engine up: %v", err)
	}
	failStarts.Store(true)
	syscall.Kill(ft.enginePID(), syscall.SIGKILL)
	ft.waitFor("EngineRunning to report the dead engine", func() bool {
		err := EngineRunning(ft.s)
		return err != nil && (strings.Contains(err.Error(), "no engine is running") || strings.Contains(err.Error(), "exited"))
	})
	ft.waitFor("a failed start", func() bool { return ft.s.startFailures.Load() >= 1 })
	if err := EngineRunning(ft.s); err == nil || !strings.Contains(err.Error(), "no engine is running") {
		t.Errorf("while no engine starts: %v", err)
	}
	failStarts.Store(false)
	ft.waitFor("a new engine", func() bool { return EngineRunning(ft.s) == nil })
	ft.stop()
	if err := EngineRunning(ft.s); err == nil || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("after shutdown: %v", err)
	}
}

// TestEngineRunningInproc: with the engine in the front's process the
// handler is the wg.Device, running until it is closed.
func TestEngineRunningInproc(t *testing.T) {
	tr, _ := transporttest.NewPair()
	d, err := wg.New(tuntest.NewChannelTUN(1420), tr, wg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := EngineRunning(d); err != nil {
		t.Errorf("running: %v", err)
	}
	d.Close()
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the device did not stop")
	}
	if err := EngineRunning(d); err == nil {
		t.Error("a closed device is reported running")
	}
}
