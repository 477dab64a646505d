package tun

import (
	"errors"
	"os"
)

// DefaultMTU is the MTU Create sets when Options.MTU is 0: a 1500-byte path
// less 80 bytes of WireGuard over IPv6 overhead.
const DefaultMTU = 1420

// defaultBatchSize is BatchSize, and the gso_max_segs Create sets so that a
// super-packet always fits in one batch. 64 measured faster than 128 (in
// ptun bench: TCP +4-9%, CPU per GB -4-7%) and halves the buffers' memory.
const defaultBatchSize = 64

// Options configure Create. The zero value turns every offload on.
type Options struct {
	// MTU of the interface; 0 means DefaultMTU.
	MTU int
	// DisableOffload opens the device without IFF_VNET_HDR: one packet
	// per read and write, no GSO, no GRO.
	DisableOffload bool
	// DisableUSO does not ask the kernel for UDP segmentation offload
	// (USO4/USO6) and so does not coalesce UDP on Write either.
	DisableUSO bool
	// DisableGRO writes every packet alone (no coalescing on Write).
	DisableGRO bool
	// Logf, if not nil, receives rare events (offload fallbacks); never
	// one line per packet.
	Logf func(format string, args ...any)
}

// Environment variables read by OptionsFromEnv; each is a kill switch for
// one offload and takes effect when set to "1".
const (
	EnvDisableOffload = "PTUN_DISABLE_TUN_OFFLOAD"
	EnvDisableUSO     = "PTUN_DISABLE_TUN_USO"
	EnvDisableGRO     = "PTUN_DISABLE_TUN_GRO"
)

// OptionsFromEnv returns o with the offloads that the environment's kill
// switches turn off disabled. It never enables what o disables.
func OptionsFromEnv(o Options) Options {
	if os.Getenv(EnvDisableOffload) == "1" {
		o.DisableOffload = true
	}
	if os.Getenv(EnvDisableUSO) == "1" {
		o.DisableUSO = true
	}
	if os.Getenv(EnvDisableGRO) == "1" {
		o.DisableGRO = true
	}
	return o
}

// ErrNameInUse is returned by Create when the name belongs to an interface
// it cannot use: a link that is not a TUN device, or a TUN device another
// process has open. Choose another name or delete that interface.
var ErrNameInUse = errors.New("interface already exists")

// ErrInvalidName is returned by Create for a name the kernel refuses (empty
// after trimming, 16 bytes or longer, or with '/', ':' or white space).
// Choose a valid name.
var ErrInvalidName = errors.New("invalid interface name")

// errBadOffset is returned by Read and Write for offset < MinOffset or
// buffers shorter than the offset: a caller bug.
var errBadOffset = errors.New("tun: offset smaller than MinOffset or buffer shorter than offset")
