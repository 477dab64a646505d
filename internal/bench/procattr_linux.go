package bench

import "syscall"

// childProcAttr is how the bench starts iperf3: in its own process group,
// so that Ctrl-C reaches only the bench, which then stops it, and killed if
// the bench dies first.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
