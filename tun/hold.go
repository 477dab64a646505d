package tun

import (
	"errors"
	"os"
	"time"
)

// Holding a Device: while held, Read reads nothing and waits, so that
// another process holding the same TUN file (an OpenConnect engine, while
// `ptun up` carries the tunnel over TLS) gets every packet the kernel
// queues. Write goes on working. A Read already waiting in the kernel is
// woken (a read deadline in the past) when the Frames can take one, as
// the kernel's TUN file can; a frame it read before the hold took effect
// is returned as usual.

// readDeadliner is implemented by Frames whose blocked ReadFrame a read
// deadline interrupts.
type readDeadliner interface {
	SetReadDeadline(t time.Time) error
}

// ErrCannotHold is returned by Hold for a Device it cannot hold.
var ErrCannotHold = errors.New("tun: this device cannot be held")

// Hold holds d (on) or lets it go (off); see above. It fails with
// ErrCannotHold for a Device not made by this package over Frames that
// take a read deadline.
func Hold(d Device, on bool) error {
	dv, ok := d.(*device)
	if !ok {
		return ErrCannotHold
	}
	dl, ok := dv.f.(readDeadliner)
	if !ok {
		return ErrCannotHold
	}
	dv.holdMu.Lock()
	defer dv.holdMu.Unlock()
	if on == (dv.released != nil) {
		return nil
	}
	dv.holdEpoch.Add(1)
	if on {
		dv.released = make(chan struct{})
		dl.SetReadDeadline(time.Unix(1, 0)) // wakes a waiting ReadFrame
		return nil
	}
	dl.SetReadDeadline(time.Time{})
	close(dv.released)
	dv.released = nil
	return nil
}

// waitHold returns at once when d is not held, else when the hold ends or
// d is closed (os.ErrClosed).
func (d *device) waitHold() error {
	d.holdMu.Lock()
	ch := d.released
	d.holdMu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-d.closing:
		return os.ErrClosed
	}
}
