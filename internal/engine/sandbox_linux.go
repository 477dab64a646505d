package engine

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// fallbackUID is the uid (and gid) the engine takes when the system has no
// "nobody" user: the traditional overflow id.
const fallbackUID = 65534

// Confine is the engine's first step, before it reads anything: it gives up
// every privilege and re-executes itself with args, so that the process
// that goes on has never held one.
//
//   - As root it takes the uid and gid of "nobody" (65534 if there is no
//     such user) and no supplementary groups; changing from uid 0 clears
//     every capability.
//   - It sets no_new_privs, which execve keeps and no setuid binary or file
//     capability can undo. The flag belongs to a thread, so Confine sets it
//     on a locked thread and re-executes from that thread: the new image
//     starts with it, and every thread made later inherits it.
//
// It returns only on failure.
func Confine(args []string) error {
	runtime.LockOSThread() // never unlocked: this thread execs or the process exits
	if os.Geteuid() == 0 {
		uid, gid := unprivilegedIDs()
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("engine: setgroups: %w", err)
		}
		if err := syscall.Setgid(gid); err != nil {
			return fmt.Errorf("engine: setgid %d: %w", gid, err)
		}
		if err := syscall.Setuid(uid); err != nil {
			return fmt.Errorf("engine: setuid %d: %w", uid, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("engine: no_new_privs: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("engine: chdir /: %w", err)
	}
	if err := closeOnExecAbove(3); err != nil {
		return err
	}
	// /proc/self/exe reaches the binary even when its directory is closed
	// to the new uid (go run builds into a root-only directory).
	err := syscall.Exec("/proc/self/exe", args, os.Environ())
	return fmt.Errorf("engine: re-executing as the confined engine: %w", err)
}

// closeOnExecAbove marks every descriptor above max close-on-exec, so the
// confined engine keeps only stdin, stdout, stderr and the control channel
// (3): a descriptor its front inherited without close-on-exec from whoever
// started it must not reach the engine.
func closeOnExecAbove(max int) error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("engine: listing descriptors: %w", err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= max {
			continue
		}
		// The directory's own descriptor is gone by now: EBADF is fine.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return fmt.Errorf("engine: close-on-exec on fd %d: %w", fd, err)
		}
	}
	return nil
}

// CheckConfined verifies what Confine promised, in the re-executed engine:
// no capability in any set, no_new_privs, and not root.
func CheckConfined() error {
	v, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	if err != nil || v != 1 {
		return fmt.Errorf("engine: no_new_privs is not set (%d, %v)", v, err)
	}
	caps, err := Capabilities(os.Getpid())
	if err != nil {
		return err
	}
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapAmb"} {
		if caps[k] != 0 {
			return fmt.Errorf("engine: still holds capabilities: %s=%016x", k, caps[k])
		}
	}
	if os.Geteuid() == 0 || os.Getuid() == 0 {
		return errors.New("engine: still runs as root")
	}
	return nil
}

// Capabilities returns the capability sets of process pid from
// /proc/PID/status (CapInh, CapPrm, CapEff, CapBnd, CapAmb).
func Capabilities(pid int) (map[string]uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	caps := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasPrefix(k, "Cap") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/status: %s: %w", pid, k, err)
		}
		caps[k] = n
	}
	if _, ok := caps["CapEff"]; !ok {
		return nil, fmt.Errorf("/proc/%d/status has no CapEff line", pid)
	}
	return caps, sc.Err()
}

func unprivilegedIDs() (uid, gid int) {
	uid, gid = fallbackUID, fallbackUID
	u, err := user.Lookup("nobody")
	if err != nil {
		return uid, gid
	}
	if n, err := strconv.Atoi(u.Uid); err == nil && n > 0 {
		uid = n
	}
	if n, err := strconv.Atoi(u.Gid); err == nil && n > 0 {
		gid = n
	}
	return uid, gid
}
