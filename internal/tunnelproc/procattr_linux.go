package tunnelproc

import "syscall"

// procAttr is how tunnel processes are started.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		// Its own process group, so a Ctrl-C meant for the caller reaches
		// the caller, which then shuts the daemons down in order.
		Setpgid: true,
		// If the caller dies without cleaning up, they die with it.
		// (The signal follows the thread that forked, and the Go runtime
		// keeps that thread for the life of the process.)
		Pdeathsig: syscall.SIGKILL,
	}
}
