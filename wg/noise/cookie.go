package noise

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/ptun-vpn/ptun/wg/wire"
)

// CookieLifetime is how long a cookie is good for: the CookieChecker's
// secret is replaced once it is this old, and a CookieGenerator stops
// sending mac2 with a cookie this old (whitepaper section 5.4.7).
const CookieLifetime = 120 * time.Second

// errBadSource is returned by CreateReply for an invalid source address.
var errBadSource = errors.New("noise: invalid source address for a cookie")

// macOffsets returns where mac1 and mac2 sit in msg, a marshaled Initiation
// or Response; ok is false for anything else.
func macOffsets(msg []byte) (mac1, mac2 int, ok bool) {
	typ, err := wire.MessageType(msg)
	switch {
	case err != nil:
		return 0, 0, false
	case typ == wire.TypeInitiation && len(msg) == wire.InitiationSize:
		return wire.InitiationMAC1Offset, wire.InitiationMAC2Offset, true
	case typ == wire.TypeResponse && len(msg) == wire.ResponseSize:
		return wire.ResponseMAC1Offset, wire.ResponseMAC2Offset, true
	}
	return 0, 0, false
}

// sourceBytes writes the cookie's A_m (source IP address then UDP port,
// network byte order) into b and returns its length, 0 if src is invalid.
// IPv4-mapped IPv6 addresses count as IPv4, so a dual-stack socket and a
// plain IPv4 one bind a cookie to the same client.
func sourceBytes(b *[18]byte, src netip.AddrPort) int {
	addr := src.Addr().Unmap()
	var n int
	switch {
	case addr.Is4():
		a := addr.As4()
		n = copy(b[:], a[:])
	case addr.Is6():
		a := addr.As16()
		n = copy(b[:], a[:])
	default:
		return 0
	}
	binary.BigEndian.PutUint16(b[n:], src.Port())
	return n + 2
}

// keyedMAC is a keyed BLAKE2s-128 state with room for its output, so that a
// pooled one computes a MAC without allocating.
type keyedMAC struct {
	h   hash.Hash
	sum [macSize]byte
}

// CookieChecker is the receiving side of the MAC and cookie mechanism. It
// verifies mac1 (keyed by our public key, proving the sender knows it) and
// mac2 (keyed by a cookie bound to the sender's address, proving the sender
// can receive there), and builds cookie replies. The secret behind cookies
// is random and replaced every CookieLifetime. A CookieChecker is bound to
// one local public key; build a new one when the key changes. Safe for
// concurrent use.
type CookieChecker struct {
	mac1Key    [hashSize]byte // HASH(LABEL_MAC1 || our public key)
	mac1Pool   sync.Pool      // of *keyedMAC keyed with mac1Key
	cookieAEAD cipher.AEAD    // XChaCha20-Poly1305 keyed with HASH(LABEL_COOKIE || our public key); safe for concurrent use
	now        func() time.Time

	mu         sync.RWMutex // guards secret and secretBorn
	secret     [hashSize]byte
	secretBorn time.Time // zero until the first secret is made
}

// NewCookieChecker returns a checker for messages addressed to localPublic.
func NewCookieChecker(localPublic PublicKey) *CookieChecker {
	c := &CookieChecker{
		mac1Key: hashConcat([]byte(LabelMAC1), localPublic[:]),
		now:     time.Now,
	}
	c.mac1Pool.New = func() any {
		h, err := blake2s.New128(c.mac1Key[:])
		if err != nil {
			return nil // unreachable: the key is 32 bytes
		}
		return &keyedMAC{h: h}
	}
	key := hashConcat([]byte(LabelCookie), localPublic[:])
	c.cookieAEAD, _ = chacha20poly1305.NewX(key[:]) // nil only in FIPS 140-only mode; CreateReply then fails
	clear(key[:])
	return c
}

// CheckMAC1 reports whether msg, a full marshaled Initiation or Response,
// carries a valid mac1 for our public key. Anything else (wrong size or
// type) is false. It does not allocate in steady state.
func (c *CookieChecker) CheckMAC1(msg []byte) bool {
	off, _, ok := macOffsets(msg)
	if !ok {
		return false
	}
	km, _ := c.mac1Pool.Get().(*keyedMAC)
	if km == nil {
		return false
	}
	km.h.Reset()
	km.h.Write(msg[:off])
	km.h.Sum(km.sum[:0])
	valid := macEqual(km.sum[:], msg[off:off+macSize])
	c.mac1Pool.Put(km)
	return valid
}

// CheckMAC2 reports whether msg, a full marshaled Initiation or Response,
// carries a valid mac2 for the cookie we would give src. Call it only after
// CheckMAC1 succeeded, and only when under load.
func (c *CookieChecker) CheckMAC2(msg []byte, src netip.AddrPort) bool {
	_, off, ok := macOffsets(msg)
	if !ok {
		return false
	}
	var tau, m [macSize]byte
	if c.cookie(&tau, src) != nil {
		return false
	}
	mac(&m, tau[:], msg[:off])
	clear(tau[:])
	return macEqual(m[:], msg[off:off+macSize])
}

