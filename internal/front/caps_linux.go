package front

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Keep is what the front needs of root's power once it runs: network
// administration (the TUN, SO_MARK, socket buffers, later routes and
// nftables), binding privileged ports (a listen port below 1024, TCP 443),
// writing an engine's user namespace maps (SETUID, SETGID) and signalling
// its engines, which run as other uids (KILL).
var Keep = []uintptr{unix.CAP_NET_ADMIN, unix.CAP_NET_BIND_SERVICE, unix.CAP_SETUID, unix.CAP_SETGID, unix.CAP_KILL}

// DropCapabilities makes a front started as root hold only Keep: it
// re-executes the process (same arguments and environment, descriptors
// kept) with Keep as its ambient capabilities, every other one out of its
// bounding set, and root locked out of getting any back on exec
// (SECBIT_NOROOT). In the new process, and for a process that is not root,
// it returns nil at once. It returns only on failure or when there is
// nothing to drop.
func DropCapabilities() error {
	if os.Geteuid() != 0 {
		return nil
	}
	bnd, err := boundingSet()
	if err != nil {
		return err
	}
	if bnd == keepMask() {
		return nil // already done
	}
	last, err := lastCap()
	if err != nil {
		return err
	}
	runtime.LockOSThread() // never unlocked: this thread execs
	const noroot, norootLocked = 1 << 0, 1 << 1
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, noroot|norootLocked, 0, 0, 0); err != nil {
		return fmt.Errorf("front: securebits: %w", err)
	}
	for c := uintptr(0); c <= uintptr(last); c++ {
		if keepMask()&(1<<c) != 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("front: dropping capability %d: %w", c, err)
		}
	}
	// Ambient capabilities must be permitted and inheritable first.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	m := keepMask()
	data[0].Effective, data[0].Permitted, data[0].Inheritable = uint32(m), uint32(m), uint32(m)
	data[1].Effective, data[1].Permitted, data[1].Inheritable = uint32(m>>32), uint32(m>>32), uint32(m>>32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("front: capset: %w", err)
	}
	for _, c := range Keep {
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, c, 0, 0); err != nil {
			return fmt.Errorf("front: ambient capability %d: %w", c, err)
		}
	}
	err = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	return fmt.Errorf("front: re-executing with fewer capabilities: %w", err)
}

func keepMask() uint64 {
	var m uint64
	for _, c := range Keep {
		m |= 1 << c
	}
	return m
}

// boundingSet reads CapBnd from /proc/self/status.
func boundingSet() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("front: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("front: no CapBnd in /proc/self/status")
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("front: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
