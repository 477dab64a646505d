package wgcfg

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

func TestError(t *testing.T) {
	inner := errors.New("boom")
	e := &Error{Errno: syscall.EADDRINUSE, Err: inner}
	if !errors.Is(e, inner) || !errors.Is(e, syscall.EADDRINUSE) || errors.Is(e, syscall.EINVAL) {
		t.Fatal("errors.Is does not see through *Error")
	}
	if !strings.Contains(e.Error(), "boom") || !strings.Contains(e.Error(), "address already in use") {
		t.Fatalf("Error() = %q", e.Error())
	}
	if s := (&Error{Errno: syscall.EPROTO}).Error(); !strings.Contains(s, "protocol error") {
		t.Fatalf("Error() without Err = %q", s)
	}
}

func TestErrno(t *testing.T) {
	e := &Error{Errno: syscall.EADDRINUSE, Err: errors.New("boom")}
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{errors.New("x"), syscall.EIO},
		{e, syscall.EADDRINUSE},
		{fmt.Errorf("wrapped: %w", e), syscall.EADDRINUSE},
		{fmt.Errorf("bind: %w", syscall.ENOSPC), syscall.ENOSPC},
		{&Error{Err: syscall.EPERM}, syscall.EPERM}, // no errno of its own: the chain's
	} {
		if got := Errno(c.err, syscall.EIO); got != c.want {
			t.Errorf("Errno(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestCheckInterfaceName(t *testing.T) {
	for _, ok := range []string{"wg0", "a", "ptun-gw_1", "123456789012345", "été"} {
		if err := CheckInterfaceName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "1234567890123456", "a/b", "a:1", "a b", "a\tb", "a\nb", "a\x00"} {
		if err := CheckInterfaceName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
