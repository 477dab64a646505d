// Package metrics holds the counter types every part of the data path uses
// to report drops by reason, fallbacks and totals.
package metrics

// Counter is one named event count, such as a drop reason
// ("drop_bad_mac") or an offload fallback ("tun_gro_disabled").
// Names are lower_snake_case and unique within one component.
type Counter struct {
	Name  string
	Value uint64
}

// Reporter is implemented by components that count events. Stats is safe to
// call concurrently with the data path; values are a snapshot.
type Reporter interface {
	Stats() []Counter
}

// QueuePrefix starts the name of a Counter that is a queue's depth at the
// moment of the snapshot (a gauge, not a count): "queue_handshakes".
const QueuePrefix = "queue_"

// Prefixed renames cs in place to prefix+name and returns it: for a
// component that reports the counters of its parts under its own names.
func Prefixed(prefix string, cs []Counter) []Counter {
	for i := range cs {
		cs[i].Name = prefix + cs[i].Name
	}
	return cs
}
