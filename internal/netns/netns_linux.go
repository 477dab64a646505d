package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a named network namespace created by New. Its methods are safe for
// concurrent use.
type NS struct {
	// Name is the namespace's name; it is mounted at RunDir/Name.
	Name string

	mu       sync.Mutex      // guards the fields below and serializes netlink requests
	fd       int             // open handle on the namespace; -1 after Close
	nl       *netlink.Handle // rtnetlink socket inside the namespace
	closed   bool
	closeErr error // what the first Close returned
}

// runDirMu serializes preparing RunDir within this process.
var runDirMu sync.Mutex

// New creates the network namespace name, mounts it at RunDir/name (as
// `ip netns add` does) and brings its loopback up. It fails, wrapping
// fs.ErrExist, if a namespace of that name already exists. The caller must
// Close it.
func New(name string) (*NS, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') || len(name) > 200 {
		return nil, fmt.Errorf("netns: invalid namespace name %q", name)
	}
	if err := prepareRunDir(); err != nil {
		return nil, err
	}
	path := filepath.Join(RunDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("netns: create %s: %w", name, err)
	}
	f.Close()
	if err := mountNewNamespace(path); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("netns: create %s: %w", name, err)
	}
	n := &NS{Name: name, fd: -1}
	if err := n.open(); err != nil {
		if n.nl != nil {
			n.nl.Close()
		}
		if n.fd >= 0 {
			unix.Close(n.fd)
		}
		deleteNamed(path)
		return nil, fmt.Errorf("netns: create %s: %w", name, err)
	}
	return n, nil
}

// open takes a handle on the mounted namespace, opens a netlink socket in it
// and brings lo up.
func (n *NS) open() error {
	fd, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	n.fd = fd
	h, err := netlink.NewHandleAt(vnetns.NsHandle(fd), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	n.nl = h
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}

// prepareRunDir makes RunDir exist and be a shared mount point, so that a
// namespace mounted there is seen from every mount namespace sharing it
// (iproute2 does the same, and we must agree with it).
func prepareRunDir() error {
	runDirMu.Lock()
	defer runDirMu.Unlock()
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == unix.EINVAL { // not a mount point yet: make it one
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("netns: bind %s: %w", RunDir, err)
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("netns: make %s shared: %w", RunDir, err)
	}
	return nil
}

// mountNewNamespace creates a network namespace on a throwaway locked thread
// and bind-mounts it at path, which must exist.
func mountNewNamespace(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// If this thread's namespace cannot be restored it stays locked, so
		// the runtime ends it with this goroutine and no other goroutine
		// ever runs in the new namespace by accident.
		orig, err := openThreadNS()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := "/proc/self/task/" + strconv.Itoa(unix.Gettid()) + "/ns/net"
		err = unix.Mount(self, path, "none", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind mount: %w", err)
		}
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func openThreadNS() (int, error) {
	p := "/proc/self/task/" + strconv.Itoa(unix.Gettid()) + "/ns/net"
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", p, err)
	}
	return fd, nil
}

// deleteNamed unmounts and removes a namespace mount point. A missing or
// unmounted path is not an error.
func deleteNamed(path string) error {
	var errs []error
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		errs = append(errs, fmt.Errorf("unmount %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Path is where the namespace is mounted (RunDir/Name).
func (n *NS) Path() string { return filepath.Join(RunDir, n.Name) }

// Close deletes the namespace's name and this NS's handles on it. The kernel
// frees the namespace, with its devices, once no process, socket or mount
// still refers to it: processes started in it must be ended by the caller.
// Close is idempotent; later calls return the first call's result.
func (n *NS) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return n.closeErr
	}
	n.closed = true
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	if n.fd >= 0 {
		unix.Close(n.fd)
		n.fd = -1
	}
	n.closeErr = deleteNamed(n.Path())
	if n.closeErr != nil {
		n.closeErr = fmt.Errorf("netns: close %s: %w", n.Name, n.closeErr)
	}
	return n.closeErr
}

// Do runs fn on the calling goroutine with its OS thread locked and switched
// into n, then switches the thread back. Sockets fn creates belong to n for
// their whole life, wherever they are used afterwards. Goroutines fn starts
// run in the caller's namespace, not n's (so a net.Dial that races several
// addresses may not stay in n: dial one address). fn may panic or call
// t.FailNow; the thread is restored either way.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := openThreadNS()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: %w", err)
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		unix.Close(orig)
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: %w", n.Name, ErrClosed)
	}
	err = unix.Setns(n.fd, unix.CLONE_NEWNET)
	n.mu.Unlock()
	if err != nil {
		unix.Close(orig)
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: setns: %w", n.Name, err)
	}
	defer func() {
		err := unix.Setns(orig, unix.CLONE_NEWNET)
		unix.Close(orig)
		if err != nil {
			// The thread stays locked, so the runtime discards it when this
			// goroutine exits; but this goroutine itself would go on in the
			// wrong namespace, which no caller can be expected to handle.
			panic(fmt.Sprintf("netns %s: cannot switch thread back to its namespace: %v", n.Name, err))
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// Start starts cmd inside n: the fork happens on a thread switched into n, so
// the process and its children live in n. The caller waits for (or kills)
// cmd as usual.
func (n *NS) Start(cmd *exec.Cmd) error {
	return n.Do(cmd.Start)
}

// withLink runs fn with n's netlink handle and the link named ifname, under
// n.mu.
func (n *NS) withLink(ifname string, fn func(h *netlink.Handle, l netlink.Link) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("netns %s: %w", n.Name, ErrClosed)
	}
	l, err := n.nl.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("netns %s: link %s: %w", n.Name, ifname, err)
	}
	if err := fn(n.nl, l); err != nil {
		return fmt.Errorf("netns %s: link %s: %w", n.Name, ifname, err)
	}
	return nil
}

// dupFD returns a new descriptor for n's namespace; the caller closes it.
func (n *NS) dupFD() (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return -1, fmt.Errorf("netns %s: %w", n.Name, ErrClosed)
	}
	return unix.FcntlInt(uintptr(n.fd), unix.F_DUPFD_CLOEXEC, 0)
}

