//go:build linux

package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"ptun/metrics"
)

// writeFullWait bounds how long Write waits for a full kernel queue
// (EAGAIN, ENOBUFS) before it drops the packet as drop_tun_write_full.
const writeFullWait = 100 * time.Millisecond

// device is a Linux TUN interface. Read may run concurrently with Write;
// concurrent Writes are serialized by batchWriter.mu, concurrent Reads by
// readMu.
type device struct {
	file   *os.File
	rc     syscall.RawConn
	name   string
	vnet   bool
	closed atomic.Bool
	// ctl is an AF_INET socket made in the namespace the interface was
	// created in, for MTU ioctls: a socket made later on another thread
	// might sit in another network namespace.
	ctl int
	st  counters
	w   batchWriter

	// Write syscall state for the RawConn callbacks, guarded by w.mu.
	// The callbacks are method values made once so a write does not
	// allocate a closure.
	wbuf     []byte
	werr     error
	writeFn  func(fd uintptr) bool
	retryFn  func(fd uintptr) bool
	logf     func(format string, args ...any)
	features string

	// Read state, guarded by readMu: the buffer and results of readFn,
	// and a packet read but not yet returned because the batch had no
	// room left for its segments.
	readMu  sync.Mutex
	rbuf    []byte
	rn      int
	rerr    error
	readFn  func(fd uintptr) bool
	pending []byte
}

var _ Device = (*device)(nil)
var _ metrics.Reporter = (*device)(nil)

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
	d, err := setup(fd, name, opts)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// setup configures the TUN file fd; it closes fd when it fails.
func setup(fd int, name string, opts Options) (_ *device, err error) {
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
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EINVAL) && linkExists(name):
			return nil, fmt.Errorf("tun: create %q: %w; choose another name or delete it (%v)", name, ErrNameInUse, err)
		case errors.Is(err, unix.EINVAL):
			return nil, fmt.Errorf("tun: create %q: %w (%v)", name, ErrInvalidName, err)
		}
		return nil, fmt.Errorf("tun: create %q: TUNSETIFF: %w", name, err)
	}
	d := &device{name: ifr.Name(), vnet: !opts.DisableOffload, logf: opts.Logf}
	d.w = batchWriter{vnet: d.vnet, sys: d.sysWrite, st: &d.st, logf: opts.Logf}
	d.writeFn, d.retryFn = d.rawWrite, d.rawRetry
	d.readFn = d.rawRead

	if d.vnet {
		// No TUNSETVNETHDRSZ: the kernel's default header size is
		// sizeof(struct virtio_net_hdr), the 10 bytes we use.
		//
		// The header is little-endian on little-endian hosts anyway;
		// this makes it so on big-endian ones too.
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETLE, 1); err != nil && !hostLittleEndian() {
			return nil, fmt.Errorf("tun: create %q: TUNSETVNETLE: %w", name, err)
		}
		base := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
		uso := false
		if !opts.DisableUSO {
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, base|unix.TUN_F_USO4|unix.TUN_F_USO6); err == nil {
				uso = true
			} else {
				d.st.usoUnavailable.Store(1)
				d.log("tun: %s: kernel has no UDP segmentation offload (%v); continuing without USO", d.name, err)
			}
		}
		if !uso {
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, base); err != nil {
				d.st.offloadUnavailable.Store(1)
				d.log("tun: %s: TUNSETOFFLOAD refused (%v); continuing without offloads", d.name, err)
			}
		}
		// A super-packet must fit in one Read's batch: ask the kernel
		// to segment bigger ones (small MSS) itself before the TUN.
		if err := limitGSOSegments(d.name, defaultBatchSize); err != nil {
			d.log("tun: %s: cannot limit GSO to %d segments (%v); super-packets with more are dropped as drop_tun_read_too_many_segments", d.name, defaultBatchSize, err)
		}
		d.w.tcpGRO = !opts.DisableGRO
		d.w.udpGRO = !opts.DisableGRO && uso
		d.features = "vnet_hdr csum tso4 tso6"
		if uso {
			d.features += " uso4 uso6"
		}
		if d.w.tcpGRO {
			d.features += " gro-tcp"
		}
		if d.w.udpGRO {
			d.features += " gro-udp"
		}
	} else {
		d.features = "none"
	}

	d.ctl, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tun: create %q: control socket: %w", name, err)
	}
	if err := d.setMTU(opts.MTU); err != nil {
		unix.Close(d.ctl)
		return nil, fmt.Errorf("tun: create %q: set MTU %d: %w", name, opts.MTU, err)
	}
	// fd is non-blocking, so os.NewFile registers it with the netpoller.
	d.file = os.NewFile(uintptr(fd), "/dev/net/tun")
	owned = true
	rc, err := d.file.SyscallConn()
	if err != nil {
		unix.Close(d.ctl)
		d.file.Close()
		return nil, fmt.Errorf("tun: create %q: %w", name, err)
	}
	d.rc = rc
	d.log("tun: %s: created, mtu %d, offloads: %s", d.name, opts.MTU, d.features)
	return d, nil
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
	if len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidName, unix.IFNAMSIZ-1)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\v\f\r\x00") {
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	return nil
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func hostLittleEndian() bool {
	return binary.NativeEndian.Uint16([]byte{1, 0}) == 1
}

