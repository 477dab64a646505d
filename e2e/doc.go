// Package e2e holds ptun's end-to-end and interoperability tests. It has no
// code of its own: the tests build the real ptun and wireguard-go binaries,
// start them in network namespaces they create (two hosts joined by a veth
// pair), configure them with the real wg(8) tool (and, in TestWgQuick, the
// real wg-quick) and measure them with iperf3 and ping.
//
// The tests need root, wg and wg-quick (wireguard-tools), iperf3, ping
// (iputils-ping), ip/ss (iproute2), and for wg-quick's full tunnel nft
// (nftables), sysctl (procps), unshare (util-linux) and mount, and for the admin
// page's test Chromium (chromium, driven headless over the DevTools protocol with
// chromedp). Without them they skip, except under CI=true, where a skip is a
// failure.
//
// PTUN_E2E_PTUN=/path/to/binary runs the suite against that binary instead
// of building ptun/cmd/ptun (for example wireguard-go, to check the harness
// itself: tests of ptun-only features then fail).
package e2e
