package front

import (
	"github.com/vishvananda/netlink"
)

// watchMTU calls changed with the new MTU each time the interface name's
// MTU changes (ip link set NAME mtu N), from netlink's notifications, so
// the engine pads the next packet to it rather than at its next periodic
// refresh. It returns once stop is closed; a watch that cannot start is
// logged and the periodic refresh remains.
func watchMTU(name string, mtu int, stop <-chan struct{}, changed func(int), logf func(string, ...any)) {
	updates := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	defer close(done)
	err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case <-done: // the subscription's own end, as the front stops
			case <-stop:
			default:
				logf("front: watching %s's MTU: %v", name, err)
			}
		},
	})
	if err != nil {
		logf("front: cannot watch %s's MTU (%v); the engine reads it every 250 ms", name, err)
		return
	}
	for {
		select {
		case <-stop:
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			if a := u.Attrs(); a != nil && a.Name == name && a.MTU > 0 && a.MTU != mtu {
				mtu = a.MTU
				changed(mtu)
			}
		}
	}
}
