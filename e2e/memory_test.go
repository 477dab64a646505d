package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
)

// memPeers is how many peers the memory measurements configure.
const memPeers = 1000

// memQuiet is how long a measurement waits after the last request before
// it reads the processes' memory: ptun returns the garbage of an operation
// on many peers to the system 1 s after it (internal/memtrim).
const memQuiet = 3 * time.Second

// memSettle is how long TestMemoryPerPeer lets the loaded and the control
// daemons run, answering the same `wg show` requests, before the second
// reading: longer than the front's periodic read of the engine's
// endpoints (10 s) twice, so a garbage-collected heap has grown to where
// it stays.
const memSettle = 25 * time.Second

// procMem is a process's resident memory as /proc/PID/status gives it, in
// bytes. File-backed pages (the binary's text and data, mostly) are page
// cache that every process of the same binary shares; anonymous pages
// (heap, stacks) are the process's own.
type procMem struct{ rss, anon, file, shmem int64 }

func readProcMem(t *testing.T, pid int) procMem {
	t.Helper()
	st := procStatus(t, pid)
	kb := func(name string) int64 {
		f := strings.Fields(st[name])
		if len(f) != 2 || f[1] != "kB" {
			t.Fatalf("/proc/%d/status: %s is %q", pid, name, st[name])
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/status: %s is %q", pid, name, st[name])
		}
		return v << 10
	}
	return procMem{rss: kb("VmRSS"), anon: kb("RssAnon"), file: kb("RssFile"), shmem: kb("RssShmem")}
}

func (m procMem) plus(o procMem) procMem {
	return procMem{m.rss + o.rss, m.anon + o.anon, m.file + o.file, m.shmem + o.shmem}
}

func (m procMem) minus(o procMem) procMem {
	return procMem{m.rss - o.rss, m.anon - o.anon, m.file - o.file, m.shmem - o.shmem}
}

// memDaemon is one interface daemon whose processes are measured: for
// ptun the front and its engine, for wireguard-go its one process.
type memDaemon struct {
	n    *node
	pids []int // front (or only process) first
	name []string
}

func (m *memDaemon) read(t *testing.T) []procMem {
	t.Helper()
	out := make([]procMem, len(m.pids))
	for i, pid := range m.pids {
		if !processAlive(pid) {
			t.Fatalf("%s %d of %v is gone", m.name[i], pid, m.n)
		}
		out[i] = readProcMem(t, pid)
	}
	return out
}

// startMemDaemon runs im as interface ifname in h with a private key and
// listen port, and finds its processes.
func startMemDaemon(t *testing.T, h *host, im *impl, ifname string, port int) *memDaemon {
	t.Helper()
	n := &node{h: h, impl: im, ifname: ifname, port: port}
	n.d = startDaemon(t, h, im, ifname, nil)
	n.priv, n.pub = newKeyPair(t)
	n.wg(t, "listen-port", strconv.Itoa(port), "private-key", h.lab.keyFile(t, n.priv))
	m := &memDaemon{n: n, pids: []int{n.d.cmd.Process.Pid}, name: []string{im.name}}
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", m.pids[0])); exe != im.bin {
		t.Fatalf("process %d runs %q, not %s", m.pids[0], exe, im.bin)
	}
	if im == ptun {
		m.name[0] = "ptun front"
		m.pids = append(m.pids, oneEngine(t, n))
		m.name = append(m.name, "ptun engine")
	}
	return m
}

// peersConf writes a wg(8) configuration with the interface's private key
// and listen port and n peers with random keys, each with one /32 of
// 100.80.0.0/16 and no endpoint, and returns its path and the peers' keys.
func peersConf(t *testing.T, dir string, priv key, port, n int) (string, []string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\nListenPort = %d\n", priv, port)
	keys := make([]string, n)
	for i := range keys {
		var k [32]byte
		rand.Read(k[:])
		keys[i] = base64.StdEncoding.EncodeToString(k[:])
		a := netip.AddrFrom4([4]byte{100, 80, byte((i + 1) >> 8), byte(i + 1)})
		fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\nAllowedIPs = %s/32\n", keys[i], a)
	}
	f, err := os.CreateTemp(dir, "peers-*.conf")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(b.String()); err != nil {
		t.Fatal(err)
	}
	return f.Name(), keys
}

