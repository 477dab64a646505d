// Package netns creates and tears down named network namespaces that act as
// small hosts for demos, benchmarks and end-to-end tests: a namespace per
// host, veth pairs between them, addresses, routes, and a way to run code or
// processes inside one.
//
// Namespaces are bind-mounted at /run/netns/NAME, the place `ip netns add`
// uses, so a person can look inside with `ip netns exec NAME …` while a test
// runs. The package talks netlink directly and needs no `ip` binary. Every
// function needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
package netns

import "errors"

// RunDir is where named namespaces are bind-mounted.
const RunDir = "/run/netns"

// ErrClosed is returned by methods of an NS after Close. The namespace is
// gone (or going); the caller must create a new one.
var ErrClosed = errors.New("netns: namespace closed")
