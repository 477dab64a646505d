//go:build linux

package udp

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// recvmmsg reads up to len(hdrs) datagrams from the non-blocking socket fd.
// hdrs and everything they point to must stay reachable for the call, which
// holding them in the receiver guarantees.
func recvmmsg(fd uintptr, hdrs []unix.Mmsghdr) (int, unix.Errno) {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// sendmmsg sends up to len(hdrs) messages on the non-blocking socket fd and
// returns how many the kernel took; an error is only reported when the first
// one fails. hdrs must stay reachable for the call, as for recvmmsg.
func sendmmsg(fd uintptr, hdrs []unix.Mmsghdr) (int, unix.Errno) {
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}
