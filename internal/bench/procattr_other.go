//go:build !linux

package bench

import (
	"errors"
	"syscall"
)

func childProcAttr() *syscall.SysProcAttr           { return &syscall.SysProcAttr{Setpgid: true} }
func inNetNS(pid int, dev, ino uint64) bool         { return false }
func nsID(path string) (dev, ino uint64, err error) { return 0, 0, errors.ErrUnsupported }
