// Package ipc carries packets between ptun's privileged front, which owns
// the TUN device, and its unprivileged engine, which speaks WireGuard. One
// interface, four implementations (Mode):
//
//   - fd: the front hands the engine a descriptor of the TUN device over
//     the control channel (SCM_RIGHTS); packets never pass through the
//     front. The default.
//   - shm: two rings in shared memory (memfd), one per direction, carry
//     whole frames (a virtio-net header and a packet or a GSO
//     super-packet); a batch is published with one atomic store and an
//     eventfd is kicked only when the other side sleeps. The front sees
//     every packet: the mode for a front that filters or inspects.
//   - seqpacket: one AF_UNIX SOCK_SEQPACKET message per packet, the
//     message-IPC design kept as the baseline to measure the others by.
//   - inproc: the engine runs inside the front's process; no IPC.
//
// Backpressure, not drops: when the engine falls behind, a full ring or
// socket makes the front stop reading the TUN, so packets wait in the
// kernel's TUN queue, and the kernel drops there (counted in the
// interface's tx_dropped) only once that queue is full. When the front
// falls behind, the engine blocks on the full ring or socket and stops
// reading its UDP sockets, whose buffers then fill and drop (counted by the
// kernel as UDP receive-buffer errors). Nothing between the two is dropped.
//
// The front side of a flow is a Link, made fresh for each engine it starts;
// the engine side is the tun.Device that Open returns.
package ipc

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/tun"
)

// Mode is how packets cross between front and engine.
type Mode string

// The modes; Default is what `ptun IFNAME` uses.
const (
	Inproc    Mode = "inproc"
	FD        Mode = "fd"
	Shm       Mode = "shm"
	Seqpacket Mode = "seqpacket"
	Default        = FD
)

// Modes lists every mode, in the order reports show them.
var Modes = []Mode{Inproc, FD, Shm, Seqpacket}

// EnvIPC names the environment variable that chooses the mode.
const EnvIPC = "PTUN_IPC"

// ParseMode parses a mode name; "" is Default.
func ParseMode(s string) (Mode, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	if s == "" {
		return Default, nil
	}
	for _, m := range Modes {
		if s == string(m) {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown IPC mode %q (want inproc, fd, shm or seqpacket)", s)
}

// Setup is what the engine needs to open its side of a flow, sent with the
// Link's files.
type Setup struct {
	Mode   Mode       `json:"mode"`
	Format tun.Format `json:"format"`
	// RingSize is the data size of each shm ring in bytes.
	RingSize int `json:"ring_size,omitempty"`
}

// Link is the front's side of a flow to one engine process.
type Link interface {
	// Setup and Files are handed to the engine (in that order of files);
	// after that, HandedOver closes the front's copies of the engine's
	// ends.
	Setup() Setup
	Files() []*os.File
	HandedOver()
	// Start starts relaying packets (nothing to do in fd mode).
	Start()
	// Close stops relaying, waits for the relay goroutines to return and
	// releases the front's ends. The TUN device stays open, and packets
	// not yet relayed stay queued in it.
	Close() error
	// TUNClosed is closed when a relay found the TUN device closed (the
	// interface was deleted). In fd mode the engine sees that instead,
	// and exits.
	TUNClosed() <-chan struct{}
	metrics.Reporter
}

// NewLink makes the front's side of a flow in mode m over dev, the TUN
// device Create made. logf receives rare events.
func NewLink(m Mode, dev tun.Device, logf func(format string, args ...any)) (Link, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	switch m {
	case FD:
		return newFDLink(dev)
	case Shm:
		return newShmLink(dev, logf)
	case Seqpacket:
		return newSeqpacketLink(dev, logf)
	}
	return nil, fmt.Errorf("flow: no link for mode %q", m)
}

// Open returns the engine's side of a flow: the tun.Device it reads and
// writes, over the files the front handed it. mtu answers the device's MTU
// (the engine asks the front). Open takes the files.
func Open(s Setup, files []*os.File, mtu func() (int, error), logf func(format string, args ...any)) (tun.Device, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	switch s.Mode {
	case FD:
		return openFD(s, files, mtu, logf)
	case Shm:
		return openShm(s, files, mtu, logf)
	case Seqpacket:
		return openSeqpacket(s, files, mtu)
	}
	CloseFiles(files)
	return nil, fmt.Errorf("flow: cannot open mode %q in an engine", s.Mode)
}

// CloseFiles closes every file of files (nil entries are skipped): the
// descriptors a message carried that nobody took.
func CloseFiles(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// tunGone is the TUNClosed signal of a relaying link.
type tunGone struct {
	once sync.Once
	ch   chan struct{}
}

func newTUNGone() tunGone { return tunGone{ch: make(chan struct{})} }

func (g *tunGone) TUNClosed() <-chan struct{} { return g.ch }

// closedTUN records that the relay found the TUN closed.
func (g *tunGone) closedTUN() { g.once.Do(func() { close(g.ch) }) }

// wantFiles checks that the front handed n files.
func wantFiles(m Mode, files []*os.File, n int) error {
	if len(files) != n {
		CloseFiles(files)
		return fmt.Errorf("flow: %s needs %d descriptors, got %d", m, n, len(files))
	}
	return nil
}
