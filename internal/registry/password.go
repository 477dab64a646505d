package registry

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"
)

// Passwords are stored as argon2id strings in the PHC format,
// $argon2id$v=19$m=KIB,t=PASSES,p=LANES$SALT$HASH (unpadded base64), so
// each one carries its own salt and parameters: raising the parameters
// later leaves the old hashes checkable.

// The parameters of new hashes: OWASP's argon2id minimum (19 MiB, 2
// passes, 1 lane), about 30 ms on the testbed; a login is rare and
// rate-limited, a gateway has little memory to spare.
const (
	argonMemoryKiB = 19 * 1024
	argonPasses    = 2
	argonLanes     = 1
	argonSaltBytes = 16
	argonKeyBytes  = 32
)

// Limits of a password (bytes).
const (
	MinPasswordLen = 10
	MaxPasswordLen = 1024
)

// checkPassword refuses a password that is too short or too long.
func checkPassword(pw string) error {
	switch {
	case len(pw) < MinPasswordLen:
		return fmt.Errorf("%w: the password has %d characters: use at least %d (or let ptun generate one)", ErrInvalid, len(pw), MinPasswordLen)
	case len(pw) > MaxPasswordLen:
		return fmt.Errorf("%w: the password has %d bytes: use at most %d", ErrInvalid, len(pw), MaxPasswordLen)
	}
	return nil
}

// hashPassword returns pw's argon2id string with a new random salt.
func hashPassword(pw string) (string, error) {
	salt := make([]byte, argonSaltBytes)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("registry: random salt: %w", err)
	}
	key := argon2.IDKey([]byte(pw), salt, argonPasses, argonMemoryKiB, argonLanes, argonKeyBytes)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemoryKiB, argonPasses, argonLanes,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// argon2Params are a stored hash's parameters, salt and key.
type argon2Params struct {
	memoryKiB, passes uint32
	lanes             uint8
	salt, key         []byte
}

// parseArgon2 parses an argon2id string. It refuses parameters beyond
// what this ptun would make by a wide margin (up to 256 MiB, 16 passes,
// 16 lanes), so that a tampered row cannot make a login eat the
// gateway's memory.
func parseArgon2(encoded string) (argon2Params, bool) {
	var p argon2Params
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return p, false
	}
	if n, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.memoryKiB, &p.passes, &p.lanes); err != nil || n != 3 ||
		parts[3] != fmt.Sprintf("m=%d,t=%d,p=%d", p.memoryKiB, p.passes, p.lanes) ||
		p.memoryKiB < 8*uint32(max(p.lanes, 1)) || p.memoryKiB > 256*1024 || p.passes < 1 || p.passes > 16 || p.lanes < 1 || p.lanes > 16 {
		return p, false
	}
	// Go's base64 decoder skips \r and \n even when strict: a salt or key
	// is taken only in its one canonical spelling.
	var err error
	if p.salt, err = base64.RawStdEncoding.Strict().DecodeString(parts[4]); err != nil || len(p.salt) < 8 || len(p.salt) > 64 ||
		base64.RawStdEncoding.EncodeToString(p.salt) != parts[4] {
		return p, false
	}
	if p.key, err = base64.RawStdEncoding.Strict().DecodeString(parts[5]); err != nil || len(p.key) < 16 || len(p.key) > 64 ||
		base64.RawStdEncoding.EncodeToString(p.key) != parts[5] {
		return p, false
	}
	return p, true
}

// passwordMatches reports whether pw is the password of the argon2id
// string encoded, comparing in constant time. A malformed string matches
// nothing.
func passwordMatches(encoded, pw string) bool {
	p, ok := parseArgon2(encoded)
	if !ok {
		return false
	}
	got := argon2.IDKey([]byte(pw), p.salt, p.passes, p.memoryKiB, p.lanes, uint32(len(p.key)))
	return subtle.ConstantTimeCompare(got, p.key) == 1
}

// dummyHash is checked against when the admin is unknown, so that a login
// for a name that does not exist takes as long as one with a wrong password.
// It is made on first use: not every ptun command pays for a hash.
var dummyHash = sync.OnceValue(func() string {
	h, err := hashPassword("not the password of anyone")
	if err != nil {
		panic(err)
	}
	return h
})

// HashPassword checks pw's length (MinPasswordLen to MaxPasswordLen
// bytes) and returns its argon2id string, with a new random salt, for
// SetUserPassword. ErrInvalid for a password too short or too long.
func HashPassword(pw string) (string, error) {
	if err := checkPassword(pw); err != nil {
		return "", err
	}
	return hashPassword(pw)
}

// PasswordMatches reports whether pw is the password of the argon2id
// string hash (as UserPassword returns it), comparing in constant time.
// An empty or malformed hash, or a password over MaxPasswordLen, matches
// nothing, and is checked against a dummy hash all the same: a refusal
// for a user with no password takes as long as a wrong password.
func PasswordMatches(hash, pw string) bool {
	if _, ok := parseArgon2(hash); !ok || len(pw) > MaxPasswordLen {
		passwordMatches(dummyHash(), pw[:min(len(pw), MaxPasswordLen)])
		return false
	}
	return passwordMatches(hash, pw)
}
