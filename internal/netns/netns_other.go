//go:build !linux

package netns

import (
	"errors"
	"net/netip"
	"os/exec"
	"time"
)

// NS is a named network namespace. Network namespaces exist only on Linux;
// elsewhere every function returns errors.ErrUnsupported.
type NS struct {
	// Name is the namespace's name.
	Name string
}

func New(name string) (*NS, error)                                 { return nil, errors.ErrUnsupported }
func (n *NS) Path() string                                         { return RunDir + "/" + n.Name }
func (n *NS) Close() error                                         { return nil }
func (n *NS) Do(fn func() error) error                             { return errors.ErrUnsupported }
func (n *NS) Start(cmd *exec.Cmd) error                            { return errors.ErrUnsupported }
func Veth(a *NS, aName string, b *NS, bName string, mtu int) error { return errors.ErrUnsupported }
func (n *NS) AddAddr(ifname string, p netip.Prefix) error          { return errors.ErrUnsupported }
func (n *NS) SetUp(ifname string) error                            { return errors.ErrUnsupported }
func (n *NS) SetMTU(ifname string, mtu int) error                  { return errors.ErrUnsupported }
func (n *NS) AddRoute(dst netip.Prefix, ifname string) error       { return errors.ErrUnsupported }
func (n *NS) WaitLink(ifname string, timeout time.Duration) error {
	return errors.ErrUnsupported
}
func (n *NS) KillProcesses() error  { return errors.ErrUnsupported }
func Cleanup(prefix string) []error { return nil }
