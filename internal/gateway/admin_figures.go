package gateway

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"time"

	"github.com/ptun-vpn/ptun/internal/registry"
)

// The admin API's figures for the page's charts: GET /overview and GET
// /history, answered from the running gateway's History (history.go).

// GatewayJSON is another gateway of the registry, with what the registry
// knows of it: it keeps no liveness of gateways.
type GatewayJSON struct {
	Name      string `json:"name"`
	Endpoint  string `json:"endpoint"`
	APIURL    string `json:"api_url"` // "": none known
	PublicKey string `json:"public_key"`
	Pin       string `json:"pin"` // its API certificate's pin-sha256:…; "": none known
	// TLSURL is its OpenConnect listener, https://HOST:PORT (absent:
	// none). Its certificate is the API's.
	TLSURL    string    `json:"tls_url,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// OverviewReply is GET /overview's answer. The figures are the History's
// latest read (at most an interval old); Live is false when that read
// failed or there was none, and the figures are then those of SampledAt
// (absent: none ever read, all zero).
type OverviewReply struct {
	Gateway        string            `json:"gateway"`
	Endpoint       string            `json:"endpoint,omitempty"` // this gateway's, as the registry has it
	APIURL         string            `json:"api_url,omitempty"`
	TLSURL         string            `json:"tls_url,omitempty"` // this gateway's OpenConnect listener, as the registry has it
	OtherGateways  []GatewayJSON     `json:"other_gateways"`
	DevicesTotal   int               `json:"devices_total"`
	DevicesOnline  int               `json:"devices_online"`
	RxBytes        uint64            `json:"rx_bytes"`
	TxBytes        uint64            `json:"tx_bytes"`
	Drops          map[string]uint64 `json:"drops"`
	EngineRestarts uint64            `json:"engine_restarts"`
	Live           bool              `json:"live"`
	SampledAt      time.Time         `json:"sampled_at,omitzero"`
}

func (a *adminAPI) overview(w http.ResponseWriter, r *http.Request, _ caller) {
	ctx := r.Context()
	gws, err := a.o.Registry.ListGateways(ctx)
	if err != nil {
		a.registryFail(w, err)
		return
	}
	out := OverviewReply{Gateway: a.o.Gateway, OtherGateways: []GatewayJSON{}, Drops: map[string]uint64{}}
	for _, g := range gws {
		if g.Name == a.o.Gateway {
			out.Endpoint, out.APIURL, out.TLSURL = g.Endpoint, g.API, g.TLS
			continue
		}
		out.OtherGateways = append(out.OtherGateways, GatewayJSON{Name: g.Name, Endpoint: g.Endpoint, APIURL: g.API,
			PublicKey: base64.StdEncoding.EncodeToString(g.PublicKey[:]), Pin: g.Pin, TLSURL: g.TLS, CreatedAt: g.CreatedAt})
	}
	var f Figures
	if a.o.History != nil {
		f = a.o.History.Figures()
	}
	if !f.At.IsZero() {
		out.DevicesOnline, out.RxBytes, out.TxBytes, out.EngineRestarts = f.Online, f.RxBytes, f.TxBytes, f.EngineRestarts
		out.Drops, out.SampledAt = f.Drops, f.At
	}
	out.Live = f.Live
	if f.Live {
		out.DevicesTotal = f.Devices
	} else {
		// Not read from the interface: the registry's count.
		devs, err := a.o.Registry.ListDevices(ctx, registry.DeviceFilter{})
		if err != nil {
			a.registryFail(w, err)
			return
		}
		out.DevicesTotal = len(devs)
	}
	reply(w, http.StatusOK, out)
}

// TotalPointJSON is a point of the gateway's history: bytes a second,
// online devices, and drops a second by reason (only those not zero).
type TotalPointJSON struct {
	T      time.Time          `json:"t"`
	RxBps  float64            `json:"rx_bps"`
	TxBps  float64            `json:"tx_bps"`
	Online int                `json:"online"`
	Drops  map[string]float64 `json:"drops"`
}

// DevicePointJSON is a point of a device's history, in bytes a second.
type DevicePointJSON struct {
	T     time.Time `json:"t"`
	RxBps float64   `json:"rx_bps"`
	TxBps float64   `json:"tx_bps"`
}

// HistoryReply is GET /history's answer: Points oldest first, each the
// rates over the IntervalS seconds before its T (a TotalPointJSON, or a
// DevicePointJSON with ?device=ID).
type HistoryReply[P any] struct {
	IntervalS float64 `json:"interval_s"`
	Points    []P     `json:"points"`
}

// history answers the gateway's points, or with ?device=ID that device's
// (an empty list for a device without samples here).
func (a *adminAPI) history(w http.ResponseWriter, r *http.Request, _ caller) {
	interval := DefaultHistoryInterval
	if a.o.History != nil {
		interval = a.o.History.Interval()
	}
	if s, ok := r.URL.Query()["device"]; ok {
		id, err := strconv.ParseInt(s[0], 10, 64)
		if err != nil || id <= 0 || len(s) > 1 {
			adminFail(w, http.StatusBadRequest, "device: give one device id (a positive number)")
			return
		}
		out := HistoryReply[DevicePointJSON]{IntervalS: interval.Seconds(), Points: []DevicePointJSON{}}
		if a.o.History != nil {
			for _, p := range a.o.History.Device(id) {
				out.Points = append(out.Points, DevicePointJSON{T: p.T, RxBps: p.RxBps, TxBps: p.TxBps})
			}
		}
		reply(w, http.StatusOK, out)
		return
	}
	out := HistoryReply[TotalPointJSON]{IntervalS: interval.Seconds(), Points: []TotalPointJSON{}}
	if a.o.History != nil {
		for _, p := range a.o.History.Totals() {
			drops := p.Drops
			if drops == nil {
				drops = map[string]float64{}
			}
			out.Points = append(out.Points, TotalPointJSON{T: p.T, RxBps: p.RxBps, TxBps: p.TxBps, Online: p.Online, Drops: drops})
		}
	}
	reply(w, http.StatusOK, out)
}
