package engine

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The engine's sandbox, in three steps:
//
//  1. The front starts it (Command) in new user, network, mount, pid, IPC
//     and UTS namespaces, as uid and gid 0 of its user namespace, which are
//     UID(ifname) outside it: a uid of its own per interface, which no
//     other process on the host has. It holds capabilities only over its
//     own, empty namespaces.
//  2. Confine, its first step, uses them once: it replaces the filesystem
//     with an empty read-only tmpfs holding only a /proc of its own pid
//     namespace, locks root out of capabilities (securebits), empties every
//     capability set (the bounding set too), sets no_new_privs and resource
//     limits, and re-executes itself from a descriptor it opened before the
//     filesystem went, so the process that goes on has never held anything.
//  3. Lockdown, in that process, makes it undumpable (no ptrace, no
//     /proc/PID/mem, not even by its own uid) and installs the system call
//     allow-list (seccomp_linux.go). CheckConfined then checks every one of
//     these from inside.
//
// It needs nothing the front keeps after start but CAP_SETUID and
// CAP_SETGID (to write the user namespace's uid and gid maps).

// uidBase and uidRange: engines take uids UID(ifname) in
// [uidBase, uidBase+uidRange), a range that distributions leave unused.
const (
	uidBase  = 0x7ffe0000
	uidRange = 1 << 16
)

// Resource limits of the confined engine.
const (
	limitNOFILE = 256     // the control channel, the flow, two sockets, the runtime's few
	limitNPROC  = 512     // threads count: the runtime's, with room
	limitAS     = 8 << 30 // the Go runtime reserves address space: 8 GiB leaves it room
)

// UID is the uid (and gid) outside its user namespace of the engine of
// interface ifname.
func UID(ifname string) int {
	h := fnv.New32a()
	h.Write([]byte(ifname))
	return uidBase + int(h.Sum32()%uidRange)
}

// Command returns the command that starts the engine of interface ifname,
// this binary with args (args[0] included), in its namespaces (step 1
// above). The front adds the control channel as ExtraFiles[0].
func Command(ifname string, args ...string) (*exec.Cmd, error) {
	path, exe, err := executable()
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: path, Args: args}
	if exe != nil {
		cmd.ExtraFiles = []*os.File{nil, exe} // descriptor 4; the front sets 3
	}
	id := UID(ifname)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET |
			syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: id, Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: id, Size: 1}},
		GidMappingsEnableSetgroups: false,
		Credential:                 &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
	}
	return cmd, nil
}

// Confine is the engine's first step (step 2 above), before it reads
// anything: it re-executes itself with args, confined. It returns only on
// failure.
func Confine(args []string) error {
	runtime.LockOSThread() // never unlocked: this thread execs or the process exits
	if err := checkOwnUserNamespace(); err != nil {
		return err
	}
	// Opened while the filesystem is still there; O_PATH needs no read
	// permission on the binary.
	exe, err := unix.Open("/proc/self/exe", unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("engine: opening its own binary: %w", err)
	}
	lastCap, err := lastCapability()
	if err != nil {
		return err
	}
	if err := emptyFilesystem(); err != nil {
		return err
	}
	if err := dropCapabilities(lastCap); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("engine: no_new_privs: %w", err)
	}
	for _, l := range []struct {
		res int
		max uint64
	}{
		{unix.RLIMIT_NOFILE, limitNOFILE}, {unix.RLIMIT_NPROC, limitNPROC}, {unix.RLIMIT_AS, limitAS},
		{unix.RLIMIT_CORE, 0}, {unix.RLIMIT_FSIZE, 0}, {unix.RLIMIT_MEMLOCK, 0},
	} {
		if err := unix.Setrlimit(l.res, &unix.Rlimit{Cur: l.max, Max: l.max}); err != nil {
			return fmt.Errorf("engine: resource limit %d: %w", l.res, err)
		}
	}
	if err := closeOnExecAbove(3); err != nil {
		return err
	}
	return execveat(exe, args, os.Environ())
}

// checkOwnUserNamespace refuses to confine itself unless it runs as root
// of a user namespace whose root is not the host's: a plain root process
// (an engine started by hand) would otherwise go on as real root.
func checkOwnUserNamespace() error {
	outside, err := mappedRoot()
	if err != nil {
		return err
	}
	if outside == 0 || os.Getuid() != 0 {
		return errors.New("engine: not started by a ptun front (no user namespace of its own)")
	}
	return nil
}

