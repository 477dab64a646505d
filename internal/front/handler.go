package front

import (
	"fmt"
	"syscall"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/memtrim"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// The UAPI handler in split mode. The front holds the configuration the
// UAPI set (config.go); set requests go to the current engine and, once it
// applied them, to the held configuration; get answers the held
// configuration with the engine's statistics.

// Get implements uapi.Handler.
func (s *supervisor) Get() (*wgcfg.DeviceState, error) {
	rep, err := s.call(&ctl.Msg{Op: ctl.OpGet})
	if err != nil {
		return nil, err
	}
	eng, err := ctl.State(rep)
	if err != nil {
		return nil, &wgcfg.Error{Errno: syscall.EIO, Err: fmt.Errorf("front: the engine's answer: %w", err)}
	}
	memtrim.Note(len(eng.Peers))
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	return s.held.state(eng, s.listenPort()), nil
}

// listenPort is the port the device listens on: the configured one, or the
// one bound when any port was asked for. Call with cfgMu held.
func (s *supervisor) listenPort() uint16 {
	if s.held.listenPort != 0 {
		return s.held.listenPort
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.boundPort
}

// Set implements uapi.Handler. The engine applies cfg all or nothing; once
// it has, the front applies it to the configuration it holds. If the engine
// was replaced meanwhile, the new one is given the whole configuration.
func (s *supervisor) Set(cfg *wgcfg.DeviceConfig) error {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	s.mu.Lock()
	s.pendingMark, s.pendingPort = s.mark, s.port
	if cfg.FwMark != nil {
		s.pendingMark = *cfg.FwMark
	}
	if cfg.ListenPort != nil && *cfg.ListenPort != s.port {
		s.pendingPort = *cfg.ListenPort
		if s.cur != nil {
			s.cur.sockets = 0 // a new port: a new socket budget
		}
	}
	s.mu.Unlock()
	ep, err := s.current()
	if err == nil {
		_, err = s.callOn(ep, &ctl.Msg{Op: ctl.OpSet, Body: ctl.Body(cfg)})
	}
	s.mu.Lock()
	if err == nil {
		s.mark, s.port = s.pendingMark, s.pendingPort
		if cfg.ListenPort != nil && *cfg.ListenPort != 0 {
			s.boundPort = 0
		}
	}
	s.pendingMark, s.pendingPort = s.mark, s.port
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.cfgMu.Lock()
	s.held.update(cfg)
	s.configured = true
	s.cfgMu.Unlock()
	if cur, _ := s.current(); cur != nil {
		s.updateSourceCheck(cur)
	}
	if now, _ := s.current(); now != nil && now != ep {
		if _, err := s.callOn(now, &ctl.Msg{Op: ctl.OpSet, Body: ctl.Body(s.replayConfig())}); err != nil {
			s.cfg.Logf("front: giving the new engine its configuration: %v", err)
		}
	}
	memtrim.Note(len(cfg.Peers))
	return nil
}

// pushMTU tells the current engine that the interface's MTU changed.
func (s *supervisor) pushMTU(mtu int) {
	s.mu.Lock()
	ep := s.cur
	s.mu.Unlock()
	if ep != nil {
		ep.conn.Send(&ctl.Msg{Op: ctl.OpMTU, Body: ctl.Body(int32(mtu))})
	}
}

// replayConfig is what a new engine is given: the held configuration.
func (s *supervisor) replayConfig() *wgcfg.DeviceConfig {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	return s.held.replay(s.listenPort())
}

// takeRoamed asks the engine for the endpoints that changed since its last
// answer and keeps the roamed endpoints of known peers, so a restart keeps
// them. Asking for changes only, the front and the engine handle the peers
// that roamed, not every peer every roamedEvery (at 1,000 idle peers, that
// was 1.5 MiB of garbage in each process every 10 s). It runs off the
// watch loop.
func (s *supervisor) takeRoamed(ep *engineProc) {
	rep, err := s.callOn(ep, &ctl.Msg{Op: ctl.OpEndpoints, Body: ctl.Body(ctl.EndpointsRequest{Since: ep.endpointsSince})})
	if err != nil {
		s.cfg.Verbosef("front: could not read the engine's endpoints: %v", err)
		return
	}
	ch, err := ctl.Endpoints(rep)
	if err != nil {
		s.cfg.Logf("front: the engine's endpoints answer: %v", err)
		return
	}
	st := &wgcfg.DeviceState{Peers: make([]wgcfg.PeerState, len(ch.Peers))}
	for i, p := range ch.Peers {
		st.Peers[i] = wgcfg.PeerState{PublicKey: p.PublicKey, Endpoint: p.Endpoint}
	}
	s.cfgMu.Lock()
	ignored := s.held.takeRoamed(st)
	s.cfgMu.Unlock()
	if ignored > 0 {
		s.roamedIgnored.Add(uint64(ignored))
	}
	ep.endpointsSince = ch.Gen
}

// Stats implements uapi.StatsHandler: the front's counters, its side of
// the flow, and the engine's.
func (s *supervisor) Stats() []metrics.Counter {
	out := []metrics.Counter{
		{Name: "engine_restarts", Value: s.restarts.Load()},
		{Name: "engine_start_failures", Value: s.startFailures.Load()},
		{Name: "engine_last_restart_us", Value: s.lastRestartUs.Load()},
		{Name: "engine_heartbeat_missed", Value: s.heartbeatMissed.Load()},
		{Name: "engine_sockets_granted", Value: s.socketsGranted.Load()},
		{Name: "engine_requests_refused", Value: s.grantsRefused.Load()},
		{Name: "engine_log_dropped", Value: s.logDroppedTotal.Load() + s.logDropped.Load()},
		{Name: "engine_endpoints_ignored", Value: s.roamedIgnored.Load()},
	}
	s.mu.Lock()
	ep := s.cur
	s.mu.Unlock()
	if ep != nil && ep.link != nil {
		out = append(out, ep.link.Stats()...)
	}
	if ep != nil {
		out = append(out, metrics.Counter{Name: "engine_ctl_refused", Value: ep.conn.Refused()})
	}
	if s.cfg.Mode == "seqpacket" {
		// The front reads and writes the TUN itself.
		if r, ok := s.dev.(metrics.Reporter); ok {
			out = append(out, metrics.Prefixed("front_", r.Stats())...)
		}
	}
	rep, err := s.call(&ctl.Msg{Op: ctl.OpStats})
	if err != nil {
		return append(out, metrics.Counter{Name: "engine_stats_unavailable", Value: 1})
	}
	cs, err := ctl.Counters(rep)
	if err != nil {
		return append(out, metrics.Counter{Name: "engine_stats_unavailable", Value: 1})
	}
	return append(out, validCounters(cs)...)
}

// maxEngineCounters bounds how many counters an engine may report.
const maxEngineCounters = 1024

// validCounters keeps the engine's counters whose names are
// lower_snake_case words of at most 64 bytes (so none can inject a line
// into a stats answer), at most maxEngineCounters of them.
func validCounters(cs []metrics.Counter) []metrics.Counter {
	out := cs[:0]
	for _, c := range cs {
		if len(out) == maxEngineCounters {
			break
		}
		if validCounterName(c.Name) {
			out = append(out, c)
		}
	}
	return out
}

func validCounterName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
