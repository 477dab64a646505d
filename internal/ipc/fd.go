package ipc

import (
	"os"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/tun"
)

// fdLink hands the engine a descriptor of the TUN device: the engine reads
// and writes the kernel's device itself, and nothing passes the front.
type fdLink struct {
	ft   tun.Format
	file *os.File // the engine's descriptor until HandedOver
}

func newFDLink(dev tun.Device) (*fdLink, error) {
	fr, ok := dev.(tun.Framed)
	if !ok {
		return nil, errNotFramed
	}
	// What the last engine may have changed on the shared open file, the
	// next does not inherit.
	if err := tun.Reassert(dev); err != nil {
		return nil, err
	}
	fd, err := tun.DupFD(dev)
	if err != nil {
		return nil, err
	}
	return &fdLink{ft: fr.Format(), file: os.NewFile(uintptr(fd), "/dev/net/tun")}, nil
}

func (l *fdLink) Setup() Setup             { return Setup{Mode: FD, Format: l.ft} }
func (l *fdLink) Files() []*os.File        { return []*os.File{l.file} }
func (l *fdLink) HandedOver()              { l.file.Close() }
func (l *fdLink) Start()                   {}
func (l *fdLink) Close() error             { return l.file.Close() }
func (l *fdLink) Stats() []metrics.Counter { return nil }

// TUNClosed implements Link: the engine, which reads the TUN, sees it.
func (l *fdLink) TUNClosed() <-chan struct{} { return nil }

func openFD(s Setup, files []*os.File, mtu func() (int, error), logf func(string, ...any)) (tun.Device, error) {
	if err := wantFiles(FD, files, 1); err != nil {
		return nil, err
	}
	fd, err := dupAndClose(files[0])
	if err != nil {
		return nil, err
	}
	return tun.FromFD(fd, s.Format, mtu, logf)
}
