package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// requiredSeals are the seals Create adds and Map insists on: the file can
// never shrink (which would turn accesses into SIGBUS), grow, or change
// seals again.
const requiredSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// Create makes a sealed memfd holding a new, empty ring with a data region of
// dataSize bytes (a power of two in [MinDataSize, MaxDataSize]) and returns
// its descriptor (close-on-exec). The caller owns the descriptor: it maps it
// with Map, passes it to the peer (SCM_RIGHTS or cmd.ExtraFiles) and closes
// it when done; the mappings stay valid after the close.
func Create(dataSize int) (fd int, err error) {
	if !ValidDataSize(dataSize) {
		return -1, fmt.Errorf("ring: data size %d is not a power of two in [%d, %d]", dataSize, MinDataSize, MaxDataSize)
	}
	// Never executable (MFD_NOEXEC_SEAL, Linux 6.3); older kernels refuse
	// the flag.
	fd, err = unix.MemfdCreate("ptun-ring", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_NOEXEC_SEAL)
	if errors.Is(err, unix.EINVAL) {
		fd, err = unix.MemfdCreate("ptun-ring", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return -1, fmt.Errorf("ring: memfd_create: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
	}()
	if err := unix.Ftruncate(fd, int64(HeaderSize+dataSize)); err != nil {
		return -1, fmt.Errorf("ring: ftruncate memfd: %w", err)
	}
	hdr := encodeHeader(dataSize)
	if n, err := unix.Pwrite(fd, hdr, 0); err != nil || n != len(hdr) {
		return -1, fmt.Errorf("ring: write header: %d bytes, %v", n, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, requiredSeals); err != nil {
		return -1, fmt.Errorf("ring: seal memfd: %w", err)
	}
	return fd, nil
}

// Map maps the ring in the memfd fd (read-write, shared) after checking that
// it is a regular file carrying the seals Create adds, with a size that
// matches a valid header. Errors about the file's contents wrap ErrCorrupt.
// The descriptor may be closed after Map returns.
func Map(fd int) (*Region, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("ring: fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%w: descriptor is not a regular file (mode %#o)", ErrCorrupt, st.Mode)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: not a sealable memfd: F_GET_SEALS: %v", ErrCorrupt, err)
	}
	if seals&requiredSeals != requiredSeals {
		return nil, fmt.Errorf("%w: memfd seals %#x lack %#x (shrink, grow, seal)", ErrCorrupt, seals, requiredSeals&^seals)
	}
	if st.Size < HeaderSize+MinDataSize || st.Size > HeaderSize+MaxDataSize {
		return nil, fmt.Errorf("%w: memfd size %d outside [%d, %d]", ErrCorrupt, st.Size, HeaderSize+MinDataSize, HeaderSize+MaxDataSize)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("ring: mmap: %w", err)
	}
	r, err := newRegion(mem)
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	r.mapped = true
	return r, nil
}

func munmap(mem []byte) error {
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("ring: munmap: %w", err)
	}
	return nil
}

// NewEventFD returns a new eventfd (non-blocking, close-on-exec) for the
// dataReady or spaceReady wakeups of a ring. The caller owns it.
func NewEventFD() (int, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("ring: eventfd: %w", err)
	}
	return fd, nil
}

// notifier is one end of an eventfd: kick adds 1 to the counter, wait parks
// the goroutine in the netpoller until the counter is non-zero and resets it.
// kick and close may be called from any goroutine; wait from one at a time.
type notifier struct {
	f      *os.File
	rc     syscall.RawConn
	rbuf   [8]byte
	wbuf   [8]byte
	kickFn func(fd uintptr) bool // built once so kick does not allocate
}

// newNotifier duplicates fd (so the notifier owns its descriptor and the
// caller keeps its own) and sets O_NONBLOCK on it. O_NONBLOCK belongs to the
// open file description, which the caller's descriptor and the peer's share;
// it must stay set, or a wait would block an OS thread and Close could not
// interrupt it. (os.File.Fd clears it on a File whose descriptor Go made
// non-blocking itself; os.NewFile of an already non-blocking eventfd is safe
// to hand to cmd.ExtraFiles.)
func newNotifier(fd int, name string) (*notifier, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ring: dup %s eventfd %d: %w", name, fd, err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("ring: %s eventfd: %w", name, err)
	}
	f := os.NewFile(uintptr(dup), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ring: %s eventfd: %w", name, err)
	}
	n := &notifier{f: f, rc: rc}
	binary.NativeEndian.PutUint64(n.wbuf[:], 1)
	n.kickFn = func(fd uintptr) bool {
		// EAGAIN means the counter is near overflow, so the waiter wakes
		// anyway; never wait for writability, a hostile peer could keep
		// the counter full.
		unix.Write(int(fd), n.wbuf[:])
		return true
	}
	return n, nil
}

// kick wakes the waiter on the other end. It never blocks; after close it
// does nothing.
func (n *notifier) kick() {
	n.rc.Write(n.kickFn)
}

// wait blocks until the counter is non-zero, then resets it. It returns an
// error once close was called, also when close runs during the wait.
func (n *notifier) wait() error {
	_, err := n.f.Read(n.rbuf[:])
	return err
}

func (n *notifier) close() error { return n.f.Close() }
