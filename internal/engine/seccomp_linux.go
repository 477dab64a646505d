package engine

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The engine's system call allow-list. Everything else fails with EPERM:
// the engine opens no socket or file, executes nothing, mounts nothing,
// traces nothing, makes no namespace (clone with a CLONE_NEW* flag is
// refused too) and calls no ioctl, so in fd mode it cannot change the TUN's
// offloads, header size, queues or filters that the next engine inherits. The list is per architecture (seccomp_linux_ARCH.go); on
// an architecture without one, no filter is installed and CheckConfined
// says so.

// BPF instructions (linux/filter.h, linux/bpf_common.h).
const (
	bpfLdWAbs = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	bpfJeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	bpfJgeK   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
	bpfJsetK  = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
	bpfRetK   = unix.BPF_RET | unix.BPF_K

	seccompRetAllow       = 0x7fff0000
	seccompRetErrno       = 0x00050000
	seccompRetKillProcess = 0x80000000

	// Offsets in struct seccomp_data.
	offNr   = 0
	offArch = 4
	offArg0 = 16 // the low 32 bits on a little-endian machine

	// x32 system calls have this bit set in their number on amd64.
	x32Bit = 0x40000000

	cloneNamespaces = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWNET | unix.CLONE_NEWPID |
		unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME
)

// seccompProgram builds the filter: the architecture must be ours (else the
// process is killed: a foreign ABI would bypass the numbers below), clone
// may not make a namespace, and only the allowed calls pass.
func seccompProgram(arch uint32, allowed []uintptr) ([]unix.SockFilter, error) {
	if len(allowed) > 250 {
		return nil, fmt.Errorf("engine: %d allowed system calls do not fit one jump", len(allowed))
	}
	deny := uint32(seccompRetErrno | uint32(syscall.EPERM))
	p := []unix.SockFilter{
		{Code: bpfLdWAbs, K: offArch},
		{Code: bpfJeqK, Jt: 1, Jf: 0, K: arch},
		{Code: bpfRetK, K: seccompRetKillProcess},
		{Code: bpfLdWAbs, K: offNr},
	}
	if arch == unix.AUDIT_ARCH_X86_64 {
		p = append(p, unix.SockFilter{Code: bpfJgeK, Jt: 0, Jf: 1, K: x32Bit},
			unix.SockFilter{Code: bpfRetK, K: deny})
	}
	// clone3 hides its flags in memory: ENOSYS, so the C library falls
	// back to clone. clone: only without namespace flags.
	p = append(p,
		unix.SockFilter{Code: bpfJeqK, Jt: 0, Jf: 1, K: uint32(unix.SYS_CLONE3)},
		unix.SockFilter{Code: bpfRetK, K: seccompRetErrno | uint32(syscall.ENOSYS)},
		unix.SockFilter{Code: bpfJeqK, Jt: 0, Jf: 4, K: uint32(unix.SYS_CLONE)},
		unix.SockFilter{Code: bpfLdWAbs, K: offArg0},
		unix.SockFilter{Code: bpfJsetK, Jt: 0, Jf: 1, K: cloneNamespaces},
		unix.SockFilter{Code: bpfRetK, K: deny},
		unix.SockFilter{Code: bpfRetK, K: seccompRetAllow},
	)
	n := len(allowed)
	for i, nr := range allowed {
		// Jump over the rest of the list and the deny to the allow.
		p = append(p, unix.SockFilter{Code: bpfJeqK, Jt: uint8(n - i), Jf: 0, K: uint32(nr)})
	}
	p = append(p, unix.SockFilter{Code: bpfRetK, K: deny}, unix.SockFilter{Code: bpfRetK, K: seccompRetAllow})
	return p, nil
}

// installSeccomp installs the allow-list on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC, which also gives every thread the calling
// thread's no_new_privs).
func installSeccomp(extra []uintptr) error {
	if seccompArch == 0 {
		return nil
	}
	prog, err := seccompProgram(seccompArch, append(append([]uintptr(nil), seccompAllowed...), extra...))
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("engine: no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC,
		uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return fmt.Errorf("engine: installing the seccomp filter: %w", errno)
	}
	if r != 0 {
		return fmt.Errorf("engine: installing the seccomp filter: thread %d could not be synchronised", r)
	}
	return nil
}
