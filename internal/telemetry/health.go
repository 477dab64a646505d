package telemetry

import (
	"encoding/json"
	"net/http"
	"sync"
)

// A Check is one condition of health, such as "the engine runs" or "the
// registry answered at the last sync". Run returns nil when it holds, else
// an error saying why not; it must answer at once (read a state, never
// wait on a network or an engine).
type Check struct {
	Name string
	Run  func() error
}

// Health is a set of checks, served as HealthPath: 200 when every check
// holds, 503 with the reasons otherwise, and 503 "starting" while it has
// no check yet. Its methods are safe for concurrent use. Any listener may
// serve it (the metrics listener does; the gateway's admin listener is
// meant to).
type Health struct {
	mu     sync.Mutex
	checks []Check
}

// Add adds c, or replaces the check of the same name.
func (h *Health) Add(c Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.checks {
		if h.checks[i].Name == c.Name {
			h.checks[i] = c
			return
		}
	}
	h.checks = append(h.checks, c)
}

// HealthReport is HealthPath's body.
type HealthReport struct {
	Status string `json:"status"`           // "ok" or "unavailable"
	Reason string `json:"reason,omitempty"` // the first failed check's name and error
	// Checks has each check's result: "ok", or its error.
	Checks map[string]string `json:"checks"`
}

// Report runs every check. ok is true when all of them hold.
func (h *Health) Report() (rep HealthReport, ok bool) {
	h.mu.Lock()
	checks := append([]Check(nil), h.checks...)
	h.mu.Unlock()
	rep = HealthReport{Status: "ok", Checks: map[string]string{}}
	if len(checks) == 0 {
		return HealthReport{Status: "unavailable", Reason: "starting: nothing is up yet", Checks: rep.Checks}, false
	}
	for _, c := range checks {
		err := c.Run()
		if err == nil {
			rep.Checks[c.Name] = "ok"
			continue
		}
		rep.Checks[c.Name] = err.Error()
		if rep.Reason == "" {
			rep.Status, rep.Reason = "unavailable", c.Name+": "+err.Error()
		}
	}
	return rep, rep.Reason == ""
}

// ServeHTTP implements http.Handler for GET and HEAD.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return
	}
	rep, ok := h.Report()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if r.Method == http.MethodGet {
		json.NewEncoder(w).Encode(rep)
	}
}
