//go:build !linux

package ring

import (
	"errors"
	"fmt"
)

// Create is only implemented on Linux (memfd, seals).
func Create(dataSize int) (int, error) {
	return -1, fmt.Errorf("ring: create: %w", errors.ErrUnsupported)
}

// Map is only implemented on Linux.
func Map(fd int) (*Region, error) {
	return nil, fmt.Errorf("ring: map: %w", errors.ErrUnsupported)
}

// NewEventFD is only implemented on Linux.
func NewEventFD() (int, error) {
	return -1, fmt.Errorf("ring: eventfd: %w", errors.ErrUnsupported)
}

func munmap(mem []byte) error { return errors.ErrUnsupported }

type notifier struct{}

func newNotifier(fd int, name string) (*notifier, error) {
	return nil, fmt.Errorf("ring: %s eventfd: %w", name, errors.ErrUnsupported)
}

func (n *notifier) kick()        {}
func (n *notifier) wait() error  { return errors.ErrUnsupported }
func (n *notifier) close() error { return nil }
