package ipc

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

var errNotFramed = errors.New("flow: the device does not expose its frames (not made by tun.Create)")

// dupAndClose returns a descriptor of f's file that the caller owns, and
// closes f.
func dupAndClose(f *os.File) (int, error) {
	defer f.Close()
	sc, err := f.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("flow: %w", err)
	}
	nfd := -1
	var derr error
	if err := sc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, fmt.Errorf("flow: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("flow: dup: %w", derr)
	}
	return nfd, nil
}