// mappedRoot returns the uid outside this user namespace of its uid 0.
func mappedRoot() (int, error) {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return 0, fmt.Errorf("engine: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || f[0] != "0" || f[2] != "1" {
		return 0, fmt.Errorf("engine: unexpected uid map %q", strings.TrimSpace(string(b)))
	}
	return strconv.Atoi(f[1])
}

func lastCapability() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("engine: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// emptyFilesystem makes the root an empty tmpfs with a /proc of the
// engine's own pid namespace, read-only: nothing of the host's filesystem
// is left to read but, for a binary linked with the C library (cgo), the
// system's shared-library directories, read-only, which its loader needs
// at the next exec.
func emptyFilesystem() error {
	steps := []struct {
		what string
		do   func() error
	}{
		{"making mounts private", func() error { return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") }},
		{"mounting the new root", func() error {
			return unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=64k,mode=0555")
		}},
		{"making /proc", func() error { return unix.Mkdir("/tmp/proc", 0o555) }},
		{"mounting /proc", func() error {
			return unix.Mount("proc", "/tmp/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}},
		{"the shared libraries of a dynamically linked binary", bindLibraries},
		{"entering the new root", func() error { return unix.Chdir("/tmp") }},
		{"pivot_root", func() error { return unix.PivotRoot(".", ".") }},
		{"detaching the old root", func() error { return unix.Unmount(".", unix.MNT_DETACH) }},
		{"chdir /", func() error { return unix.Chdir("/") }},
		{"making the root read-only", func() error {
			return unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("engine: %s: %w", s.what, err)
		}
	}
	return nil
}

// libraryDirs are where a dynamically linked binary's loader and libraries
// live (FHS, Debian's multiarch and merged /usr layouts alike).
var libraryDirs = []string{"/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32"}

// bindLibraries, when the running binary has an ELF interpreter, mirrors
// libraryDirs into the new root (/tmp): symbolic links as links, and
// directories bind-mounted read-only.
func bindLibraries() error {
	f, err := elf.Open("/proc/self/exe")
	if err != nil {
		return err
	}
	dynamic := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			dynamic = true
		}
	}
	f.Close()
	if !dynamic {
		return nil
	}
	for _, d := range libraryDirs {
		fi, err := os.Lstat(d)
		if err != nil {
			continue
		}
		dst := "/tmp" + d
		if err := os.MkdirAll(filepath.Dir(dst), 0o555); err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(d)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
			continue
		}
		if !fi.IsDir() {
			continue
		}
		if err := os.Mkdir(dst, 0o555); err != nil {
			return err
		}
		if err := unix.Mount(d, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d, err)
		}
		// A remount in a user namespace must keep the flags the mount
		// was locked with.
		var st unix.Statfs_t
		if err := unix.Statfs(dst, &st); err != nil {
			return err
		}
		flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
		for _, m := range []struct{ st, ms uintptr }{
			{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME},
			{unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
		} {
			if uintptr(st.Flags)&m.st != 0 {
				flags |= m.ms
			}
		}
		if err := unix.Mount("", dst, "", flags, ""); err != nil {
			return fmt.Errorf("read-only %s: %w", d, err)
		}
	}
	return nil
}

// Securebits (linux/securebits.h).
const (
	secbitNoroot                 = 1 << 0
	secbitNorootLocked           = 1 << 1
	secbitNoSetuidFixup          = 1 << 2
	secbitNoSetuidFixupLocked    = 1 << 3
	secbitKeepCapsLocked         = 1 << 5
	secbitNoCapAmbientRaise      = 1 << 6
	secbitNoCapAmbientRaiseLockd = 1 << 7
)

// dropCapabilities, on this thread (which execs next): root gets no
// capability from an exec (SECBIT_NOROOT, locked), the bounding, ambient,
// inheritable, permitted and effective sets are emptied.
func dropCapabilities(lastCap int) error {
	bits := secbitNoroot | secbitNorootLocked | secbitNoSetuidFixup | secbitNoSetuidFixupLocked |
		secbitKeepCapsLocked | secbitNoCapAmbientRaise | secbitNoCapAmbientRaiseLockd
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, uintptr(bits), 0, 0, 0); err != nil {
		return fmt.Errorf("engine: securebits: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("engine: clearing ambient capabilities: %w", err)
	}
	for c := 0; c <= lastCap; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("engine: dropping capability %d from the bounding set: %w", c, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("engine: capset: %w", err)
	}
	return nil
}

// execveat executes the file open at fd (AT_EMPTY_PATH): no path, so no
// filesystem, is needed.
func execveat(fd int, args, env []string) error {
	argv, err := syscall.SlicePtrFromStrings(args)
	if err != nil {
		return err
	}
	envv, err := syscall.SlicePtrFromStrings(env)
	if err != nil {
		return err
	}
	empty, _ := unix.BytePtrFromString("")
	_, _, errno := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])), unix.AT_EMPTY_PATH, 0)
	return fmt.Errorf("engine: re-executing as the confined engine: %w", errno)
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

// Lockdown is the confined engine's first step (step 3 above): not
// dumpable, then the system call allow-list. Call CheckConfined after it.
//
// The WireGuard engine needs nothing more than the common allow-list;
// an engine that accepts connections on a listener its front handed it
// (the OpenConnect engine) passes AllowAccept.
func Lockdown(extra ...uintptr) error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("engine: PR_SET_DUMPABLE: %w", err)
	}
	// CheckConfined reads /proc: read what it needs before the filter
	// leaves no open(2).
	if err := snapshotSelf(); err != nil {
		return err
	}
	return installSeccomp(extra)
}

