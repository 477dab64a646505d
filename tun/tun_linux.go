//go:build linux

package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/wgcfg"
)

// writeFullWait bounds how long Write waits for a full kernel queue
// (EAGAIN, ENOBUFS) before it drops the packet as drop_tun_write_full.
const writeFullWait = 100 * time.Millisecond

// kernelFrames is the Frames of a Linux TUN file. Reads and writes go
// through Go's netpoller; one ReadFrame and one WriteFrame may run at once.
type kernelFrames struct {
	file   *os.File
	rc     syscall.RawConn
	name   string
	closed atomic.Bool
	// ctl is an AF_INET socket made in the namespace the interface was
	// created in, for MTU ioctls: a socket made later on another thread
	// might sit in another network namespace. -1 when mtu answers.
	ctl int
	mtu func() (int, error)
	// parked is a descriptor that keeps the device open after Park closed
	// file (and so took it out of Go's netpoller); -1 when not parked.
	// Set once, before the Device is shared.
	parked int
	// offload is the TUNSETOFFLOAD argument Create set (-1: none), which
	// Reassert sets again.
	offload int

	// Write syscall state for the RawConn callbacks, guarded by the
	// single-writer rule. The callbacks are method values made once so a
	// write does not allocate a closure.
	wbuf    []byte
	werr    error
	writeFn func(fd uintptr) bool
	retryFn func(fd uintptr) bool

	// Read state, guarded by the single-reader rule.
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(fd uintptr) bool
}

var _ Frames = (*kernelFrames)(nil)

func newKernelFrames(file *os.File, name string, ctl int, mtu func() (int, error)) (*kernelFrames, error) {
	k := &kernelFrames{file: file, name: name, ctl: ctl, mtu: mtu, parked: -1, offload: -1}
	k.writeFn, k.retryFn, k.readFn = k.rawWrite, k.rawRetry, k.rawRead
	rc, err := file.SyscallConn()
	if err != nil {
		return nil, err
	}
	k.rc = rc
	return k, nil
}

// Create creates (or attaches to an unused persistent) TUN interface named
// name and sets its MTU. With offloads it opens /dev/net/tun with
// IFF_VNET_HDR and asks for checksum, TSO4/6 and, if the kernel has them
// (Linux >= 6.2) and opts allows, USO4/6 offloads. The file is non-blocking
// and parks blocked Reads on Go's netpoller. The link is left down.
//
// Errors are one line and name the remedy; ErrNameInUse and ErrInvalidName
// can be tested with errors.Is, as can fs.ErrNotExist (no /dev/net/tun) and
// fs.ErrPermission (no CAP_NET_ADMIN).
func Create(name string, opts Options) (Device, error) {
	if opts.MTU == 0 {
		opts.MTU = DefaultMTU
	}
	if err := validName(name); err != nil {
		return nil, fmt.Errorf("tun: create %q: %w", name, err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
			return nil, fmt.Errorf("tun: create %q: /dev/net/tun is missing; load the tun module (modprobe tun): %w", name, err)
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			return nil, fmt.Errorf("tun: create %q: opening /dev/net/tun needs root or CAP_NET_ADMIN: %w", name, err)
		}
		return nil, fmt.Errorf("tun: create %q: open /dev/net/tun: %w", name, err)
	}
	return setup(fd, name, opts)
}

