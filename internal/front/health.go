package front

import (
	"errors"
	"fmt"

	"github.com/ptun-vpn/ptun/uapi"
)

// EngineRunning reports whether the engine behind h, the handler Run gave
// Config.OnUp, is running: nil, or an error saying why not (restarting
// after it died, shutting down). It never waits and never calls the
// engine, so a health check may call it as often as it likes.
func EngineRunning(h uapi.Handler) error {
	switch h := h.(type) {
	case *supervisor:
		return h.engineRunning()
	case interface{ Done() <-chan struct{} }: // ipc.Inproc: the wg.Device
		select {
		case <-h.Done():
			return errors.New("the WireGuard device stopped")
		default:
			return nil
		}
	}
	return nil
}

func (s *supervisor) engineRunning() error {
	if s.stopping() {
		return errors.New("the interface is shutting down")
	}
	s.mu.Lock()
	ep := s.cur
	s.mu.Unlock()
	if ep == nil {
		return fmt.Errorf("no engine is running: restarting one (%d restarts, %d failed starts so far)",
			s.restarts.Load(), s.startFailures.Load())
	}
	select {
	case <-ep.exited:
		return fmt.Errorf("engine %d exited: restarting it", ep.pid())
	default:
		return nil
	}
}
