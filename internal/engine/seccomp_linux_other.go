//go:build linux && !amd64 && !arm64

package engine

// No allow-list for this architecture: the engine runs without a seccomp
// filter, and CheckConfined says so.
const seccompArch = 0

var seccompAllowed []uintptr

// AllowAccept is empty without an allow-list.
var AllowAccept []uintptr