// setup configures the TUN file fd; it closes fd when it fails.
func setup(fd int, name string, opts Options) (_ Device, err error) {
	owned := false // fd belongs to an os.File
	defer func() {
		if err != nil && !owned {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("tun: create %q: %w", name, ErrInvalidName)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if !opts.DisableOffload {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		switch {
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			return nil, fmt.Errorf("tun: create %q: needs root or CAP_NET_ADMIN: %w", name, err)
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EINVAL) && LinkExists(name):
			return nil, fmt.Errorf("tun: create %q: %w; choose another name or delete it (%v)", name, ErrNameInUse, err)
		case errors.Is(err, unix.EINVAL):
			return nil, fmt.Errorf("tun: create %q: %w (%v)", name, ErrInvalidName, err)
		}
		return nil, fmt.Errorf("tun: create %q: TUNSETIFF: %w", name, err)
	}
	ft := Format{Name: ifr.Name(), VnetHdr: !opts.DisableOffload}
	log := func(format string, args ...any) {
		if opts.Logf != nil {
			opts.Logf(format, args...)
		}
	}
	var usoUnavailable, offloadUnavailable bool
	offload := -1
	features := "none"
	if ft.VnetHdr {
		// No TUNSETVNETHDRSZ: the kernel's default header size is
		// sizeof(struct virtio_net_hdr), the 10 bytes we use.
		//
		// The header is little-endian on little-endian hosts anyway;
		// this makes it so on big-endian ones too.
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETLE, 1); err != nil && !hostLittleEndian() {
			return nil, fmt.Errorf("tun: create %q: TUNSETVNETLE: %w", name, err)
		}
		base := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
		if !opts.DisableUSO {
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, base|unix.TUN_F_USO4|unix.TUN_F_USO6); err == nil {
				ft.USO = true
				offload = base | unix.TUN_F_USO4 | unix.TUN_F_USO6
			} else {
				usoUnavailable = true
				log("tun: %s: kernel has no UDP segmentation offload (%v); continuing without USO", ft.Name, err)
			}
		}
		if !ft.USO {
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, base); err != nil {
				offloadUnavailable = true
				log("tun: %s: TUNSETOFFLOAD refused (%v); continuing without offloads", ft.Name, err)
			} else {
				offload = base
			}
		}
		// A super-packet must fit in one Read's batch: ask the kernel
		// to segment bigger ones (small MSS) itself before the TUN.
		if err := limitGSOSegments(ft.Name, defaultBatchSize); err != nil {
			log("tun: %s: cannot limit GSO to %d segments (%v); super-packets with more are dropped as drop_tun_read_too_many_segments", ft.Name, defaultBatchSize, err)
		}
		ft.GRO = !opts.DisableGRO
		features = "vnet_hdr csum tso4 tso6"
		if ft.USO {
			features += " uso4 uso6"
		}
		if ft.GRO {
			features += " gro-tcp"
			if ft.USO {
				features += " gro-udp"
			}
		}
	}

	ctl, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tun: create %q: control socket: %w", name, err)
	}
	if err := setMTU(ctl, ft.Name, opts.MTU); err != nil {
		unix.Close(ctl)
		return nil, fmt.Errorf("tun: create %q: set MTU %d: %w", name, opts.MTU, err)
	}
	// fd is non-blocking, so os.NewFile registers it with the netpoller.
	file := os.NewFile(uintptr(fd), "/dev/net/tun")
	owned = true
	k, err := newKernelFrames(file, ft.Name, ctl, nil)
	if err != nil {
		unix.Close(ctl)
		file.Close()
		return nil, fmt.Errorf("tun: create %q: %w", name, err)
	}
	k.offload = offload
	d := NewDevice(k, ft, opts.Logf).(*device)
	if usoUnavailable {
		d.st.usoUnavailable.Store(1)
	}
	if offloadUnavailable {
		d.st.offloadUnavailable.Store(1)
	}
	log("tun: %s: created, mtu %d, offloads: %s", ft.Name, opts.MTU, features)
	return d, nil
}

// FromFD returns the Device over fd, a TUN file another process created
// and configured in format ft (and handed over, as the front hands one to
// an engine). The Device owns fd. mtu answers MTU, since the process
// holding fd may sit where it cannot ask the kernel.
func FromFD(fd int, ft Format, mtu func() (int, error), logf func(format string, args ...any)) (Device, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun: %s: handed fd %d: %w", ft.Name, fd, err)
	}
	file := os.NewFile(uintptr(fd), "/dev/net/tun")
	k, err := newKernelFrames(file, ft.Name, -1, mtu)
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("tun: %s: handed fd %d: %w", ft.Name, fd, err)
	}
	return NewDevice(k, ft, logf), nil
}

// kernelFramesOf returns the kernel TUN file under d.
func kernelFramesOf(d Device) (*kernelFrames, error) {
	fr, ok := d.(Framed)
	if !ok {
		return nil, errors.New("tun: not a framed device")
	}
	k, ok := fr.Frames().(*kernelFrames)
	if !ok {
		return nil, errors.New("tun: not a kernel TUN device")
	}
	return k, nil
}

// DupFD returns a new file descriptor (close-on-exec) for the kernel TUN
// file under d, to hand to another process. It fails when d's Frames are
// not a kernel TUN file.
func DupFD(d Device) (int, error) {
	k, err := kernelFramesOf(d)
	if err != nil {
		return -1, err
	}
	if k.parked >= 0 {
		return unix.FcntlInt(uintptr(k.parked), unix.F_DUPFD_CLOEXEC, 0)
	}
	nfd := -1
	var derr error
	if err := k.rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}

