package engine

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The engine runs this very binary, re-executed by a uid of its own. If
// the binary is not executable by others (built or installed with umask
// 077), that uid could not execute it: the front then copies it once into
// a sealed memory file, which anyone may execute and no one can change,
// and starts engines from that.

var exeCopy struct {
	once sync.Once
	f    *os.File
	err  error
}

// executable returns the path an engine process is started from, and the
// file it must be handed as descriptor 4 (nil: none) for that path to
// resolve in the child.
func executable() (path string, extra *os.File, err error) {
	fi, err := os.Stat("/proc/self/exe")
	if err != nil {
		return "", nil, fmt.Errorf("engine: %w", err)
	}
	if fi.Mode().Perm()&0o001 != 0 {
		return "/proc/self/exe", nil, nil
	}
	exeCopy.once.Do(func() { exeCopy.f, exeCopy.err = sealedCopy("/proc/self/exe") })
	if exeCopy.err != nil {
		return "", nil, fmt.Errorf("engine: the binary is not executable by others (mode %v), and copying it failed: %w", fi.Mode().Perm(), exeCopy.err)
	}
	return "/proc/self/fd/4", exeCopy.f, nil
}

// sealedCopy copies the file at path into a memfd sealed against any
// change.
func sealedCopy(path string) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("ptun-engine", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "ptun-engine")
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		return nil, err
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, err
	}
	if err := unix.Fchmod(int(f.Fd()), 0o555); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
