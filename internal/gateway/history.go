package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/ptun-vpn/ptun/internal/telemetry"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// The admin page's charts are computed here, by the running gateway: a
// History reads the interface's counters every 5 s (the same Get and
// Stats that the metrics and `ptun gateway devices` read) and keeps, in
// rings of fixed size, an hour of the gateway's rates and five minutes of
// each device's. Its memory is bounded: 720 gateway points (their drops
// only the non-zero ones), 60 points of 8 bytes a device, and a device's
// ring is freed at the first sample its peer is not in (revoked, removed).

// The History's defaults and sizes.
const (
	DefaultHistoryInterval = 5 * time.Second
	HistoryPoints          = 720 // the gateway's: an hour at 5 s
	DevicePoints           = 60  // each device's: five minutes at 5 s
)

// HistoryOptions configure a History.
type HistoryOptions struct {
	// Source is what every sample reads: the handler the interface's
	// UAPI socket serves. Both methods must be safe to call concurrently
	// with it.
	Source telemetry.Device
	// DeviceID names a peer's registry device (ok false: a peer the
	// registry does not know, counted in the totals only). nil: every
	// peer is counted in the totals only.
	DeviceID func(noise.PublicKey) (id int64, ok bool)
	// Interval is the time between samples (DefaultHistoryInterval if 0).
	Interval time.Duration
	// Now is the clock of the samples (time.Now if nil).
	Now func() time.Time
}

// Figures are the gateway's totals as the latest successful read found
// them.
type Figures struct {
	At             time.Time // when they were read; zero: never
	Live           bool      // the latest read succeeded (else these are older: see At)
	Devices        int       // peers that are registry devices
	Online         int       // of all peers, those with a handshake within OnlineWithin
	RxBytes        uint64    // summed over the peers, as the interface counts them
	TxBytes        uint64
	Drops          map[string]uint64 // by the counter's name in ptun show (drop_acl…); the caller must not change it
	EngineRestarts uint64
}

// TotalPoint is one sample of the gateway's rates over the interval
// before T. Drops has only the reasons with a non-zero rate.
type TotalPoint struct {
	T      time.Time
	RxBps  float64 // bytes a second received from the devices
	TxBps  float64 // bytes a second sent to them
	Online int
	Drops  map[string]float64 // packets a second by reason; the caller must not change it
}

// DevicePoint is one sample of a device's rates over the interval before T.
type DevicePoint struct {
	T            time.Time
	RxBps, TxBps float64
}

// History samples an interface's counters and keeps their recent rates.
// Its methods are safe for concurrent use.
type History struct {
	o HistoryOptions

	mu      sync.Mutex // guards everything below
	latest  Figures
	prevAt  time.Time                     // the last successful read; zero: none yet
	prev    map[noise.PublicKey]peerBytes // the peers' counters at prevAt
	prevDrp map[string]uint64             // the drop counters at prevAt
	totals  ring[totalSample]
	devices map[int64]*ring[rate32] // each point is at one of the last totals' times
}

type peerBytes struct{ rx, tx uint64 }

type totalSample struct {
	at     int64 // Unix ns
	rx, tx float64
	online int32
	drops  map[string]float64 // non-zero rates only; nil if none
}

// rate32 is a device's rates: float32 keeps 60 points in 480 bytes, and
// its 7 digits are plenty for a chart.
type rate32 struct{ rx, tx float32 }

