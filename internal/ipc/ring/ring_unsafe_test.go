package ring

import "unsafe"

// within reports whether b lies entirely inside region, comparing addresses
// (a slice with the right length could still point anywhere).
func within(b, region []byte) bool {
	if len(b) == 0 && cap(b) == 0 {
		return true
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(region)))
	return start >= lo && start+uintptr(cap(b)) <= lo+uintptr(len(region))
}

// offsetIn returns b's offset inside region; within(b, region) must hold.
func offsetIn(b, region []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b))) - uintptr(unsafe.Pointer(unsafe.SliceData(region)))
}
