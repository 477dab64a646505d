package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/front"
)

// The front/engine split: every IPC mode carries traffic, the engine holds
// no privilege, it recovers from kill -9 while the front keeps running, and
// it exits when the front dies.

// TestIPCModes: a ptun pair in each mode carries pings and TCP both ways;
// split modes run an engine process per interface, inproc runs none.
func TestIPCModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inproc", "fd", "shm", "seqpacket"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			c, s := modePair(t, mode)
			for _, n := range []*node{c, s} {
				engines := enginePIDs(t, n)
				if want := map[bool]int{true: 0, false: 1}[mode == "inproc"]; len(engines) != want {
					t.Fatalf("%v in %s mode runs %d engine processes %v, want %d", n, mode, len(engines), engines, want)
				}
			}
			pingBothWays(t, c, s)
			tcpBothWays(t, c, s, "2")
			for _, n := range []*node{c, s} {
				st := n.stats(t)
				if st["engine_restarts"] != 0 || st["engine_stats_unavailable"] != 0 {
					t.Errorf("%v: engine_restarts=%d engine_stats_unavailable=%d", n, st["engine_restarts"], st["engine_stats_unavailable"])
				}
				if mode == "shm" && (st["flow_frames_to_engine"] == 0 || st["flow_frames_from_engine"] == 0) {
					t.Errorf("%v: shm relay counted %d frames to and %d from the engine", n, st["flow_frames_to_engine"], st["flow_frames_from_engine"])
				}
				if mode == "seqpacket" && (st["flow_packets_to_engine"] == 0 || st["flow_packets_from_engine"] == 0) {
					t.Errorf("%v: seqpacket relay counted %d packets to and %d from the engine", n, st["flow_packets_to_engine"], st["flow_packets_from_engine"])
				}
				// The front's check of the engine's packets (shm, seqpacket)
				// refuses none of an honest engine's.
				if st["drop_front_source"] != 0 || st["drop_front_malformed"] != 0 {
					t.Errorf("%v: the front refused %d packets of an honest engine by source, %d as malformed", n, st["drop_front_source"], st["drop_front_malformed"])
				}
				logDrops(t, n)
			}
		})
	}
}

// TestEngineConfined checks the engine of each split mode from outside:
// no capability in any set (bounding included), no_new_privs, a seccomp
// filter, a uid of its own (neither root nor shared), namespaces of its
// own, a filesystem with nothing of the host's, its resource limits, not
// readable by another process of its uid (not dumpable), and no descriptor
// but sockets, anonymous inodes (eventfd, epoll, memfd), pipes, /dev/null
// and the TUN device.
func TestEngineConfined(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"fd", "shm", "seqpacket"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			c, s := modePair(t, mode)
			c.ping(t, s.tun4)
			pid := oneEngine(t, c)
			status := procStatus(t, pid)
			for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
				v, err := strconv.ParseUint(status[k], 16, 64)
				if err != nil || v != 0 {
					t.Errorf("engine %d: %s = %q, want 0", pid, k, status[k])
				}
			}
			if status["NoNewPrivs"] != "1" {
				t.Errorf("engine %d: NoNewPrivs = %q, want 1", pid, status["NoNewPrivs"])
			}
			if status["Seccomp"] != "2" {
				t.Errorf("engine %d: Seccomp = %q, want 2 (a filter)", pid, status["Seccomp"])
			}
			uid := -1
			for _, k := range []string{"Uid", "Gid"} {
				ids := strings.Fields(status[k])
				for _, id := range ids {
					n, _ := strconv.Atoi(id)
					if n < 0x7ffe0000 || id != ids[0] {
						t.Errorf("engine %d: %s = %q, want one engine uid (not root, not nobody)", pid, k, status[k])
					}
					uid = n
				}
			}
			if groups := strings.Fields(status["Groups"]); len(groups) != 0 {
				t.Errorf("engine %d: supplementary groups %v, want none", pid, groups)
			}
			// Each engine has a uid of its own: the server's differs.
			if other := procStatus(t, oneEngine(t, s))["Uid"]; strings.Fields(other)[0] == strconv.Itoa(uid) {
				t.Errorf("the client's and the server's engines share uid %d", uid)
			}
			// Namespaces of its own: user, network, mount, pid, ipc, uts.
			front := ptunPIDs(t, c.h)
			for _, ns := range []string{"user", "net", "mnt", "pid", "ipc", "uts"} {
				mine, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
				theirs, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", front[0], ns))
				if err1 != nil || err2 != nil || mine == theirs {
					t.Errorf("engine %d shares its %s namespace with its front (%s, %v %v)", pid, ns, mine, err1, err2)
				}
			}
			// Its filesystem: its own /proc and, for a dynamically linked
			// binary, the library directories; nothing else.
			root, err := os.ReadDir(fmt.Sprintf("/proc/%d/root/", pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range root {
				switch e.Name() {
				case "proc", "lib", "lib64", "lib32", "usr":
				default:
					t.Errorf("engine %d sees /%s", pid, e.Name())
				}
			}
			limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{`Max open files\s+256\s+256`, `Max processes\s+512\s+512`, `Max core file size\s+0\s+0`} {
				if !regexp.MustCompile(want).Match(limits) {
					t.Errorf("engine %d: no limit %q in\n%s", pid, want, limits)
				}
			}
			// Not dumpable: another process of its very uid cannot read its
			// memory or environment.
			for _, file := range []string{"mem", "environ"} {
				cmd := exec.Command("cat", fmt.Sprintf("/proc/%d/%s", pid, file))
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
				out, err := cmd.CombinedOutput()
				if err == nil || !strings.Contains(string(out), "Permission denied") {
					t.Errorf("uid %d read engine %d's %s: %v %q", uid, pid, file, err, out)
				}
			}
			fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, fd := range fds {
				target, _ := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
				kinds = append(kinds, target)
				switch {
				case strings.HasPrefix(target, "socket:"), strings.HasPrefix(target, "anon_inode:"),
					strings.HasPrefix(target, "pipe:"), strings.HasPrefix(target, "/memfd:"),
					target == "/dev/null", target == "/dev/net/tun" && mode == "fd":
				default:
					t.Errorf("engine %d holds fd %s -> %q, which it was not handed", pid, fd.Name(), target)
				}
			}
			t.Logf("engine %d (%s): uid %s, fds %v", pid, mode, status["Uid"], kinds)
		})
	}
}

