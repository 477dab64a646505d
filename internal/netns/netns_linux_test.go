package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// testPrefix is unique to this test process, so parallel runs never touch
// each other's namespaces.
var testPrefix = func() string {
	var b [4]byte
	rand.Read(b[:])
	return "ptun-nstest-" + hex.EncodeToString(b[:]) + "-"
}()

var nameSeq struct {
	sync.Mutex
	n int
}

func uniqueName(tag string) string {
	nameSeq.Lock()
	defer nameSeq.Unlock()
	nameSeq.n++
	return testPrefix + tag + strconv.Itoa(nameSeq.n)
}

// newNS creates a namespace that is deleted (with any process left in it)
// when t ends.
func newNS(t testing.TB, tag string) *NS {
	t.Helper()
	n, err := New(uniqueName(tag))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.KillProcesses(); err != nil && !errors.Is(err, ErrClosed) {
			t.Error(err)
		}
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// startProcess starts cmd in n and makes sure it is killed and reaped when t
// ends.
func startProcess(t *testing.T, n *NS, cmd *exec.Cmd) {
	t.Helper()
	if err := n.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

// nsID identifies a network namespace by the device and inode of its nsfs
// file.
type nsID struct{ dev, ino uint64 }

func statNS(t testing.TB, path string) nsID {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return nsID{st.Dev, st.Ino}
}

func threadNS(t testing.TB) nsID {
	return statNS(t, "/proc/self/task/"+strconv.Itoa(unix.Gettid())+"/ns/net")
}

// pair is two namespaces joined by a veth with IPv4 and IPv6 addresses.
type pair struct {
	a, b         *NS
	a4, b4       netip.Addr
	a6, b6       netip.Addr
	aLink, bLink string
}

func newPair(t *testing.T) *pair {
	t.Helper()
	p := &pair{
		a: newNS(t, "a"), b: newNS(t, "b"),
		a4: netip.MustParseAddr("198.18.1.1"), b4: netip.MustParseAddr("198.18.1.2"),
		a6: netip.MustParseAddr("2001:db8:1::1"), b6: netip.MustParseAddr("2001:db8:1::2"),
		aLink: "veth-a", bLink: "veth-b",
	}
	if err := Veth(p.a, p.aLink, p.b, p.bLink, 1500); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		ns   *NS
		link string
		pfx  netip.Prefix
	}{
		{p.a, p.aLink, netip.PrefixFrom(p.a4, 24)},
		{p.b, p.bLink, netip.PrefixFrom(p.b4, 24)},
		{p.a, p.aLink, netip.PrefixFrom(p.a6, 64)},
		{p.b, p.bLink, netip.PrefixFrom(p.b6, 64)},
	} {
		if err := x.ns.AddAddr(x.link, x.pfx); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// tcpAcross listens on dst in to, dials it from from, and checks that a
// message crosses and that the connection's source is src.
func tcpAcross(t *testing.T, from, to *NS, src, dst netip.Addr) {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			got <- "read: " + err.Error()
			return
		}
		got <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String() + " " + string(b)
	}()
	var c net.Conn
	if err := from.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case s := <-got:
		if want := src.String() + " hello"; s != want {
			t.Fatalf("server got %q, want %q", s, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection within 10s")
	}
}

func TestVethTCPv4(t *testing.T) {
	testenv.RequireRoot(t)
	p := newPair(t)
	tcpAcross(t, p.a, p.b, p.a4, p.b4)
	tcpAcross(t, p.b, p.a, p.b4, p.a4)

	// The addresses exist only inside the namespaces.
	if ln, err := net.Listen("tcp", netip.AddrPortFrom(p.b4, 0).String()); err == nil {
		ln.Close()
		t.Fatalf("listening on %v worked outside the namespace", p.b4)
	}
}

func TestVethTCPv6(t *testing.T) {
	testenv.RequireRoot(t)
	p := newPair(t)
	tcpAcross(t, p.a, p.b, p.a6, p.b6)
	tcpAcross(t, p.b, p.a, p.b6, p.a6)
}

func TestAddRoute(t *testing.T) {
	testenv.RequireRoot(t)
	p := newPair(t)
	// b owns 198.18.2.1 on its loopback; a reaches it only through the route.
	far := netip.MustParseAddr("198.18.2.1")
	if err := p.b.AddAddr("lo", netip.PrefixFrom(far, 32)); err != nil {
		t.Fatal(err)
	}
	if err := p.a.AddRoute(netip.MustParsePrefix("198.18.2.7/24"), p.aLink); err != nil {
		t.Fatal(err)
	}
	tcpAcross(t, p.a, p.b, p.a4, far)
	if err := p.a.AddRoute(netip.MustParsePrefix("2001:db8:2::/64"), p.aLink); err != nil {
		t.Fatal(err)
	}
	if err := p.a.AddRoute(netip.Prefix{}, p.aLink); err == nil {
		t.Fatal("AddRoute accepted an invalid prefix")
	}
}

func TestSetMTUAndUp(t *testing.T) {
	testenv.RequireRoot(t)
	p := newPair(t)
	if err := p.a.SetMTU(p.aLink, 1400); err != nil {
		t.Fatal(err)
	}
	if err := p.a.SetUp(p.aLink); err != nil {
		t.Fatal(err)
	}
	var ifi *net.Interface
	if err := p.a.Do(func() (err error) {
		ifi, err = net.InterfaceByName(p.aLink)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if ifi.MTU != 1400 || ifi.Flags&net.FlagUp == 0 {
		t.Fatalf("%s: mtu %d flags %v, want 1400 and up", p.aLink, ifi.MTU, ifi.Flags)
	}
	if err := p.a.SetMTU("no-such-link", 1400); err == nil {
		t.Fatal("SetMTU on a missing link succeeded")
	}
}

func TestStartRunsInNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	p := newPair(t)
	want := statNS(t, p.a.Path())
	if host := statNS(t, "/proc/self/ns/net"); host == want {
		t.Fatal("the test process itself is in the new namespace")
	}

	cmd := exec.Command("/bin/sleep", "60")
	startProcess(t, p.a, cmd)
	if got := statNS(t, "/proc/"+strconv.Itoa(cmd.Process.Pid)+"/ns/net"); got != want {
		t.Fatalf("process namespace %v, want %v", got, want)
	}

	out, err := func() ([]byte, error) {
		cmd := exec.Command("/bin/sh", "-c", "cat /proc/self/net/dev")
		var buf strings.Builder
		cmd.Stdout = &buf
		if err := p.b.Start(cmd); err != nil {
			return nil, err
		}
		err := cmd.Wait()
		return []byte(buf.String()), err
	}()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), p.bLink+":") || strings.Contains(string(out), p.aLink+":") {
		t.Fatalf("/proc/self/net/dev in b:\n%s", out)
	}
}

func TestDoSwitchesAndRestores(t *testing.T) {
	testenv.RequireRoot(t)
	n := newNS(t, "do")
	want := statNS(t, n.Path())

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig := threadNS(t)

	if err := n.Do(func() error {
		if got := threadNS(t); got != want {
			t.Errorf("inside Do: namespace %v, want %v", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := threadNS(t); got != orig {
		t.Fatalf("after Do: namespace %v, want %v", got, orig)
	}

	sentinel := errors.New("from fn")
	if err := n.Do(func() error { return sentinel }); err != sentinel {
		t.Fatalf("Do returned %v, want fn's error", err)
	}

	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want boom", r)
			}
		}()
		n.Do(func() error { panic("boom") })
	}()
	if got := threadNS(t); got != orig {
		t.Fatalf("after a panic in Do: namespace %v, want %v", got, orig)
	}
}

func TestDoConcurrent(t *testing.T) {
	testenv.RequireRoot(t)
	nss := []*NS{newNS(t, "c"), newNS(t, "c")}
	ids := []nsID{statNS(t, nss[0].Path()), statNS(t, nss[1].Path())}
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			i := g % 2
			for range 50 {
				err := nss[i].Do(func() error {
					var st unix.Stat_t
					if err := unix.Stat("/proc/self/task/"+strconv.Itoa(unix.Gettid())+"/ns/net", &st); err != nil {
						return err
					}
					if (nsID{st.Dev, st.Ino}) != ids[i] {
						return errors.New("wrong namespace inside Do")
					}
					return nil
				})
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

func TestWaitLink(t *testing.T) {
	testenv.RequireRoot(t)
	a, b := newNS(t, "w"), newNS(t, "w")
	if err := a.WaitLink("lo", time.Second); err != nil {
		t.Fatal(err)
	}
	err := a.WaitLink("late", 50*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WaitLink for a missing link: %v, want a deadline error", err)
	}
	done := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		done <- Veth(a, "late", b, "late-b", 0)
	}()
	if err := a.WaitLink("late", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := b.WaitLink("late-b", time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestCloseRemovesName(t *testing.T) {
	testenv.RequireRoot(t)
	n, err := New(uniqueName("close"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if _, err := os.Stat(n.Path()); err != nil {
		t.Fatal(err)
	}
	if _, err := New(n.Name); !errors.Is(err, os.ErrExist) {
		t.Fatalf("New with a taken name: %v, want ErrExist", err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after Close: stat %s: %v", n.Path(), err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := n.Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do after Close: %v, want ErrClosed", err)
	}
	if err := n.SetUp("lo"); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetUp after Close: %v, want ErrClosed", err)
	}
	for _, bad := range []string{"", ".", "..", "a/b"} {
		if n, err := New(bad); err == nil {
			n.Close()
			t.Errorf("New(%q) succeeded", bad)
		}
	}
}

func TestCleanup(t *testing.T) {
	testenv.RequireRoot(t)
	prefix := uniqueName("crashed") + "-"
	var nss []*NS
	for i := range 2 {
		n, err := New(prefix + strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nss = append(nss, n)
	}
	other := newNS(t, "keep")

	// A process left running in a namespace, as after a crash.
	cmd := exec.Command("/bin/sleep", "60")
	if err := nss[0].Start(cmd); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })

	if errs := Cleanup(prefix); len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, n := range nss {
		if _, err := os.Stat(n.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Cleanup: stat %s: %v", n.Path(), err)
		}
	}
	if _, err := os.Stat(other.Path()); err != nil {
		t.Errorf("Cleanup removed a namespace without the prefix: %v", err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err == nil {
			t.Error("the process in the namespace exited cleanly; want killed")
		}
	case <-time.After(10 * time.Second):
		t.Error("the process in the deleted namespace still runs")
	}
	if errs := Cleanup(""); len(errs) == 0 {
		t.Error("Cleanup with an empty prefix did not refuse")
	}
}

// BenchmarkDo measures one switch into a namespace and back.
func BenchmarkDo(b *testing.B) {
	testenv.RequireRoot(b)
	n := newNS(b, "bench")
	fn := func() error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := n.Do(fn); err != nil {
			b.Fatal(err)
		}
	}
}