// NewHistory returns a History that has read nothing yet.
func NewHistory(o HistoryOptions) *History {
	if o.Interval <= 0 {
		o.Interval = DefaultHistoryInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &History{o: o, totals: newRing[totalSample](HistoryPoints), devices: map[int64]*ring[rate32]{}}
}

// Interval is the time between samples.
func (h *History) Interval() time.Duration { return h.o.Interval }

// Run samples every Interval, the first at once, until ctx ends.
func (h *History) Run(ctx context.Context) {
	t := time.NewTicker(h.o.Interval)
	defer t.Stop()
	for {
		h.Sample()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sample reads the source once. The first successful read (and one after
// a failed Get, whose interval is taken whole) gives rates from the
// previous successful one; a counter lower than before (its engine was
// restarted) counts from zero, so a rate is never negative. A peer seen
// for the first time has no rate yet.
func (h *History) Sample() {
	st, err := h.o.Source.Get()
	now := h.o.Now()
	if err != nil {
		h.mu.Lock()
		h.latest.Live = false
		h.mu.Unlock()
		return
	}
	stats := h.o.Source.Stats()

	fig := Figures{At: now, Live: true, Drops: map[string]uint64{}}
	for _, c := range stats {
		if c.Name == "engine_restarts" {
			fig.EngineRestarts += c.Value
		} else if _, _, ok := telemetry.DropLabels(c.Name); ok {
			fig.Drops[c.Name] += c.Value // one name twice (shm's TUN drops): their sum, as the metrics have it
		}
	}
	cur := make(map[noise.PublicKey]peerBytes, len(st.Peers))
	for _, p := range st.Peers {
		cur[p.PublicKey] = peerBytes{p.RxBytes, p.TxBytes}
		fig.RxBytes += p.RxBytes
		fig.TxBytes += p.TxBytes
		if !p.LastHandshake.IsZero() && now.Sub(p.LastHandshake) < OnlineWithin {
			fig.Online++
		}
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	h.latest = fig
	prevAt, prev, prevDrops := h.prevAt, h.prev, h.prevDrp
	h.prevAt, h.prev, h.prevDrp = now, cur, fig.Drops
	dt := now.Sub(prevAt).Seconds()
	rates := !prevAt.IsZero() && dt > 0
	seen := make(map[int64]bool, len(st.Peers))
	var total totalSample
	for k, c := range cur {
		id, isDevice := int64(0), false
		if h.o.DeviceID != nil {
			id, isDevice = h.o.DeviceID(k)
		}
		if isDevice {
			h.latest.Devices++
			seen[id] = true
		}
		p, before := prev[k]
		if !rates || !before {
			continue
		}
		rx, tx := float64(grown(p.rx, c.rx))/dt, float64(grown(p.tx, c.tx))/dt
		total.rx += rx
		total.tx += tx
		if isDevice {
			r := h.devices[id]
			if r == nil {
				nr := newRing[rate32](DevicePoints)
				r = &nr
				h.devices[id] = r
			}
			r.push(rate32{float32(rx), float32(tx)})
		}
	}
	// A device whose peer is gone is forgotten (and one seen again starts
	// afresh), so that a device's points are at the last totals' times.
	for id := range h.devices {
		if !seen[id] || !rates {
			delete(h.devices, id)
		}
	}
	if !rates {
		return
	}
	for name, v := range fig.Drops {
		if d := grown(prevDrops[name], v); d > 0 {
			if total.drops == nil {
				total.drops = map[string]float64{}
			}
			total.drops[name] = float64(d) / dt
		}
	}
	total.at, total.online = now.UnixNano(), int32(fig.Online)
	h.totals.push(total)
}

// grown is how much a counter grew from was to is: is itself if it went
// down (it was reset to zero in between).
func grown(was, is uint64) uint64 {
	if is < was {
		return is
	}
	return is - was
}

// Figures returns the latest figures (Live false and At zero if none
// were ever read).
func (h *History) Figures() Figures {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.latest
}

// Totals returns the gateway's points, oldest first.
func (h *History) Totals() []TotalPoint {
	h.mu.Lock()
	defer h.mu.Unlock()
	ts := h.totals.all()
	out := make([]TotalPoint, len(ts))
	for i, t := range ts {
		out[i] = TotalPoint{T: time.Unix(0, t.at).UTC(), RxBps: t.rx, TxBps: t.tx, Online: int(t.online), Drops: t.drops}
	}
	return out
}

// Device returns device id's points, oldest first: none if the History
// has none for it (not a peer here, revoked, or too new).
func (h *History) Device(id int64) []DevicePoint {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.devices[id]
	if r == nil {
		return []DevicePoint{}
	}
	ps := r.all()
	ts := h.totals.all()
	ts = ts[len(ts)-len(ps):] // a device's points are at the last totals' times
	out := make([]DevicePoint, len(ps))
	for i, p := range ps {
		out[i] = DevicePoint{T: time.Unix(0, ts[i].at).UTC(), RxBps: float64(p.rx), TxBps: float64(p.tx)}
	}
	return out
}

// devicesKept is how many devices have a ring (for tests).
func (h *History) devicesKept() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.devices)
}

// ring is a fixed-size ring of the latest values pushed.
type ring[T any] struct {
	buf  []T
	next int // where the next push goes
	full bool
}

func newRing[T any](size int) ring[T] { return ring[T]{buf: make([]T, size)} }

func (r *ring[T]) push(v T) {
	r.buf[r.next] = v
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
}

// all returns the values, oldest first, in a new slice.
func (r *ring[T]) all() []T {
	if !r.full {
		return append([]T(nil), r.buf[:r.next]...)
	}
	return append(append(make([]T, 0, len(r.buf)), r.buf[r.next:]...), r.buf[:r.next]...)
}