func (d *device) log(format string, args ...any) {
	if d.logf != nil {
		d.logf(format, args...)
	}
}

func (d *device) setMTU(mtu int) error {
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return err
	}
	ifr.SetUint32(uint32(mtu))
	return unix.IoctlIfreq(d.ctl, unix.SIOCSIFMTU, ifr)
}

// MTU implements Device by asking the kernel. It fails after Close.
func (d *device) MTU() (int, error) {
	if d.closed.Load() {
		return 0, os.ErrClosed
	}
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(d.ctl, unix.SIOCGIFMTU, ifr); err != nil {
		return 0, fmt.Errorf("tun: %s: get MTU: %w", d.name, err)
	}
	return int(ifr.Uint32()), nil
}

// Name implements Device.
func (d *device) Name() string { return d.name }

// BatchSize implements Device: 64, the interface's gso_max_segs, so that a
// super-packet always fits in one Read.
func (d *device) BatchSize() int { return defaultBatchSize }

// Stats implements metrics.Reporter.
func (d *device) Stats() []metrics.Counter { return d.st.snapshot() }

// Close implements Device. It is safe to call more than once.
func (d *device) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	unix.Close(d.ctl)
	return d.file.Close()
}

// closedErr maps an error to os.ErrClosed when the device is closed or its
// interface was deleted: the kernel then answers EBADFD (and reads on some
// kernels EIO). Writes get EIO while the link is down, which is not closed.
func (d *device) closedErr(err error, read bool) error {
	if d.closed.Load() || errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD) ||
		read && (errors.Is(err, unix.EIO) || err == io.EOF) {
		return os.ErrClosed
	}
	return err
}

// Read implements Device. It waits (in the netpoller) for the first packet,
// then goes on reading plain packets, without waiting, while the kernel has
// more queued and bufs have room: one wakeup serves a whole burst. A GSO
// super-packet is split into as many bufs as it has segments and ends the
// batch. A super-packet read after plain packets that does not fit in the
// room left is kept, and is the first packet of the next Read: nothing is
// dropped for want of buffers.
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if offset < MinOffset || len(bufs) == 0 || len(sizes) == 0 || len(bufs[0]) <= offset {
		return 0, errBadOffset
	}
	d.readMu.Lock()
	defer d.readMu.Unlock()
	limit := min(len(bufs), len(sizes))
	total := 0
	for total < limit {
		buf := bufs[total][offset:]
		if d.vnet {
			buf = bufs[total][offset-virtioNetHdrLen:]
		}
		var nr int
		var err error
		switch {
		case total == 0 && len(d.pending) > 0:
			nr = copy(buf, d.pending)
			d.pending = d.pending[:0]
		case total == 0:
			nr, err = d.file.Read(buf)
		default:
			nr, err = d.readNow(buf)
		}
		if err != nil {
			if total > 0 {
				// EAGAIN ends the burst; another error will come
				// back on the next Read, which has nothing to return.
				return total, nil
			}
			return 0, d.closedErr(err, true)
		}
		d.st.reads.Add(1)
		if !d.vnet {
			sizes[total] = nr
			d.st.packetsIn.Add(1)
			d.st.bytesIn.Add(uint64(nr))
			total++
			continue
		}
		res, err := processRead(bufs[total:limit], sizes[total:limit], offset, nr)
		if res.drop == dropReadTooManySegs && total > 0 {
			// It may fit in a whole batch: keep it for the next Read.
			d.pending = append(d.pending[:0], buf[:nr]...)
			return total, nil
		}
		if res.drop != dropNone {
			d.st.readDrops[res.drop].Add(1)
			if err != nil {
				return total, err
			}
			continue
		}
		if err != nil {
			return total, err
		}
		if res.split {
			d.st.gsoSplit.Add(1)
			d.st.gsoSegments.Add(uint64(res.n))
		}
		if res.csumed {
			d.st.csumCompleted.Add(1)
		}
		d.st.packetsIn.Add(uint64(res.n))
		d.st.bytesIn.Add(uint64(nr - virtioNetHdrLen))
		total += res.n
		if res.split {
			// A super-packet is a batch of its own; reading on would
			// likely bring another that does not fit in the room left,
			// and cost a copy to keep it.
			return total, nil
		}
	}
	return total, nil
}

