package front

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/ctl"
	"github.com/ptun-vpn/ptun/internal/engine"
	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/transport/udp"
	"github.com/ptun-vpn/ptun/uapi"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// maxSocketBuffer bounds the socket buffers an engine may ask for.
const maxSocketBuffer = 64 << 20

// The UAPI handler in split mode: requests go to the current engine; set
// requests also update the configuration a new engine would be given.

// Get implements uapi.Handler.
func (s *supervisor) Get() (*wgcfg.DeviceState, error) {
	rep, err := s.call(&ctl.Msg{Op: engine.OpGet})
	if err != nil {
		return nil, err
	}
	st, err := uapi.ParseGet(bufio.NewReader(strings.NewReader(rep.Text + "errno=0\n\n")))
	if err != nil {
		return nil, &wgcfg.Error{Errno: syscall.EIO, Err: fmt.Errorf("front: the engine's answer: %w", err)}
	}
	return st, nil
}

// Set implements uapi.Handler. The engine applies cfg all or nothing; once
// it has, the front takes a new snapshot of the whole configuration.
func (s *supervisor) Set(cfg *wgcfg.DeviceConfig) error {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	var b strings.Builder
	if err := uapi.WriteSet(&b, cfg); err != nil {
		return err
	}
	s.mu.Lock()
	s.pendingMark, s.pendingPort = s.mark, s.port
	if cfg.FwMark != nil {
		s.pendingMark = *cfg.FwMark
	}
	if cfg.ListenPort != nil {
		s.pendingPort = *cfg.ListenPort
	}
	s.mu.Unlock()
	_, err := s.call(&ctl.Msg{Op: engine.OpSet, Text: b.String()})
	s.mu.Lock()
	if err == nil {
		s.mark, s.port = s.pendingMark, s.pendingPort
	}
	s.pendingMark, s.pendingPort = s.mark, s.port
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.refreshSnapshotLocked()
	return nil
}

// refreshSnapshot takes the engine's configuration as the one to replay.
func (s *supervisor) refreshSnapshot() {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	if s.snapshot.Load() != nil {
		s.refreshSnapshotLocked()
	}
}

func (s *supervisor) refreshSnapshotLocked() {
	st, err := s.Get()
	if err != nil {
		s.cfg.Verbosef("front: could not refresh the configuration snapshot: %v", err)
		return
	}
	s.snapshot.Store(ConfigFromState(st))
}

// ConfigFromState returns the set request that gives a fresh device the
// configuration st describes (statistics aside).
func ConfigFromState(st *wgcfg.DeviceState) *wgcfg.DeviceConfig {
	key, port, mark := st.PrivateKey, st.ListenPort, st.FwMark
	cfg := &wgcfg.DeviceConfig{PrivateKey: &key, ListenPort: &port, FwMark: &mark, ReplacePeers: true}
	for _, p := range st.Peers {
		psk, keepalive := p.PresharedKey, p.PersistentKeepalive
		pc := wgcfg.PeerConfig{
			PublicKey:           p.PublicKey,
			PresharedKey:        &psk,
			PersistentKeepalive: &keepalive,
			ReplaceAllowedIPs:   true,
			AddAllowedIPs:       slices.Clone(p.AllowedIPs),
		}
		if p.Endpoint.IsValid() {
			ep := p.Endpoint
			pc.Endpoint = &ep
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	return cfg
}

// Stats implements uapi.StatsHandler: the front's counters, its side of
// the flow, and the engine's.
func (s *supervisor) Stats() []metrics.Counter {
	out := []metrics.Counter{
		{Name: "engine_restarts", Value: s.restarts.Load()},
		{Name: "engine_start_failures", Value: s.startFailures.Load()},
		{Name: "engine_last_restart_us", Value: s.lastRestartUs.Load()},
	}
	s.mu.Lock()
	ep := s.cur
	s.mu.Unlock()
	if ep != nil && ep.link != nil {
		out = append(out, ep.link.Stats()...)
	}
	if s.cfg.Mode == "seqpacket" {
		// The front reads and writes the TUN itself.
		if r, ok := s.dev.(metrics.Reporter); ok {
			out = append(out, metrics.Prefixed("front_", r.Stats())...)
		}
	}
	rep, err := s.call(&ctl.Msg{Op: engine.OpStats})
	if err != nil {
		return append(out, metrics.Counter{Name: "engine_stats_unavailable", Value: 1})
	}
	cs, err := engine.Counters(rep)
	if err != nil {
		return append(out, metrics.Counter{Name: "engine_stats_unavailable", Value: 1})
	}
	return append(out, cs...)
}

// handleEngine answers an engine's requests: the privileged steps it may
// not take itself, within what the UAPI configured.
func (s *supervisor) handleEngine(req *ctl.Msg) *ctl.Msg {
	switch req.Op {
	case engine.OpLog:
		s.cfg.Logf("engine: %s", req.Text)
		return nil
	case engine.OpMTU:
		mtu, err := s.dev.MTU()
		if err != nil {
			return ctl.Fail(err)
		}
		body, _ := json.Marshal(mtu)
		return &ctl.Msg{Body: body}
	case engine.OpSocket:
		var r engine.SocketRequest
		if err := json.Unmarshal(req.Body, &r); err != nil {
			return ctl.Fail(fmt.Errorf("front: socket request: %w", syscall.EINVAL))
		}
		if err := s.allowed(r.Port, r.Mark); err != nil {
			return ctl.Fail(err)
		}
		fd, err := udp.OpenSocket(r.V6, r.Port, r.Mark, min(r.BufSize, maxSocketBuffer), s.cfg.Verbosef)
		if err != nil {
			return ctl.Fail(err)
		}
		return &ctl.Msg{Files: []*os.File{os.NewFile(uintptr(fd), "udp")}}
	case engine.OpSetMark:
		defer closeFiles(req.Files)
		var mark uint32
		if err := json.Unmarshal(req.Body, &mark); err != nil || len(req.Files) != 1 {
			return ctl.Fail(fmt.Errorf("front: setmark request: %w", syscall.EINVAL))
		}
		if err := s.allowed(0, mark); err != nil {
			return ctl.Fail(err)
		}
		if err := setMark(req.Files[0], mark); err != nil {
			return ctl.Fail(err)
		}
		return nil
	}
	closeFiles(req.Files)
	return ctl.Fail(fmt.Errorf("front: unknown request %q: %w", req.Op, syscall.EOPNOTSUPP))
}

// allowed checks an engine's request against the configuration: a port
// below 1024 only if it is the configured listen port, and no fwmark but
// the configured one (or none).
func (s *supervisor) allowed(port uint16, mark uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if port != 0 && port < 1024 && port != s.port && port != s.pendingPort {
		return fmt.Errorf("front: the engine asked for port %d, which is not the configured listen port: %w", port, syscall.EPERM)
	}
	if mark != 0 && mark != s.mark && mark != s.pendingMark {
		return fmt.Errorf("front: the engine asked for fwmark %#x, which is not the configured one: %w", mark, syscall.EPERM)
	}
	return nil
}

// setMark sets SO_MARK on f after checking that it is a UDP socket.
func setMark(f *os.File, mark uint32) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = sc.Control(func(fd uintptr) {
		typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil || typ != unix.SOCK_DGRAM {
			serr = fmt.Errorf("front: setmark on something that is not a datagram socket: %w", syscall.EINVAL)
			return
		}
		proto, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil || proto != unix.IPPROTO_UDP {
			serr = fmt.Errorf("front: setmark on a socket that is not UDP: %w", syscall.EINVAL)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	})
	if err != nil {
		return err
	}
	return serr
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
