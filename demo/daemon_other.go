//go:build !linux

package demo

import "syscall"

// daemonProcAttr is how ptun daemons are started: in their own process
// group, so a Ctrl-C meant for the demo reaches only the demo.
func daemonProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
