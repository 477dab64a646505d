// Package telemetry serves a process's Prometheus metrics and its health
// on one plain-HTTP listener (the --metrics ADDR of ptun IFNAME, ptun up
// and ptun gateway run): /metrics and /healthz.
//
// The metrics are read at scrape time from the counters ptun already
// keeps, through the same handler the interface's UAPI socket serves, so
// `ptun show` (which asks that socket) and /metrics report the same
// numbers and the data path does no bookkeeping of its own for them.
//
// The listener has no authentication and no TLS: bind it to loopback or a
// management network (docs/metrics.md).
package telemetry

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The paths the listener serves.
const (
	MetricsPath = "/metrics"
	HealthPath  = "/healthz"
)

// Server holds a process's collectors and health checks and serves them.
// Its methods are safe for concurrent use. A nil *Server is a valid one
// that is switched off: its methods do nothing, so a caller without
// --metrics needs no branch of its own.
type Server struct {
	reg    *prometheus.Registry
	health *Health
	srv    *http.Server
	ln     net.Listener
}

// New returns a Server with the Go runtime's and the process's collectors
// and no health check yet (so /healthz answers 503 "starting" until the
// caller adds one).
func New() *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Server{reg: reg, health: &Health{}}
}

// Handler serves MetricsPath and HealthPath.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+MetricsPath, promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{
		// A collector's error (an interface whose engine does not
		// answer) must not cost the other metrics: they are served,
		// and the error is in ptun_scrape_errors_total.
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             20 * time.Second,
	}))
	mux.Handle(HealthPath, s.health)
	return mux
}

// Listen opens the plain-HTTP listener on addr (checked by ParseAddr or
// CheckAddr; port 0, for tests, takes any) and serves Handler on it in the
// background until Close. Call it before the parts it reports on come up:
// a taken port then fails the start, with nothing made yet.
func (s *Server) Listen(addr netip.AddrPort) error {
	if s == nil {
		return nil
	}
	if !addr.IsValid() {
		return errors.New("telemetry: no address to listen on")
	}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return fmt.Errorf("the metrics listener (--metrics %v): %w", addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	go s.srv.Serve(ln)
	return nil
}

// Addr is the listener's address, or nil before Listen.
func (s *Server) Addr() net.Addr {
	if s == nil || s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Close stops the listener. It is safe to call on a Server that never
// listened.
func (s *Server) Close() error {
	if s == nil || s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// Register adds a collector (a gateway's control-plane counters, say).
func (s *Server) Register(c prometheus.Collector) error {
	if s == nil {
		return nil
	}
	return s.reg.Register(c)
}

// AddCheck adds (or replaces, by name) a condition of /healthz.
func (s *Server) AddCheck(c Check) {
	if s == nil {
		return
	}
	s.health.Add(c)
}

// Health is the Server's /healthz handler, for another listener (the
// gateway's admin page) to serve too.
func (s *Server) Health() *Health {
	if s == nil {
		return nil
	}
	return s.health
}

// AddInterface registers the metrics of interface in and adds the check
// "engine" (in.Engine) to /healthz.
func (s *Server) AddInterface(in Interface) error {
	if s == nil {
		return nil
	}
	if in.Device == nil {
		return errors.New("telemetry: interface " + in.Name + " has no device to read")
	}
	if err := s.reg.Register(newInterfaceCollector(in)); err != nil {
		return err
	}
	if in.Engine != nil {
		s.health.Add(Check{Name: "engine", Run: in.Engine})
	}
	return nil
}

// CheckAddr validates a --metrics address: one line saying what to give.
func CheckAddr(a netip.AddrPort) error {
	if !a.IsValid() || a.Port() == 0 {
		return fmt.Errorf("--metrics %v: give ADDRESS:PORT, such as 127.0.0.1:9587", a)
	}
	return nil
}

// ParseAddr parses a --metrics value; "" is the zero AddrPort (metrics
// off). A bad value is an error of one line.
func ParseAddr(v string) (netip.AddrPort, error) {
	if v == "" {
		return netip.AddrPort{}, nil
	}
	a, err := netip.ParseAddrPort(v)
	if err != nil || a.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("--metrics %q: give ADDRESS:PORT, such as 127.0.0.1:9587 (an address, not a name; port 1-65535)", v)
	}
	return a, nil
}
