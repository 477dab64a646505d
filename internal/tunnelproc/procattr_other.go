//go:build !linux

package tunnelproc

import "syscall"

// procAttr is how tunnel processes are started: in their own process
// group, so a Ctrl-C meant for the caller reaches only the caller.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