// limitGSOSegments sets the interface's gso_max_segs.
func limitGSOSegments(name string, segs int) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetGSOMaxSegs(link, segs)
}

// validName applies the kernel's dev_valid_name rules so a bad name gets a
// clear error. The empty name lets the kernel pick tunN.
func validName(name string) error {
	if err := wgcfg.CheckInterfaceName(name); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidName, err)
	}
	return nil
}

// LinkExists reports whether a network interface called name exists.
func LinkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func hostLittleEndian() bool {
	return binary.NativeEndian.Uint16([]byte{1, 0}) == 1
}

func setMTU(ctl int, name string, mtu int) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint32(uint32(mtu))
	return unix.IoctlIfreq(ctl, unix.SIOCSIFMTU, ifr)
}

// MTU implements Frames by asking the kernel. It fails after Close.
func (k *kernelFrames) MTU() (int, error) {
	if k.closed.Load() {
		return 0, os.ErrClosed
	}
	if k.mtu != nil {
		return k.mtu()
	}
	ifr, err := unix.NewIfreq(k.name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(k.ctl, unix.SIOCGIFMTU, ifr); err != nil {
		return 0, fmt.Errorf("tun: %s: get MTU: %w", k.name, err)
	}
	return int(ifr.Uint32()), nil
}

// Close implements Frames. It is safe to call more than once.
func (k *kernelFrames) Close() error {
	if !k.closed.CompareAndSwap(false, true) {
		return nil
	}
	if k.ctl >= 0 {
		unix.Close(k.ctl)
	}
	if k.parked >= 0 {
		return unix.Close(k.parked)
	}
	return k.file.Close()
}

// closedErr maps an error to os.ErrClosed when the file is closed or its
// interface was deleted: the kernel then answers EBADFD (and reads on some
// kernels EIO). Writes get EIO while the link is down, which is not closed.
func (k *kernelFrames) closedErr(err error, read bool) error {
	if k.closed.Load() || errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD) ||
		read && (errors.Is(err, unix.EIO) || err == io.EOF) {
		return os.ErrClosed
	}
	return err
}

// ReadFrame implements Frames: with wait, it parks in the netpoller until a
// frame comes.
func (k *kernelFrames) ReadFrame(b []byte, wait bool) (int, error) {
	if wait {
		n, err := k.file.Read(b)
		if err != nil {
			return 0, k.closedErr(err, true)
		}
		return n, nil
	}
	n, err := k.readNow(b)
	if err == unix.EAGAIN {
		return 0, ErrWouldBlock
	}
	if err != nil {
		return 0, k.closedErr(err, true)
	}
	return n, nil
}

// readNow makes one read syscall into b without waiting: unix.EAGAIN means
// the kernel's queue is empty.
func (k *kernelFrames) readNow(b []byte) (int, error) {
	k.rbuf = b
	err := k.rc.Read(k.readFn)
	k.rbuf = nil
	if err != nil {
		return 0, err
	}
	return k.rn, k.rerr
}

func (k *kernelFrames) rawRead(fd uintptr) bool {
	k.rn, k.rerr = unix.Read(int(fd), k.rbuf)
	if k.rerr == nil && k.rn == 0 {
		k.rerr = io.EOF
	}
	return true
}

// WriteFrame implements Frames: one write syscall (more only while the
// kernel says its queue is full, for at most writeFullWait). It returns nil,
// os.ErrClosed, or an error wrapping errKernelInvalid, errKernelFull,
// errLinkDown or the errno.
func (k *kernelFrames) WriteFrame(b []byte) error {
	if k.closed.Load() {
		return os.ErrClosed
	}
	return k.sysWrite(b)
}

// rawWrite is the RawConn callback for the first attempt: it never asks the
// poller to wait.
func (k *kernelFrames) rawWrite(fd uintptr) bool {
	k.werr = writeAll(int(fd), k.wbuf)
	return true
}

// rawRetry is the callback while the queue is full: on EAGAIN it lets the
// poller wait for POLLOUT (bounded by the write deadline).
func (k *kernelFrames) rawRetry(fd uintptr) bool {
	k.werr = writeAll(int(fd), k.wbuf)
	return k.werr != unix.EAGAIN
}

func writeAll(fd int, b []byte) error {
	n, err := unix.Write(fd, b)
	if err == nil && n != len(b) {
		return io.ErrShortWrite
	}
	return err
}