// CreateReply builds the cookie reply to msg, a full marshaled Initiation or
// Response received from src whose mac1 the caller has checked. The reply's
// Receiver is msg's sender index; the cookie inside is encrypted to msg's
// mac1 so only the holder of the message can use it. It fails for a
// malformed msg (wire.ErrSize), an invalid src, or if crypto/rand fails.
func (c *CookieChecker) CreateReply(msg []byte, src netip.AddrPort) (*wire.CookieReply, error) {
	off, _, ok := macOffsets(msg)
	if !ok {
		return nil, wire.ErrSize
	}
	if c.cookieAEAD == nil {
		return nil, errors.New("noise: XChaCha20-Poly1305 unavailable")
	}
	var tau [macSize]byte
	if err := c.cookie(&tau, src); err != nil {
		return nil, err
	}
	defer clear(tau[:])
	r := &wire.CookieReply{Receiver: binary.LittleEndian.Uint32(msg[wire.SenderOffset:])}
	if _, err := rand.Read(r.Nonce[:]); err != nil {
		return nil, err
	}
	c.cookieAEAD.Seal(r.Cookie[:0], r.Nonce[:], tau[:], msg[off:off+macSize])
	return r, nil
}

// cookie computes into tau the cookie for src: MAC(secret, A_m), with the
// secret replaced first if it is CookieLifetime old.
func (c *CookieChecker) cookie(tau *[macSize]byte, src netip.AddrPort) error {
	var a [18]byte
	n := sourceBytes(&a, src)
	if n == 0 {
		return errBadSource
	}
	var secret [hashSize]byte
	if err := c.currentSecret(&secret); err != nil {
		return err
	}
	mac(tau, secret[:], a[:n])
	clear(secret[:])
	return nil
}

// currentSecret copies the cookie secret into s, making a new one when
// there is none yet or it has reached CookieLifetime.
func (c *CookieChecker) currentSecret(s *[hashSize]byte) error {
	now := c.now()
	c.mu.RLock()
	fresh := !c.secretBorn.IsZero() && now.Sub(c.secretBorn) < CookieLifetime
	if fresh {
		*s = c.secret
	}
	c.mu.RUnlock()
	if fresh {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.secretBorn.IsZero() || now.Sub(c.secretBorn) >= CookieLifetime {
		if _, err := rand.Read(c.secret[:]); err != nil {
			return err
		}
		c.secretBorn = now
	}
	*s = c.secret
	return nil
}

// CookieGenerator is the sending side of the MAC and cookie mechanism for
// one peer. It fills mac1 (keyed by the peer's public key) in the handshake
// messages we send and, while it holds a cookie younger than
// CookieLifetime, mac2; it consumes the cookie replies the peer sends when
// under load. Safe for concurrent use.
type CookieGenerator struct {
	mac1Key    [hashSize]byte // HASH(LABEL_MAC1 || peer's public key)
	cookieAEAD cipher.AEAD    // XChaCha20-Poly1305 keyed with HASH(LABEL_COOKIE || peer's public key)
	now        func() time.Time

	mu         sync.Mutex // guards the fields below
	cookie     [macSize]byte
	cookieBorn time.Time     // zero when no cookie is held
	lastMAC1   [macSize]byte // mac1 of the last message sent
	awaiting   bool          // lastMAC1 is set and no reply to it was consumed yet
}

// NewCookieGenerator returns a generator for messages sent to remotePublic.
func NewCookieGenerator(remotePublic PublicKey) *CookieGenerator {
	g := &CookieGenerator{
		mac1Key: hashConcat([]byte(LabelMAC1), remotePublic[:]),
		now:     time.Now,
	}
	key := hashConcat([]byte(LabelCookie), remotePublic[:])
	g.cookieAEAD, _ = chacha20poly1305.NewX(key[:]) // nil only in FIPS 140-only mode; ConsumeReply then fails
	clear(key[:])
	return g
}

// AddMACs fills the mac1 and mac2 fields of msg, a full marshaled
// Initiation or Response about to be sent, in place. mac2 is zero unless a
// cookie younger than CookieLifetime is held. It remembers mac1 so that a
// cookie reply to this message can be consumed. msg of any other size or
// type is left untouched.
func (g *CookieGenerator) AddMACs(msg []byte) {
	off1, off2, ok := macOffsets(msg)
	if !ok {
		return
	}
	var m [macSize]byte
	mac(&m, g.mac1Key[:], msg[:off1])
	copy(msg[off1:off1+macSize], m[:])

	g.mu.Lock()
	g.lastMAC1 = m
	g.awaiting = true
	if !g.cookieBorn.IsZero() && g.now().Sub(g.cookieBorn) < CookieLifetime {
		mac(&m, g.cookie[:], msg[:off2])
	} else {
		m = [macSize]byte{}
	}
	g.mu.Unlock()
	copy(msg[off2:off2+macSize], m[:])
}

// ConsumeReply decrypts the cookie in r, which must answer the last message
// AddMACs prepared, and keeps it for the mac2 of the messages that follow.
// The caller matches r.Receiver to this peer first. It returns
// ErrAuthFailed when no message awaits a reply or r does not decrypt; the
// generator is then unchanged. A reply is consumed at most once.
func (g *CookieGenerator) ConsumeReply(r *wire.CookieReply) error {
	if r == nil || g.cookieAEAD == nil {
		return ErrAuthFailed
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.awaiting {
		return ErrAuthFailed
	}
	var tau [macSize]byte
	if _, err := g.cookieAEAD.Open(tau[:0], r.Nonce[:], r.Cookie[:], g.lastMAC1[:]); err != nil {
		return ErrAuthFailed
	}
	g.cookie = tau
	clear(tau[:])
	g.cookieBorn = g.now()
	g.awaiting = false
	return nil
}
