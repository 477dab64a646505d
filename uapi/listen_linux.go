package uapi

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/wgcfg"
)

// Listen creates the UAPI socket of interface ifname, SocketPath(ifname),
// and listens on it. It creates SocketDir (mode 0755) if needed. The socket
// is mode 0600: only root can configure the device, as with wireguard-go.
//
// If the socket file exists and a process answers on it, Listen fails
// ("IFNAME is already served by another process"); a stale socket left
// by a dead process is removed. The socket appears at its path with its final
// mode already set, and never replaces a socket another process created
// meanwhile. Closing the listener removes the socket file if it is still
// this listener's.
func Listen(ifname string) (net.Listener, error) {
	if err := wgcfg.CheckInterfaceName(ifname); err != nil {
		return nil, err
	}
	path := SocketPath(ifname)
	if err := os.MkdirAll(SocketDir, 0o755); err != nil {
		return nil, permissionHint(fmt.Errorf("creating UAPI directory %s: %w", SocketDir, err))
	}
	if err := clearStale(ifname, path); err != nil {
		return nil, err
	}

	// Bind under a temporary name (under umask 077), set the mode, then hard-link the socket
	// to its real name: it is never reachable with a looser mode, and the
	// link fails instead of replacing a socket that appeared meanwhile.
	var suffix [6]byte
	rand.Read(suffix[:])
	tmp := filepath.Join(SocketDir, "."+ifname+"."+hex.EncodeToString(suffix[:])+".tmp")
	// Bound under umask 077: not even the temporary name is ever open to
	// others. The umask is the process's: nothing else creates files
	// while an interface comes up.
	old := syscall.Umask(0o077)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, permissionHint(fmt.Errorf("creating UAPI socket %s: %w", path, err))
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(permissionHint(fmt.Errorf("setting mode of UAPI socket %s: %w", path, err)))
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fail(fmt.Errorf("%s is already served by another process (socket %s)", ifname, path))
		}
		return fail(permissionHint(fmt.Errorf("creating UAPI socket %s: %w", path, err)))
	}
	os.Remove(tmp)
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("UAPI socket %s: %w", path, err))
	}
	return &listener{UnixListener: ln, path: path, fi: fi}, nil
}

// clearStale checks an existing file at path: a live socket is an error, a
// dead one is removed.
func clearStale(ifname, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return permissionHint(fmt.Errorf("checking UAPI socket %s: %w", path, err))
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; remove it if it is not needed", path)
	}
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is already served by another process (socket %s)", ifname, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return permissionHint(fmt.Errorf("checking UAPI socket %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return permissionHint(fmt.Errorf("removing stale UAPI socket %s: %w", path, err))
	}
	return nil
}

// permissionHint adds advice to permission errors.
func permissionHint(err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w (the UAPI socket needs root or CAP_NET_ADMIN and write access to %s)", err, SocketDir)
	}
	return err
}

// listener removes its socket file on Close, unless another process has
// replaced it.
type listener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
	once sync.Once
}

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			os.Remove(l.path)
		}
	})
	return err
}