// sysWrite writes b with one syscall (more only while the kernel says its
// queue is full, for at most writeFullWait). Called by one writer at a time.
func (k *kernelFrames) sysWrite(b []byte) error {
	k.wbuf = b
	err := k.rc.Write(k.writeFn)
	k.wbuf = nil
	if err != nil {
		return k.closedErr(err, false)
	}
	if k.werr == nil {
		return nil
	}
	if k.werr == unix.EAGAIN || k.werr == unix.ENOBUFS {
		return k.waitWrite(b)
	}
	return k.writeErr(k.werr)
}

func (k *kernelFrames) writeErr(err error) error {
	switch {
	case err == unix.EINVAL:
		return fmt.Errorf("%w: %w", errKernelInvalid, err)
	case err == unix.EAGAIN || err == unix.ENOBUFS:
		return fmt.Errorf("%w: %w", errKernelFull, err)
	case err == unix.EIO:
		return fmt.Errorf("%w: %w", errLinkDown, err)
	}
	if e := k.closedErr(err, false); e == os.ErrClosed {
		return e
	}
	return fmt.Errorf("tun: %s: write: %w", k.name, err)
}

// waitWrite retries a write the kernel found no room for: through the
// netpoller for EAGAIN, with short sleeps for ENOBUFS (which poll does not
// signal), until writeFullWait has passed.
func (k *kernelFrames) waitWrite(b []byte) error {
	deadline := time.Now().Add(writeFullWait)
	backoff := 50 * time.Microsecond
	for k.werr == unix.EAGAIN || k.werr == unix.ENOBUFS {
		if !time.Now().Before(deadline) {
			break
		}
		k.wbuf = b
		var err error
		if k.werr == unix.EAGAIN {
			k.file.SetWriteDeadline(deadline)
			err = k.rc.Write(k.retryFn)
			k.file.SetWriteDeadline(time.Time{})
		} else {
			time.Sleep(backoff)
			backoff = min(2*backoff, 5*time.Millisecond)
			err = k.rc.Write(k.writeFn)
		}
		k.wbuf = nil
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return k.closedErr(err, false)
		}
	}
	if k.werr == nil {
		return nil
	}
	return k.writeErr(k.werr)
}

// Park keeps the kernel TUN device under d open in this process without
// watching it: d's descriptor leaves Go's netpoller. A front that hands the
// device to an engine (and reads and writes nothing itself) parks it, or
// every packet through the device would also wake the front. Afterwards
// Read and Write fail with os.ErrClosed; MTU, DupFD and Close work.
func Park(d Device) error {
	k, err := kernelFramesOf(d)
	if err != nil {
		return err
	}
	if k.parked >= 0 {
		return nil
	}
	fd, err := DupFD(d)
	if err != nil {
		return fmt.Errorf("tun: %s: park: %w", k.name, err)
	}
	k.parked = fd
	return k.file.Close()
}

// Reassert sets again the state of d's TUN file that another process
// holding the same open file (an engine in fd mode) could have changed:
// non-blocking, the offloads Create chose and, with a virtio-net header,
// its size. The front calls it before it hands the file to a new engine.
func Reassert(d Device) error {
	k, err := kernelFramesOf(d)
	if err != nil {
		return err
	}
	fd := k.parked
	if fd < 0 {
		sc, err := k.file.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = sc.Control(func(f uintptr) { serr = reassert(int(f), k.offload, d.(Framed).Format()) })
		if err != nil {
			return err
		}
		return serr
	}
	return reassert(fd, k.offload, d.(Framed).Format())
}

func reassert(fd, offload int, ft Format) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("tun: %s: non-blocking: %w", ft.Name, err)
	}
	if ft.VnetHdr {
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, virtioNetHdrLen); err != nil {
			return fmt.Errorf("tun: %s: TUNSETVNETHDRSZ: %w", ft.Name, err)
		}
	}
	if offload >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offload); err != nil {
			return fmt.Errorf("tun: %s: TUNSETOFFLOAD: %w", ft.Name, err)
		}
	}
	return nil
}

// SetReadDeadline lets a relay interrupt a blocked ReadFrame (it then
// returns os.ErrDeadlineExceeded) without closing the device; the zero
// time clears it.
func (k *kernelFrames) SetReadDeadline(t time.Time) error { return k.file.SetReadDeadline(t) }