// TestEngineCrashRecovery kills the client's engine (kill -9) in the middle
// of a TCP transfer: the front keeps running and keeps its interface, a
// new engine takes over within a second with the keys and peers, the
// restart is counted and logged, the transfer completes, and traffic flows
// both ways afterwards.
func TestEngineCrashRecovery(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"fd", "shm", "seqpacket"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			c, s := modePair(t, mode)
			c.ping(t, s.tun4)
			front := c.d.cmd.Process.Pid
			old := oneEngine(t, c)
			before := c.show(t)

			type result struct {
				r   iperfResult
				err error
			}
			done := make(chan result, 1)
			go func() {
				r, err := runIperf3(c.h, s.h, s.tun4, "-t", "6")
				done <- result{r, err}
			}()
			// Kill once data is flowing. runIperf3 waits its turn (one
			// measurement at a time across the parallel tests), so the
			// start is bounded by its own two minutes, not by a guess.
			waitFor(t, 150*time.Second, "the transfer to start", func() (bool, string) {
				st := c.stats(t)
				return st["tun_read_packets"] > 1000, fmt.Sprint(st["tun_read_packets"])
			})
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed := time.Now()
			var next []int
			waitFor(t, 5*time.Second, "a new engine", func() (bool, string) {
				next = enginePIDs(t, c)
				return len(next) == 1 && next[0] != old, fmt.Sprint(next)
			})
			t.Logf("engine %d killed; engine %d seen after %v", old, next[0], time.Since(killed).Round(time.Millisecond))

			res := <-done
			if res.err != nil {
				t.Fatalf("the transfer across the engine's crash failed: %v", res.err)
			}
			if res.r.End.SumReceived.Bytes == 0 {
				t.Fatal("the transfer across the crash moved no bytes")
			}
			// The last second moved data: the tunnel recovered, it did
			// not just carry what was sent before the kill.
			ivs := res.r.Intervals
			if n := len(ivs); n < 2 || ivs[n-1].Sum.Bytes == 0 {
				t.Errorf("the transfer's last second moved no bytes: the tunnel did not recover (%d intervals)", n)
			}
			t.Logf("TCP across the crash: %.0f Mbit/s on average", res.r.mbits())

			if !processAlive(front) {
				t.Fatalf("the front (pid %d) died with its engine", front)
			}
			st := c.stats(t)
			if st["engine_restarts"] != 1 {
				t.Errorf("engine_restarts = %d, want 1", st["engine_restarts"])
			}
			// How long it took is for the log (and ptun bench), not an
			// assertion: the machine is shared.
			t.Logf("engine_last_restart_us = %d", st["engine_last_restart_us"])
			if us := st["engine_last_restart_us"]; us == 0 {
				t.Errorf("engine_last_restart_us = 0: the restart was not measured")
			}
			after := c.show(t)
			if after.PublicKey != before.PublicKey || after.ListenPort != before.ListenPort || len(after.Peers) != len(before.Peers) {
				t.Errorf("configuration after the restart: key %s port %d %d peers; before: key %s port %d %d peers",
					after.PublicKey, after.ListenPort, len(after.Peers), before.PublicKey, before.ListenPort, len(before.Peers))
			}
			log, _ := os.ReadFile(c.d.logPath)
			if !regexp.MustCompile(`engine exited \(signal: killed\).*took over in .*\(restart 1\)`).Match(log) {
				t.Errorf("the front's log does not report the restart:\n%s", tail(c.d.logPath, 2000))
			}
			pingBothWays(t, c, s)
		})
	}
}

