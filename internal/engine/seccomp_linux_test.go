package engine

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const envSeccompChild = "PTUN_ENGINE_TEST_SECCOMP"

func TestMain(m *testing.M) {
	if os.Getenv(envSeccompChild) == "1" {
		os.Exit(seccompChild())
	}
	os.Exit(m.Run())
}

// seccompChild installs the allow-list and reports, one line each, what
// each forbidden and allowed call did.
func seccompChild() int {
	if err := installSeccomp(nil); err != nil {
		fmt.Println("install:", err)
		return 1
	}
	errno := func(err error) string {
		var e syscall.Errno
		if errors.As(err, &e) {
			return e.Error()
		}
		if err == nil {
			return "ok"
		}
		return err.Error()
	}
	_, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	fmt.Println("socket:", errno(err))
	_, err = os.Open("/proc/self/status")
	fmt.Println("open:", errno(err))
	fmt.Println("unshare:", errno(unix.Unshare(unix.CLONE_NEWUSER|unix.CLONE_NEWNET)))
	_, _, e := unix.Syscall(unix.SYS_CLONE3, 0, 0, 0)
	fmt.Println("clone3:", errno(e))
	fmt.Println("execve:", errno(syscall.Exec("/bin/true", []string{"true"}, nil)))
	fmt.Println("ptrace:", errno(unix.PtraceAttach(1)))
	_, err = unix.IoctlGetInt(0, unix.TUNGETVNETHDRSZ)
	fmt.Println("ioctl:", errno(err))
	// The runtime still makes threads (clone without namespace flags),
	// and pipes, eventfds and reads work.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // a thread each
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err == nil {
				unix.Write(p[1], []byte("x"))
				unix.Read(p[0], make([]byte, 1))
				unix.Close(p[0])
				unix.Close(p[1])
			}
		}()
	}
	wg.Wait()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	fmt.Println("eventfd:", errno(err))
	unix.Close(fd)
	fmt.Println("pid:", errno(nil), os.Getpid() > 0)
	return 0
}

// TestSeccompFilter runs the allow-list in a child process: what the
// engine never does fails, what it does works.
func TestSeccompFilter(t *testing.T) {
	if seccompArch == 0 {
		t.Skip("no allow-list for " + runtime.GOARCH)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envSeccompChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{
		"socket: operation not permitted", "open: operation not permitted", "unshare: operation not permitted",
		"clone3: function not implemented", "execve: operation not permitted", "ptrace: operation not permitted", "ioctl: operation not permitted",
		"eventfd: ok", "pid: ok true",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("child lacks %q:\n%s", want, got)
		}
	}
}

// TestSeccompProgram: the filter's shape.
func TestSeccompProgram(t *testing.T) {
	p, err := seccompProgram(unix.AUDIT_ARCH_X86_64, []uintptr{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	last := p[len(p)-1]
	if last.Code != bpfRetK || last.K != seccompRetAllow || p[len(p)-2].K != seccompRetErrno|uint32(syscall.EPERM) {
		t.Fatalf("the program does not end allow/deny: %+v", p[len(p)-2:])
	}
	// Every list entry jumps to the final allow.
	for i, ins := range p {
		if ins.Code == bpfJeqK && ins.K <= 3 && ins.K >= 1 {
			if target := i + 1 + int(ins.Jt); target != len(p)-1 {
				t.Errorf("entry %d for call %d jumps to %d, want %d", i, ins.K, target, len(p)-1)
			}
		}
	}
	if _, err := seccompProgram(unix.AUDIT_ARCH_X86_64, make([]uintptr, 300)); err == nil {
		t.Error("a list too long for one jump was accepted")
	}
}