// self is what CheckConfined reads of this process, taken by Lockdown
// before the allow-list forbids opening files.
var self struct {
	status  map[string]string
	uidMap  int
	root    []string
	ifnames []string
}

func snapshotSelf() error {
	var err error
	if self.status, err = procStatus("self"); err != nil {
		return err
	}
	if self.uidMap, err = mappedRoot(); err != nil {
		return err
	}
	ents, err := os.ReadDir("/")
	if err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	for _, e := range ents {
		self.root = append(self.root, e.Name())
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("engine: listing interfaces: %w", err)
	}
	for _, i := range ifs {
		self.ifnames = append(self.ifnames, i.Name)
	}
	return nil
}

// CheckConfined verifies, in the confined engine after Lockdown, every
// promise above: no capability in any set (bounding included),
// no_new_privs, not dumpable, a seccomp filter, root only of its own user
// namespace, which is a uid of its own outside, a network namespace with
// nothing but loopback, a filesystem with nothing but /proc, and its
// resource limits.
func CheckConfined() error {
	st := self.status
	if st == nil {
		return errors.New("engine: CheckConfined before Lockdown")
	}
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		v, err := strconv.ParseUint(st[k], 16, 64)
		if err != nil || v != 0 {
			return fmt.Errorf("engine: still holds capabilities: %s=%s", k, st[k])
		}
	}
	if st["NoNewPrivs"] != "1" {
		return fmt.Errorf("engine: no_new_privs is not set (%q)", st["NoNewPrivs"])
	}
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 0 {
		return fmt.Errorf("engine: still dumpable (%d, %v)", d, err)
	}
	if seccompArch != 0 {
		if m, err := unix.PrctlRetInt(unix.PR_GET_SECCOMP, 0, 0, 0, 0); err != nil || m != 2 {
			return fmt.Errorf("engine: no seccomp filter (mode %d, %v)", m, err)
		}
	}
	if self.uidMap < uidBase || self.uidMap >= uidBase+uidRange {
		return fmt.Errorf("engine: runs as uid %d outside its user namespace, not an engine uid", self.uidMap)
	}
	if len(self.ifnames) != 1 || self.ifnames[0] != "lo" {
		return fmt.Errorf("engine: its network namespace has interfaces %v, want only lo", self.ifnames)
	}
	for _, name := range self.root {
		if name != "proc" && !slices.Contains(libraryDirs, "/"+name) && name != "usr" {
			return fmt.Errorf("engine: its filesystem holds %v, want only proc and library directories", self.root)
		}
	}
	for _, l := range []struct {
		name string
		res  int
		max  uint64
	}{{"RLIMIT_NOFILE", unix.RLIMIT_NOFILE, limitNOFILE}, {"RLIMIT_NPROC", unix.RLIMIT_NPROC, limitNPROC}, {"RLIMIT_AS", unix.RLIMIT_AS, limitAS}} {
		var r unix.Rlimit
		if err := unix.Getrlimit(l.res, &r); err != nil || r.Max != l.max {
			return fmt.Errorf("engine: %s is %d, want %d (%v)", l.name, r.Max, l.max, err)
		}
	}
	return nil
}

// procStatus returns the key: value lines of /proc/PID/status (pid may be
// "self").
func procStatus(pid string) (map[string]string, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	defer f.Close()
	st := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st, sc.Err()
}
