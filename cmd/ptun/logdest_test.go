package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
	"github.com/ptun-vpn/ptun/uapi"
)

// runAsPtunEnv makes the test binary run ptun's main instead of the tests
// (see TestMain). Its value is the syslog socket, the log directory and the
// UAPI socket directory to use, separated by newlines.
const runAsPtunEnv = "PTUN_TEST_RUN_AS_PTUN"

// TestMain lets the test binary be ptun, so that a test can start a real
// daemon (which re-executes itself) with the log and socket paths pointed
// into a temporary directory.
func TestMain(m *testing.M) {
	if v, ok := os.LookupEnv(runAsPtunEnv); ok {
		paths := strings.Split(v, "\n")
		if len(paths) != 3 {
			os.Stderr.WriteString(runAsPtunEnv + " wants three lines\n")
			os.Exit(2)
		}
		syslogSocket, logDir, uapi.SocketDir = paths[0], paths[1], paths[2]
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// setLogPaths points the default log destinations into dir for one test:
// the syslog socket at dir/log.sock (which nothing listens on unless the
// test makes it) and the log directory at dir/ptun.
func setLogPaths(t *testing.T, dir string) (sock, logdir string) {
	oldSock, oldDir := syslogSocket, logDir
	syslogSocket, logDir = filepath.Join(dir, "log.sock"), filepath.Join(dir, "ptun")
	t.Cleanup(func() { syslogSocket, logDir = oldSock, oldDir })
	return syslogSocket, logDir
}

// listenSyslog makes a datagram socket at path, as journald and rsyslog
// do at /dev/log.
func listenSyslog(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readSyslog returns the next message sent to c, failing after timeout.
func readSyslog(t *testing.T, c *net.UnixConn, timeout time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	b := make([]byte, 4096)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("no syslog message within %v: %v", timeout, err)
	}
	return string(b[:n])
}

func TestLogDestination(t *testing.T) {
	defer func(d string) { logDir = d }(logDir)
	logDir = "/var/log/ptun"
	for _, tc := range []struct {
		logFlag    string
		foreground bool
		haveSyslog bool
		kind       logKind
		path       string
	}{
		{"/tmp/x.log", false, true, logToFile, "/tmp/x.log"},
		{"/tmp/x.log", true, true, logToFile, "/tmp/x.log"},
		{"", true, true, logToStderr, ""},
		{"", true, false, logToStderr, ""},
		{"", false, true, logToSyslog, ""},
		{"", false, false, logToFile, "/var/log/ptun/wg0.log"},
	} {
		kind, path := logDestination(tc.logFlag, tc.foreground, tc.haveSyslog, "wg0")
		if kind != tc.kind || path != tc.path {
			t.Errorf("logDestination(%q, foreground %v, syslog %v) = %v %q, want %v %q",
				tc.logFlag, tc.foreground, tc.haveSyslog, kind, path, tc.kind, tc.path)
		}
	}
	if syslogSocket != "/dev/log" {
		t.Errorf("syslogSocket = %q, want /dev/log", syslogSocket)
	}
}

func TestOpenLogSyslog(t *testing.T) {
	sock, logdir := setLogPaths(t, t.TempDir())
	c := listenSyslog(t, sock)
	logger, closeLog, err := openLog("", false, "wg0")
	if err != nil {
		t.Fatal(err)
	}
	defer closeLog()
	logger.Printf("hello %d", 42)
	msg := readSyslog(t, c, 5*time.Second)
	// <daemon.info>TIMESTAMP ptun[PID]: wg0: hello 42
	want := "ptun[" + strconv.Itoa(os.Getpid()) + "]: wg0: hello 42"
	if !strings.HasPrefix(msg, "<30>") || !strings.Contains(msg, want) {
		t.Errorf("syslog got %q, want <30>... %q", msg, want)
	}
	if _, err := os.Stat(logdir); !os.IsNotExist(err) {
		t.Errorf("%s exists (%v), but syslog was there", logdir, err)
	}
}

func TestOpenLogFileWithoutSyslog(t *testing.T) {
	_, logdir := setLogPaths(t, t.TempDir())
	for i := range 2 { // the second time appends
		logger, closeLog, err := openLog("", false, "wg0")
		if err != nil {
			t.Fatal(err)
		}
		logger.Printf("line %d", i)
		closeLog()
	}
	path := filepath.Join(logdir, "wg0.log")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Count(s, "\n") != 2 || !strings.Contains(s, "line 0\n") || !strings.Contains(s, "line 1\n") {
		t.Errorf("%s holds %q, want lines 0 and 1", path, s)
	}
	checkMode(t, path, 0o600)
	checkMode(t, logdir, 0o700)
}

func TestOpenLogFlagWins(t *testing.T) {
	dir := t.TempDir()
	sock, logdir := setLogPaths(t, dir)
	listenSyslog(t, sock)
	path := filepath.Join(dir, "mine.log")
	for _, foreground := range []bool{false, true} {
		logger, closeLog, err := openLog(path, foreground, "wg0")
		if err != nil {
			t.Fatal(err)
		}
		logger.Printf("foreground %v", foreground)
		closeLog()
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), "foreground false\n") || !strings.Contains(string(b), "foreground true\n") {
		t.Errorf("%s holds %q", path, b)
	}
	checkMode(t, path, 0o600)
	if _, err := os.Stat(logdir); !os.IsNotExist(err) {
		t.Errorf("%s exists (%v), but --log was given", logdir, err)
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %v, want %v", path, got, want)
	}
}

// TestDaemonLogs (root): a daemonized interface logs its start and stop to
// syslog when a syslog socket answers, else to LOGDIR/IFNAME.log. The
// daemon is this test binary acting as ptun (TestMain), in a network
// namespace of its own, with the paths pointed into a temporary directory.
func TestDaemonLogs(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "iproute2")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, withSyslog := range []bool{true, false} {
		t.Run(map[bool]string{true: "syslog", false: "file"}[withSyslog], func(t *testing.T) {
			dir := t.TempDir()
			sock, logdir := filepath.Join(dir, "log.sock"), filepath.Join(dir, "ptun")
			var c *net.UnixConn
			if withSyslog {
				c = listenSyslog(t, sock)
			}
			ns, ifname := newNetns(t)
			env := append(os.Environ(), runAsPtunEnv+"="+sock+"\n"+logdir+"\n"+filepath.Join(dir, "run"))
			env = append(env, "WG_PROCESS_FOREGROUND=", "LOG_LEVEL=")
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe, "--ipc", "inproc", ifname)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("ptun %s: %v\n%s", ifname, err, out)
			}
			// The parent returned, the daemon runs on: stop it.
			stopNetnsProcesses(t, ns)

			var got string
			if withSyslog {
				got = readSyslog(t, c, 5*time.Second) + readSyslog(t, c, 5*time.Second)
				if !strings.Contains(got, "ptun[") {
					t.Errorf("syslog messages without the ptun tag: %q", got)
				}
			} else {
				path := filepath.Join(logdir, ifname+".log")
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				got = string(b)
				checkMode(t, path, 0o600)
				checkMode(t, logdir, 0o700)
			}
			t.Logf("log:\n%s", got)
			for _, want := range []string{"interface " + ifname + " starting (pid ", "interface " + ifname + " stopped"} {
				if !strings.Contains(got, want) {
					t.Errorf("the log does not say %q:\n%s", want, got)
				}
			}
			if _, err := os.Stat(logdir); withSyslog && !os.IsNotExist(err) {
				t.Errorf("%s exists (%v), but syslog was there", logdir, err)
			}
		})
	}
}

// newNetns makes a network namespace that is deleted, with whatever runs
// in it, when the test ends, and returns it and a free interface name.
func newNetns(t *testing.T) (ns, ifname string) {
	t.Helper()
	var id [3]byte
	rand.Read(id[:])
	ns = "ptun-cli-" + hex.EncodeToString(id[:])
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() {
		stopNetnsProcesses(t, ns)
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	})
	return ns, "ptl" + hex.EncodeToString(id[:])
}

// stopNetnsProcesses sends SIGTERM to every process in ns and waits up to
// 10 s for them to exit, then SIGKILLs what is left.
func stopNetnsProcesses(t *testing.T, ns string) {
	t.Helper()
	pids := func() []int {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		var pids []int
		for _, f := range bytes.Fields(out) {
			if pid, err := strconv.Atoi(string(f)); err == nil && !isZombie(pid) {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	for _, pid := range pids() {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(pids()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := pids(); len(left) > 0 {
		t.Errorf("processes %v in %s ignored SIGTERM for 10 s; killing them", left, ns)
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// isZombie reports whether pid has exited but not been reaped (a detached
// daemon's zombie may linger when PID 1 does not reap).
func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // gone
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}