// readNow makes one read syscall into b without waiting: unix.EAGAIN means
// the kernel's queue is empty.
func (d *device) readNow(b []byte) (int, error) {
	d.rbuf = b
	err := d.rc.Read(d.readFn)
	d.rbuf = nil
	if err != nil {
		return 0, err
	}
	return d.rn, d.rerr
}

func (d *device) rawRead(fd uintptr) bool {
	d.rn, d.rerr = unix.Read(int(fd), d.rbuf)
	if d.rerr == nil && d.rn == 0 {
		d.rerr = io.EOF
	}
	return true
}

// Write implements Device.
func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	if d.closed.Load() {
		return 0, os.ErrClosed
	}
	return d.w.write(bufs, offset)
}

// rawWrite is the RawConn callback for the first attempt: it never asks the
// poller to wait.
func (d *device) rawWrite(fd uintptr) bool {
	d.werr = writeAll(int(fd), d.wbuf)
	return true
}

// rawRetry is the callback while the queue is full: on EAGAIN it lets the
// poller wait for POLLOUT (bounded by the write deadline).
func (d *device) rawRetry(fd uintptr) bool {
	d.werr = writeAll(int(fd), d.wbuf)
	return d.werr != unix.EAGAIN
}

func writeAll(fd int, b []byte) error {
	n, err := unix.Write(fd, b)
	if err == nil && n != len(b) {
		return io.ErrShortWrite
	}
	return err
}

// sysWrite writes b with one syscall (more only while the kernel says its
// queue is full, for at most writeFullWait). Called with d.w.mu held.
func (d *device) sysWrite(b []byte) error {
	d.wbuf = b
	err := d.rc.Write(d.writeFn)
	d.wbuf = nil
	if err != nil {
		return d.closedErr(err, false)
	}
	if d.werr == nil {
		return nil
	}
	if d.werr == unix.EAGAIN || d.werr == unix.ENOBUFS {
		return d.waitWrite(b)
	}
	return d.writeErr(d.werr)
}

func (d *device) writeErr(err error) error {
	switch {
	case err == unix.EINVAL:
		return fmt.Errorf("%w: %w", errKernelInvalid, err)
	case err == unix.EAGAIN || err == unix.ENOBUFS:
		return fmt.Errorf("%w: %w", errKernelFull, err)
	case err == unix.EIO:
		return fmt.Errorf("%w: %w", errLinkDown, err)
	}
	if e := d.closedErr(err, false); e == os.ErrClosed {
		return e
	}
	return fmt.Errorf("tun: %s: write: %w", d.name, err)
}

// waitWrite retries a write the kernel found no room for: through the
// netpoller for EAGAIN, with short sleeps for ENOBUFS (which poll does not
// signal), until writeFullWait has passed.
func (d *device) waitWrite(b []byte) error {
	deadline := time.Now().Add(writeFullWait)
	backoff := 50 * time.Microsecond
	for d.werr == unix.EAGAIN || d.werr == unix.ENOBUFS {
		if !time.Now().Before(deadline) {
			break
		}
		d.wbuf = b
		var err error
		if d.werr == unix.EAGAIN {
			d.file.SetWriteDeadline(deadline)
			err = d.rc.Write(d.retryFn)
			d.file.SetWriteDeadline(time.Time{})
		} else {
			time.Sleep(backoff)
			backoff = min(2*backoff, 5*time.Millisecond)
			err = d.rc.Write(d.writeFn)
		}
		d.wbuf = nil
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return d.closedErr(err, false)
		}
	}
	if d.werr == nil {
		return nil
	}
	return d.writeErr(d.werr)
}