// Veth creates a veth pair, aName in a and bName in b (a and b may be the
// same NS), sets both ends' MTU (0 keeps the kernel's default) and brings
// both up. On error neither end is left behind.
func Veth(a *NS, aName string, b *NS, bName string, mtu int) error {
	if mtu < 0 {
		return fmt.Errorf("netns: veth %s: negative MTU %d", aName, mtu)
	}
	bfd, err := b.dupFD()
	if err != nil {
		return err
	}
	defer unix.Close(bfd)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = aName
	attrs.MTU = mtu
	v := netlink.NewVeth(attrs)
	v.PeerName = bName
	v.PeerMTU = uint32(mtu)
	v.PeerNamespace = netlink.NsFd(bfd)

	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return fmt.Errorf("netns %s: %w", a.Name, ErrClosed)
	}
	err = a.nl.LinkAdd(v)
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("netns %s: add veth %s<->%s/%s: %w", a.Name, aName, b.Name, bName, err)
	}
	err = b.SetUp(bName)
	if err == nil {
		err = a.SetUp(aName)
	}
	// Until the kernel's link watcher has seen the carrier, the devices'
	// queues drop every packet, and the first SYN or neighbour solicitation
	// would cost a one-second retransmit.
	if err == nil {
		err = b.waitOperUp(bName, vethUpTimeout)
	}
	if err == nil {
		err = a.waitOperUp(aName, vethUpTimeout)
	}
	if err != nil {
		a.withLink(aName, func(h *netlink.Handle, l netlink.Link) error { return h.LinkDel(l) })
		return err
	}
	return nil
}

// vethUpTimeout bounds how long Veth waits for a new pair to carry packets.
const vethUpTimeout = 10 * time.Second