// countPeers is how many peers `wg show IFNAME peers` lists.
func countPeers(t *testing.T, n *node) int {
	t.Helper()
	out := mustRun(t, n.h.ns, "wg", "show", n.ifname, "peers")
	return len(strings.Fields(out))
}

// TestMemoryPerPeer measures what 1,000 idle peers cost in memory, ptun
// against wireguard-go, each in a namespace of its own: resident memory of
// each process (VmRSS, and its anonymous and file-backed parts, from
// /proc/PID/status) on an empty device with a key and a port, then after
// `wg setconf` of 1,000 peers (random keys, one /32 of 100.80.0.0/16 each,
// no endpoint). It reports KiB per peer for ptun's front, its engine, both,
// and wireguard-go.
//
// Two figures per process: "after" is the same process before and memQuiet
// after the setconf (the method); "settled" compares the loaded daemon,
// memSettle later, with a control daemon of the same age that got an
// empty setconf and the same `wg show` requests: a garbage-collected heap
// keeps growing after a setconf until its collector's goal, so "after"
// alone may not show what a peer costs for good.
//
// Anonymous memory is the main figure: file-backed pages are the binary's,
// shared by every process that runs it. The test asserts only that the
// peers are configured and generous bounds, never a time.
// PTUN_E2E_MEMORY_PEERS=N configures N peers instead (at most 65,534).
func TestMemoryPerPeer(t *testing.T) {
	peers := envInt(t, "PTUN_E2E_MEMORY_PEERS", memPeers)
	l := newLab(t)
	impls := []struct {
		im *impl
		h  *host
	}{{ptun, l.client}, {wgGo, l.server}}
	type measured struct {
		loaded, control *memDaemon
		empty, after    []procMem
		controlEmpty    []procMem
		setconf         time.Duration
		settled, ctlSet []procMem
	}
	var ms []*measured
	for _, x := range impls {
		m := &measured{
			loaded:  startMemDaemon(t, x.h, x.im, x.im.short+l.id+"m", serverPort),
			control: startMemDaemon(t, x.h, x.im, x.im.short+l.id+"c", serverPort+10),
		}
		ms = append(ms, m)
	}
	time.Sleep(2 * time.Second) // start-up done: engines up, first reads made
	for _, m := range ms {
		m.empty, m.controlEmpty = m.loaded.read(t), m.control.read(t)
	}
	for _, m := range ms {
		conf, _ := peersConf(t, l.dir, m.loaded.n.priv, m.loaded.n.port, peers)
		empty, _ := peersConf(t, l.dir, m.control.n.priv, m.control.n.port, 0)
		start := time.Now()
		mustRun(t, m.loaded.n.h.ns, "wg", "setconf", m.loaded.n.ifname, conf)
		m.setconf = time.Since(start)
		mustRun(t, m.control.n.h.ns, "wg", "setconf", m.control.n.ifname, empty)
	}
	time.Sleep(memQuiet)
	for _, m := range ms {
		// Read before any get: answering one makes garbage too.
		m.after = m.loaded.read(t)
		if got := countPeers(t, m.loaded.n); got != peers {
			t.Fatalf("%v lists %d peers after setconf, want %d", m.loaded.n, got, peers)
		}
	}
	for i := 0; i < 3; i++ {
		time.Sleep(memSettle / 3)
		for _, m := range ms {
			for _, d := range []*memDaemon{m.loaded, m.control} {
				mustRun(t, d.n.h.ns, "wg", "show", d.n.ifname, "dump")
			}
		}
	}
	time.Sleep(memQuiet)
	for _, m := range ms {
		m.settled, m.ctlSet = m.loaded.read(t), m.control.read(t)
	}

	kib := func(v int64) string { return fmt.Sprintf("%.1f", float64(v)/1024) }
	perPeer := func(v int64) string { return fmt.Sprintf("%.2f", float64(v)/1024/float64(peers)) }
	var out strings.Builder
	fmt.Fprintf(&out, "%d idle peers by wg setconf: resident memory in KiB, per peer in KiB\n", peers)
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "process\tempty RSS\tanon\tfile\tloaded RSS\tanon\tfile\tper peer after: anon\tRSS\tsettled: anon\tRSS\tsetconf\t")
	sum := func(x []procMem) procMem {
		var s procMem
		for _, m := range x {
			s = s.plus(m)
		}
		return s
	}
	perPeerAnon := map[string]float64{}
	row := func(name string, e, a, s, c procMem, setconf string) {
		d, ds := a.minus(e), s.minus(c)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name,
			kib(e.rss), kib(e.anon), kib(e.file), kib(a.rss), kib(a.anon), kib(a.file),
			perPeer(d.anon), perPeer(d.rss), perPeer(ds.anon), perPeer(ds.rss), setconf)
		perPeerAnon[name] = float64(d.anon) / 1024 / float64(peers)
	}
	for _, m := range ms {
		setconf := m.setconf.Round(time.Millisecond).String()
		for i := range m.empty {
			if len(m.empty) > 1 {
				row(m.loaded.name[i], m.empty[i], m.after[i], m.settled[i], m.ctlSet[i], "")
			} else {
				row(m.loaded.name[i], m.empty[i], m.after[i], m.settled[i], m.ctlSet[i], setconf)
			}
		}
		if len(m.empty) > 1 {
			row("ptun front+engine", sum(m.empty), sum(m.after), sum(m.settled), sum(m.ctlSet), setconf)
		}
	}
	tw.Flush()
	fmt.Fprintf(&out, "after: the same process before and after the setconf; settled: %v later, against a control daemon with no peers\n", memSettle)
	t.Log("\n" + out.String())

	pt, wg := perPeerAnon["ptun front+engine"], perPeerAnon[wgGo.name]
	t.Logf("anonymous memory per peer: ptun %.2f KiB, wireguard-go %.2f KiB, ratio %.3f", pt, wg, pt/wg)
	// Generous bounds: a regression past them is no matter of noise.
	if pt > 64 {
		t.Errorf("ptun takes %.1f KiB of anonymous memory per peer; want at most 64", pt)
	}
	if wg > 0 && pt > wg {
		t.Errorf("ptun takes more memory per peer (%.2f KiB) than wireguard-go (%.2f KiB)", pt, wg)
	}
}

