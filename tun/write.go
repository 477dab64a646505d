package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// Errors the syscall layer returns to batchWriter, wrapping the errno.
var (
	errKernelInvalid = errors.New("kernel refused the packet (EINVAL)")
	errKernelFull    = errors.New("kernel queue full after a bounded wait")
	errLinkDown      = errors.New("interface is down (EIO)")
)

// batchWriter is the Write side of a device: it coalesces a batch (GRO),
// writes each item with one call of sys, and falls back to writing packets
// one by one when the kernel refuses a coalesced packet.
type batchWriter struct {
	mu     sync.Mutex // serializes writes; guards co
	co     coalescer
	vnet   bool // every write starts with a virtio-net header
	tcpGRO bool // coalesce TCP (needs vnet)
	udpGRO bool // coalesce UDP (needs vnet and USO)
	groOff atomic.Bool
	// sys writes b (virtio-net header included when vnet) with one
	// syscall. It returns nil, os.ErrClosed, or an error wrapping
	// errKernelInvalid, errKernelFull or the errno.
	sys func(b []byte) error
	// flush, if not nil, ends every write: it publishes what sys wrote
	// (see Flusher).
	flush func()
	st    *counters
	logf  func(format string, args ...any)
}

// writeErrs tallies failed packets by reason for one Write call.
type writeErrs struct {
	inval, full, down, other               int
	firstInval, firstFull, firstDown, last error
}

func (e *writeErrs) add(err error, packets int, st *counters) {
	switch {
	case errors.Is(err, errKernelInvalid):
		e.inval += packets
		st.dropWriteInval.Add(uint64(packets))
		if e.firstInval == nil {
			e.firstInval = err
		}
	case errors.Is(err, errKernelFull):
		e.full += packets
		st.dropWriteFull.Add(uint64(packets))
		if e.firstFull == nil {
			e.firstFull = err
		}
	case errors.Is(err, errLinkDown):
		e.down += packets
		st.dropWriteDown.Add(uint64(packets))
		if e.firstDown == nil {
			e.firstDown = err
		}
	default:
		e.other += packets
		st.dropWriteError.Add(uint64(packets))
		e.last = err
	}
}

func (e *writeErrs) err() error {
	var errs []error
	if e.inval > 0 {
		errs = append(errs, fmt.Errorf("tun: %d packet(s) dropped (drop_tun_write_einval): %w", e.inval, e.firstInval))
	}
	if e.full > 0 {
		errs = append(errs, fmt.Errorf("tun: %d packet(s) dropped (drop_tun_write_full): %w", e.full, e.firstFull))
	}
	if e.down > 0 {
		errs = append(errs, fmt.Errorf("tun: %d packet(s) dropped (drop_tun_write_link_down): %w", e.down, e.firstDown))
	}
	if e.other > 0 {
		errs = append(errs, fmt.Errorf("tun: %d packet(s) dropped (drop_tun_write_error): %w", e.other, e.last))
	}
	return errors.Join(errs...)
}

// write implements Device.Write.
func (w *batchWriter) write(bufs [][]byte, offset int) (int, error) {
	if w.vnet && offset < virtioNetHdrLen || offset < 0 {
		return 0, errBadOffset
	}
	for _, b := range bufs {
		if len(b) < offset {
			return 0, errBadOffset
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.flush != nil {
		defer w.flush()
	}

	var (
		n    int
		errs writeErrs
	)
	if !w.vnet || w.groOff.Load() || !w.tcpGRO && !w.udpGRO {
		for i := range bufs {
			ok, closed := w.writeAlone(bufs[i], offset, &errs)
			if closed {
				return n, errors.Join(errs.err(), os.ErrClosed)
			}
			if ok {
				n++
			}
		}
		return n, errs.err()
	}

	items := w.co.plan(bufs, offset, w.tcpGRO, w.udpGRO)
	for k := range items {
		it := &items[k]
		if it.count > 1 && !w.groOff.Load() {
			err := w.sys(w.co.build(bufs, offset, k))
			if err == nil {
				w.st.writes.Add(1)
				w.st.groCoalesced.Add(1)
				w.st.groPackets.Add(uint64(it.count))
				w.st.packetsOut.Add(uint64(it.count))
				w.st.bytesOut.Add(uint64(it.total))
				n += it.count
				continue
			}
			if errors.Is(err, os.ErrClosed) {
				return n, errors.Join(errs.err(), os.ErrClosed)
			}
			if !errors.Is(err, errKernelInvalid) {
				// The write failed for a reason unrelated to
				// coalescing: every member is dropped.
				errs.add(err, it.count, w.st)
				continue
			}
			// The kernel does not take this super-packet: stop
			// coalescing for good and write the members, which
			// are all still intact, one by one.
			if w.groOff.CompareAndSwap(false, true) {
				w.st.groDisabled.Add(1)
				if w.logf != nil {
					w.logf("tun: kernel refused a coalesced packet (%v); GRO on write disabled", err)
				}
			}
			w.co.restore(bufs, offset, k)
			w.st.groRewritten.Add(uint64(it.count))
		}
		for m := int32(it.head); m >= 0; m = w.co.next[m] {
			ok, closed := w.writeAlone(bufs[m], offset, &errs)
			if closed {
				return n, errors.Join(errs.err(), os.ErrClosed)
			}
			if ok {
				n++
			}
		}
	}
	return n, errs.err()
}

// writeAlone writes the packet b[offset:] by itself.
func (w *batchWriter) writeAlone(b []byte, offset int, errs *writeErrs) (ok, closed bool) {
	pkt := b[offset:]
	if w.vnet {
		clearVirtioHdr(b[offset-virtioNetHdrLen:])
		pkt = b[offset-virtioNetHdrLen:]
	}
	err := w.sys(pkt)
	if err == nil {
		w.st.writes.Add(1)
		w.st.packetsOut.Add(1)
		w.st.bytesOut.Add(uint64(len(b) - offset))
		return true, false
	}
	if errors.Is(err, os.ErrClosed) {
		return false, true
	}
	errs.add(err, 1, w.st)
	return false, false
}

// WriteDropReason names the drop counter for a frame that Frames.WriteFrame
// of the kernel's TUN refused with err, as the device's own counters name
// it: for a relay that writes frames itself.
func WriteDropReason(err error) string {
	switch {
	case errors.Is(err, errKernelInvalid):
		return "drop_tun_write_einval"
	case errors.Is(err, errKernelFull):
		return "drop_tun_write_full"
	case errors.Is(err, errLinkDown):
		return "drop_tun_write_link_down"
	}
	return "drop_tun_write_error"
}