// TestFrontDeathEndsEngine: when the front is killed (kill -9, so it
// cannot clean up), its engine exits by itself.
func TestFrontDeathEndsEngine(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	c := l.client.start(ptun, startOpts{env: []string{"PTUN_IPC=shm"}})
	engine := oneEngine(t, c)
	// ip netns exec execs ptun, so the daemon's pid is the front's.
	if err := c.d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.d.done
	waitFor(t, 5*time.Second, "the engine to exit after its front died", func() (bool, string) {
		return !processAlive(engine), fmt.Sprintf("engine %d still running", engine)
	})
}

// modePair starts a ptun client and server, each other's peers, in IPC
// mode.
func modePair(t *testing.T, mode string) (c, s *node) {
	t.Helper()
	env := []string{"PTUN_IPC=" + mode}
	return newLab(t).pair(pairOpts{client: ptun, server: ptun, clientEnv: env, serverEnv: env})
}

// oneEngine returns the pid of n's engine, failing unless there is exactly
// one.
func oneEngine(t *testing.T, n *node) int {
	t.Helper()
	pids := enginePIDs(t, n)
	if len(pids) != 1 {
		t.Fatalf("engines of %v: %v, want one", n, pids)
	}
	return pids[0]
}

// enginePIDs lists n's engine processes: children of a ptun process in n's
// namespace (the front; an engine has a network namespace of its own)
// whose command line is the engine role for n's interface.
func enginePIDs(t *testing.T, n *node) []int {
	t.Helper()
	fronts := map[string]bool{}
	for _, pid := range ptunPIDs(t, n.h) {
		fronts[strconv.Itoa(pid)] = true
	}
	return processes(t, func(pid int) bool {
		if !isEngineOf(pid, n.ifname) {
			return false
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut after ')'.
		rest := string(st)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		return len(f) > 1 && fronts[f[1]]
	})
}

// isEngineOf reports whether process pid runs the engine role of ifname.
func isEngineOf(pid int, ifname string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	return len(args) >= 3 && args[1] == "--engine-of" && args[2] == ifname
}

// procStatus returns /proc/PID/status as a map.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// TestInterfaceDeletedStops: deleting the interface stops the front and
// its engine in every split mode, whether the engine (fd) or the front's
// relay (shm, seqpacket) finds the TUN gone.
func TestInterfaceDeletedStops(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"fd", "shm", "seqpacket"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			c := l.client.start(ptun, startOpts{env: []string{"PTUN_IPC=" + mode}})
			engine := oneEngine(t, c)
			mustRun(t, c.h.ns, "ip", "link", "del", c.ifname)
			select {
			case <-c.d.done:
			case <-time.After(5 * time.Second):
				t.Fatalf("the front did not exit within 5 s of the interface's deletion:\n%s", tail(c.d.logPath, 2000))
			}
			waitFor(t, 5*time.Second, "the engine to exit", func() (bool, string) {
				return !processAlive(engine), fmt.Sprintf("engine %d still running", engine)
			})
			if _, err := os.Stat(socketPath(c.ifname)); err == nil {
				t.Errorf("%s still exists", socketPath(c.ifname))
			}
		})
	}
}

// TestFrontCapabilities: once up, the front holds only the capabilities it
// needs (front.Keep), in every set, and cannot get others back.
func TestFrontCapabilities(t *testing.T) {
	t.Parallel()
	c, s := modePair(t, "fd")
	c.ping(t, s.tun4)
	var want uint64
	for _, cp := range front.Keep {
		want |= 1 << cp
	}
	fronts := ptunPIDs(t, c.h)
	if len(fronts) != 1 {
		t.Fatalf("fronts of %v: %v, want one", c, fronts)
	}
	status := procStatus(t, fronts[0])
	for _, k := range []string{"CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		v, err := strconv.ParseUint(status[k], 16, 64)
		if err != nil || v != want {
			t.Errorf("front %d: %s = %q, want %016x", fronts[0], k, status[k], want)
		}
	}
}

// TestPrivateBinary: a ptun binary that only root may read and execute
// (built or installed under umask 077) still starts its engine, which no
// uid of its own could execute: the front starts it from a sealed copy in
// memory.
func TestPrivateBinary(t *testing.T) {
	t.Parallel()
	requireLab(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	bin := filepath.Join(dir, "ptun")
	src, err := os.ReadFile(ptun.bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o700); err != nil {
		t.Fatal(err)
	}
	private := &impl{name: "ptun (mode 0700)", short: "pv", bin: bin, env: ptun.env}
	c, s := newLab(t).pair(pairOpts{client: private, server: ptun})
	c.ping(t, s.tun4)
	engines := processes(t, func(pid int) bool { return isEngineOf(pid, c.ifname) })
	for _, pid := range engines {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		t.Logf("engine %d of %s runs %s", pid, c, exe)
		if !strings.HasPrefix(exe, "/memfd:ptun-engine") {
			t.Errorf("engine %d runs %q, want the sealed copy /memfd:ptun-engine", pid, exe)
		}
	}
	if len(engines) == 0 {
		t.Fatalf("no engine of %s found", c)
	}
}
