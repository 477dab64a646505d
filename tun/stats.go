package tun

import (
	"sync/atomic"

	"github.com/ptun-vpn/ptun/metrics"
)

// counters are a device's event counts. Read-side and write-side counters
// sit on different cache lines so a reader and a writer goroutine do not
// contend. All are atomics: Stats may run concurrently with the data path.
type counters struct {
	reads         atomic.Uint64 // read syscalls that returned data
	packetsIn     atomic.Uint64 // packets returned by Read
	bytesIn       atomic.Uint64
	gsoSplit      atomic.Uint64 // super-packets split on Read
	gsoSegments   atomic.Uint64 // packets those produced
	csumCompleted atomic.Uint64 // partial checksums completed on Read
	readDrops     [numDropReasons]atomic.Uint64
	_             [64]byte

	writes         atomic.Uint64 // write syscalls that succeeded
	packetsOut     atomic.Uint64 // packets handed to the kernel (coalesced ones included)
	bytesOut       atomic.Uint64
	groCoalesced   atomic.Uint64 // super-packets written
	groPackets     atomic.Uint64 // packets inside them
	groDisabled    atomic.Uint64 // 1 once the kernel refused a super-packet
	groRewritten   atomic.Uint64 // packets written alone after such a refusal
	dropWriteInval atomic.Uint64 // packets the kernel refused (EINVAL)
	dropWriteFull  atomic.Uint64 // packets dropped after a bounded wait on a full queue
	dropWriteDown  atomic.Uint64 // packets written while the link was down (EIO)
	dropWriteError atomic.Uint64 // packets refused with any other error
	_              [64]byte

	offloadUnavailable atomic.Uint64 // 1 if TUNSETOFFLOAD failed at Create
	usoUnavailable     atomic.Uint64 // 1 if the kernel refused USO at Create
}

var readDropNames = [numDropReasons]string{
	dropReadShort:       "drop_tun_read_short",
	dropReadBadGSOType:  "drop_tun_read_bad_gso_type",
	dropReadBadCsum:     "drop_tun_read_bad_csum_offset",
	dropReadMalformed:   "drop_tun_read_malformed",
	dropReadTooManySegs: "drop_tun_read_too_many_segments",
}

// snapshot returns every counter, zero or not, in a fixed order.
func (c *counters) snapshot() []metrics.Counter {
	out := []metrics.Counter{
		{Name: "tun_reads", Value: c.reads.Load()},
		{Name: "tun_packets_in", Value: c.packetsIn.Load()},
		{Name: "tun_bytes_in", Value: c.bytesIn.Load()},
		{Name: "tun_gso_split", Value: c.gsoSplit.Load()},
		{Name: "tun_gso_segments", Value: c.gsoSegments.Load()},
		{Name: "tun_csum_completed", Value: c.csumCompleted.Load()},
		{Name: "tun_writes", Value: c.writes.Load()},
		{Name: "tun_packets_out", Value: c.packetsOut.Load()},
		{Name: "tun_bytes_out", Value: c.bytesOut.Load()},
		{Name: "tun_gro_coalesced", Value: c.groCoalesced.Load()},
		{Name: "tun_gro_coalesced_packets", Value: c.groPackets.Load()},
		{Name: "tun_gro_disabled", Value: c.groDisabled.Load()},
		{Name: "tun_gro_rewritten", Value: c.groRewritten.Load()},
		{Name: "tun_offload_unavailable", Value: c.offloadUnavailable.Load()},
		{Name: "tun_uso_unavailable", Value: c.usoUnavailable.Load()},
	}
	for r := dropReason(1); r < numDropReasons; r++ {
		out = append(out, metrics.Counter{Name: readDropNames[r], Value: c.readDrops[r].Load()})
	}
	return append(out,
		metrics.Counter{Name: "drop_tun_write_einval", Value: c.dropWriteInval.Load()},
		metrics.Counter{Name: "drop_tun_write_full", Value: c.dropWriteFull.Load()},
		metrics.Counter{Name: "drop_tun_write_link_down", Value: c.dropWriteDown.Load()},
		metrics.Counter{Name: "drop_tun_write_error", Value: c.dropWriteError.Load()},
	)
}
