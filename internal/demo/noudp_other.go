//go:build !linux

package demo

import (
	"errors"
	"net/netip"

	"github.com/ptun-vpn/ptun/internal/netns"
)

func blockUDP(*netns.NS, netip.Addr) error { return errors.New("demo: nftables needs Linux") }
func unblockUDP(*netns.NS) error           { return nil }
