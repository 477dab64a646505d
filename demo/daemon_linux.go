package demo

import "syscall"

// daemonProcAttr is how ptun daemons are started.
func daemonProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		// Its own process group, so a Ctrl-C meant for the demo reaches
		// the demo, which then shuts the daemons down in order.
		Setpgid: true,
		// If the demo dies without cleaning up, its daemons die with it.
		// (The signal follows the thread that forked, and the Go runtime
		// keeps that thread for the life of the process.)
		Pdeathsig: syscall.SIGKILL,
	}
}
