package bench

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, which
// Linux fixes at 100 on every architecture it exports it to userspace.
const userHZ = 100

// procStat is what the bench reads of a process in /proc.
type procStat struct {
	ppid     int
	cpuTicks uint64 // utime + stime, of every thread, live or exited
}

// readProcStat parses /proc/PID/stat.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

// parseProcStat parses the text of /proc/PID/stat. The command name, in
// parentheses, may itself hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("bench: malformed /proc stat %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("bench: short /proc stat %q", b)
	}
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseUint(f[11], 10, 64)
	st, err3 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procStat{}, fmt.Errorf("bench: malformed /proc stat %q", b)
	}
	return procStat{ppid: ppid, cpuTicks: ut + st}, nil
}

// memory is what /proc/PID/status says of a process's resident memory.
type memory struct {
	peak   uint64 // VmHWM: the most resident memory it had, in bytes
	shared uint64 // RssFile + RssShmem now: pages other processes may share
}

// processMemory reads process pid's memory figures.
func processMemory(pid int) (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	return parseMemory(b)
}

func parseMemory(status []byte) (memory, error) {
	var m memory
	found := false
	for _, line := range strings.Split(string(status), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != "VmHWM" && name != "RssFile" && name != "RssShmem" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return memory{}, fmt.Errorf("bench: malformed %s in /proc status: %q", name, rest)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return memory{}, fmt.Errorf("bench: malformed %s in /proc status: %q", name, rest)
		}
		switch name {
		case "VmHWM":
			m.peak, found = kb<<10, true
		default:
			m.shared += kb << 10
		}
	}
	if !found {
		return memory{}, fmt.Errorf("bench: no VmHWM in /proc status")
	}
	return m, nil
}

// endpointPeak is the peak resident memory of an endpoint's processes:
// the sum of their peaks, except that when they all run one executable (a
// front and its engine) the pages they share, the binary's and shared
// memory rings, are counted once (the largest process's), not once per
// process.
func endpointPeak(mems []memory, sameExe bool) uint64 {
	var sum, most uint64
	for _, m := range mems {
		sum += m.peak
		most = max(most, m.shared)
	}
	if !sameExe || len(mems) < 2 {
		return sum
	}
	for _, m := range mems {
		sum -= min(m.shared, m.peak)
	}
	return sum + most
}

// cpuSeconds returns the CPU time used so far by the processes pids (those
// that still exist).
func cpuSeconds(pids []int) float64 {
	var ticks uint64
	for _, pid := range pids {
		if st, err := readProcStat(pid); err == nil {
			ticks += st.cpuTicks
		}
	}
	return float64(ticks) / userHZ
}

// tunnelProcesses returns the processes serving interface ifname: those in
// the network namespace with device and inode nsDev/nsIno whose command
// line holds ifname as an argument, and all their descendants. That finds
// a foreground process, one that put itself in the background (its
// re-executed child keeps the argument), and helper processes it started.
func tunnelProcesses(nsDev, nsIno uint64, ifname string) ([]int, error) {
	children, pids, err := processTree()
	if err != nil {
		return nil, err
	}
	var roots []int
	for _, pid := range pids {
		if !inNetNS(pid, nsDev, nsIno) {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(args) > 1 && slices.Contains(args[1:], ifname) {
			roots = append(roots, pid)
		}
	}
	return descendants(children, roots...), nil
}

// processTree reads /proc: every process's children, and every process
// but this one.
func processTree() (children map[int][]int, pids []int, err error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, nil, err
	}
	self := os.Getpid()
	children = map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		st, err := readProcStat(pid)
		if err != nil {
			continue // gone
		}
		children[st.ppid] = append(children[st.ppid], pid)
		pids = append(pids, pid)
	}
	return children, pids, nil
}

// descendants returns roots and all their descendants in children (as
// processTree reads it), sorted. Descendants in other namespaces count:
// a sandboxed engine is its front's child in a network namespace of its
// own.
func descendants(children map[int][]int, roots ...int) []int {
	seen := map[int]bool{}
	var out []int
	var walk func(int)
	walk = func(pid int) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		out = append(out, pid)
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	slices.Sort(out)
	return out
}