// TestGatewayThousandDevices runs a gateway (SQLite registry in a temp
// state folder, in a namespace) with 1,000 devices, one per user (the
// sync reads each user's groups: the most queries per device), created
// directly in its registry while it runs. It reports the memory of the
// gateway process (front, registry and sync in one) and of its engine,
// empty and at 1,000 devices, and the time from a registry write that
// creates one more device until `wg show IFNAME peers` lists it, and from
// its revocation until it is gone (several rounds: median, min, max).
func TestGatewayThousandDevices(t *testing.T) {
	l := newLab(t)
	h := l.server
	state := filepath.Join(t.TempDir(), "gw")
	iface := "pgm" + l.id
	mustRun(t, h.ns, ptun.bin, "gateway", "init", "--state", state, "--interface", iface,
		"--endpoint", h.link4.String()+":51820", "--api", h.link4.String()+":8443",
		"--pool", "100.80.0.0/16", "--route", "198.18.2.0/24")
	startGateway(t, h.ns, state)
	gwNode := &node{h: h, impl: ptun, ifname: iface}
	fronts := ptunPIDs(t, h)
	if len(fronts) != 1 {
		t.Fatalf("ptun processes in %s: %v, want the gateway alone", h.ns, fronts)
	}
	m := &memDaemon{n: gwNode, pids: []int{fronts[0], oneEngine(t, gwNode)}, name: []string{"gateway (front, registry, sync)", "gateway's engine"}}

	ctx := context.Background()
	_, reg, err := gateway.Load(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	time.Sleep(2 * time.Second)
	empty := m.read(t)

	newKey := func() registry.Key {
		var k registry.Key
		rand.Read(k[:])
		return k
	}
	start := time.Now()
	for i := range memPeers {
		user := fmt.Sprintf("user%04d", i)
		if _, err := reg.AddUser(ctx, user); err != nil {
			t.Fatal(err)
		}
		if _, err := reg.CreateDevice(ctx, user, registry.DeviceSpec{Name: "laptop", PublicKey: newKey()}); err != nil {
			t.Fatal(err)
		}
	}
	created := time.Since(start)
	waitFor(t, 60*time.Second, fmt.Sprintf("%d peers on %s", memPeers, iface), func() (bool, string) {
		n := countPeers(t, gwNode)
		return n == memPeers, fmt.Sprintf("%d peers", n)
	})
	allPeers := time.Since(start)
	time.Sleep(memQuiet)
	loaded := m.read(t)
	time.Sleep(memSettle)
	settled := m.read(t)

	// One more device, enrolled and revoked, several times. The clock
	// runs from just before the registry write.
	if _, err := reg.AddUser(ctx, "extra"); err != nil {
		t.Fatal(err)
	}
	hasPeer := func(k registry.Key) bool {
		out := mustRun(t, h.ns, "wg", "show", iface, "peers")
		return strings.Contains(out, base64.StdEncoding.EncodeToString(k[:]))
	}
	waitPeer := func(k registry.Key, want bool) time.Duration {
		start := time.Now()
		for time.Since(start) < 10*time.Second {
			if hasPeer(k) == want {
				return time.Since(start)
			}
			time.Sleep(25 * time.Millisecond) // each poll is a get of every peer: not too often
		}
		t.Fatalf("the device's peer present=%v on %s not within 10 s", want, iface)
		return 0
	}
	const rounds = 7
	var enrollT, revokeT, writeT []time.Duration
	for i := range rounds {
		k := newKey()
		t0 := time.Now()
		d, err := reg.CreateDevice(ctx, "extra", registry.DeviceSpec{Name: fmt.Sprintf("phone%d", i), PublicKey: k})
		if err != nil {
			t.Fatal(err)
		}
		w := time.Since(t0)
		enrollT = append(enrollT, w+waitPeer(k, true))
		t0 = time.Now()
		if err := reg.RevokeDevice(ctx, d.ID); err != nil {
			t.Fatal(err)
		}
		writeT = append(writeT, w, time.Since(t0))
		revokeT = append(revokeT, time.Since(t0)+waitPeer(k, false))
	}
	time.Sleep(memQuiet)
	final := m.read(t)

	var out strings.Builder
	fmt.Fprintf(&out, "gateway with %d devices (SQLite, one device per user), resident memory in KiB:\n", memPeers)
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "process\tempty RSS\tanon\tfile\t1000 devices RSS\tanon\tsettled RSS\tanon\tafter rounds RSS\tanon\tper device: anon\tRSS\tsettled anon\t")
	kib := func(v int64) string { return fmt.Sprintf("%.1f", float64(v)/1024) }
	perDev := func(v int64) string { return fmt.Sprintf("%.2f", float64(v)/1024/memPeers) }
	row := func(name string, e, a, s, f procMem) {
		d, ds := a.minus(e), s.minus(e)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name,
			kib(e.rss), kib(e.anon), kib(e.file), kib(a.rss), kib(a.anon), kib(s.rss), kib(s.anon),
			kib(f.rss), kib(f.anon), perDev(d.anon), perDev(d.rss), perDev(ds.anon))
	}
	for i := range m.pids {
		row(m.name[i], empty[i], loaded[i], settled[i], final[i])
	}
	row("both", empty[0].plus(empty[1]), loaded[0].plus(loaded[1]), settled[0].plus(settled[1]), final[0].plus(final[1]))
	tw.Flush()
	fmt.Fprintf(&out, "%d users and devices written in %v; all %d peers on the interface %v after the first write\n",
		memPeers, created.Round(time.Millisecond), memPeers, allPeers.Round(time.Millisecond))
	fmt.Fprintf(&out, "one more device, %d rounds, median (min-max): registry write to peer %s, revoke to peer gone %s; the registry writes alone (create and revoke) %s\n",
		rounds, spread(enrollT), spread(revokeT), spread(writeT))
	t.Log("\n" + out.String())

	// A generous bound, on memory only: the times are reported, and
	// waitPeer fails only past 10 s.
	for i := range m.pids {
		if per := float64(loaded[i].anon-empty[i].anon) / 1024 / memPeers; per > 64 {
			t.Errorf("%s: %.1f KiB of anonymous memory per device", m.name[i], per)
		}
	}
}

func spread(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	r := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
	return fmt.Sprintf("%v (%v-%v)", r(s[len(s)/2]), r(s[0]), r(s[len(s)-1]))
}
