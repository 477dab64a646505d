package demo

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// runWireguardGo is the test binary acting as `ptun -f IFNAME` with
// wireguard-go inside: it creates the TUN interface, serves the UAPI socket
// and runs until SIGTERM or SIGINT. It returns the exit status.
func runWireguardGo(args []string) int {
	if len(args) != 2 || args[0] != "-f" {
		fmt.Fprintf(os.Stderr, "fake ptun: usage: -f IFNAME (got %q)\n", args)
		return 2
	}
	name := args[1]
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "fake ptun %s: %s: %v\n", name, what, err)
		return 1
	}
	td, err := wgtun.CreateTUN(name, tunnelMTU)
	if err != nil {
		return fail("create TUN", err)
	}
	dev := device.NewDevice(td, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, name+": "))
	defer dev.Close()
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return fail("open UAPI socket", err)
	}
	ln, err := ipc.UAPIListen(name, f)
	if err != nil {
		return fail("listen on UAPI socket", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sigs:
	case <-dev.Wait():
	}
	return 0
}