// waitOperUp polls until ifname's operational state is up.
func (n *NS) waitOperUp(ifname string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var state netlink.LinkOperState
		err := n.withLink(ifname, func(_ *netlink.Handle, l netlink.Link) error {
			state = l.Attrs().OperState
			return nil
		})
		if err != nil || state == netlink.OperUp {
			return err
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("netns %s: link %s still %v after %v: %w", n.Name, ifname, state, timeout, os.ErrDeadlineExceeded)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// AddAddr adds address p (address and prefix length, such as 198.18.0.1/24)
// to ifname. IPv6 addresses skip duplicate address detection, so they are
// usable as soon as AddAddr returns.
func (n *NS) AddAddr(ifname string, p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("netns %s: invalid prefix %v", n.Name, p)
	}
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
	addr := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	return n.withLink(ifname, func(h *netlink.Handle, l netlink.Link) error {
		return h.AddrAdd(l, addr)
	})
}

// SetUp brings ifname up.
func (n *NS) SetUp(ifname string) error {
	return n.withLink(ifname, func(h *netlink.Handle, l netlink.Link) error {
		return h.LinkSetUp(l)
	})
}

// SetMTU sets ifname's MTU.
func (n *NS) SetMTU(ifname string, mtu int) error {
	return n.withLink(ifname, func(h *netlink.Handle, l netlink.Link) error {
		return h.LinkSetMTU(l, mtu)
	})
}

// AddRoute routes dst (masked to its prefix length) directly out of ifname.
func (n *NS) AddRoute(dst netip.Prefix, ifname string) error {
	if !dst.IsValid() {
		return fmt.Errorf("netns %s: invalid prefix %v", n.Name, dst)
	}
	dst = netip.PrefixFrom(dst.Addr().Unmap(), dst.Bits()).Masked()
	return n.withLink(ifname, func(h *netlink.Handle, l netlink.Link) error {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst)}
		if dst.Addr().Is4() {
			r.Scope = netlink.SCOPE_LINK
		}
		return h.RouteAdd(r)
	})
}

// WaitLink polls until a link named ifname exists in n, for at most timeout.
// On timeout the error wraps os.ErrDeadlineExceeded.
func (n *NS) WaitLink(ifname string, timeout time.Duration) error {
	const poll = 10 * time.Millisecond
	deadline := time.Now().Add(timeout)
	for {
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			return fmt.Errorf("netns %s: %w", n.Name, ErrClosed)
		}
		_, err := n.nl.LinkByName(ifname)
		n.mu.Unlock()
		if err == nil {
			return nil
		}
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return fmt.Errorf("netns %s: link %s: %w", n.Name, ifname, err)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("netns %s: link %s did not appear within %v: %w", n.Name, ifname, timeout, os.ErrDeadlineExceeded)
		}
		time.Sleep(min(poll, time.Until(deadline)+time.Millisecond))
	}
}

// Cleanup deletes the namespaces in RunDir whose names start with prefix,
// such as those a crashed test run left behind. Processes still running in
// one of them are killed (SIGKILL) first, so its devices go away with it.
// It returns every error met; prefix must not be empty.
func Cleanup(prefix string) []error {
	if prefix == "" {
		return []error{errors.New("netns: Cleanup needs a non-empty prefix")}
	}
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []error{fmt.Errorf("netns: %w", err)}
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		path := filepath.Join(RunDir, e.Name())
		if err := killProcessesIn(path); err != nil {
			errs = append(errs, fmt.Errorf("netns %s: %w", e.Name(), err))
		}
		if err := deleteNamed(path); err != nil {
			errs = append(errs, fmt.Errorf("netns %s: %w", e.Name(), err))
		}
	}
	return errs
}

// KillProcesses sends SIGKILL to every process (other than this one) whose
// network namespace is n, such as daemons a test started and lost track of.
// It does not wait for them to exit.
func (n *NS) KillProcesses() error {
	n.mu.Lock()
	closed := n.closed
	n.mu.Unlock()
	if closed {
		return fmt.Errorf("netns %s: %w", n.Name, ErrClosed)
	}
	if err := killProcessesIn(n.Path()); err != nil {
		return fmt.Errorf("netns %s: %w", n.Name, err)
	}
	return nil
}

// killProcessesIn sends SIGKILL to every process (other than this one) whose
// network namespace is the one mounted at path.
func killProcessesIn(path string) error {
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		return err
	}
	var nsfs unix.Statfs_t
	if err := unix.Statfs(path, &nsfs); err != nil {
		return err
	}
	if nsfs.Type != unix.NSFS_MAGIC {
		return nil // never mounted (a run died half-way through New)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	self := os.Getpid()
	var errs []error
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+p.Name()+"/ns/net", &st) != nil {
			continue // gone, or a kernel thread
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			if err := unix.Kill(pid, unix.SIGKILL); err != nil && err != unix.ESRCH {
				errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
			}
		}
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}
