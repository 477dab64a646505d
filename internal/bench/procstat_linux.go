package bench

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// inNetNS reports whether process pid's network namespace is the one with
// device dev and inode ino.
func inNetNS(pid int, dev, ino uint64) bool {
	var st unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// nsID returns the device and inode identifying the namespace mounted at path.
func nsID(path string) (dev, ino uint64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, err
	}
	return uint64(st.Dev), st.Ino, nil
}
