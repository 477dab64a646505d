//go:build !linux

package tun

import (
	"errors"
	"fmt"
)

// Create is only implemented on Linux.
func Create(name string, opts Options) (Device, error) {
	return nil, fmt.Errorf("tun: create %q: %w", name, errors.ErrUnsupported)
}
