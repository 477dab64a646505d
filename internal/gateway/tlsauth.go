package gateway

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptun-vpn/ptun/internal/enroll"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/openconnect"
	"github.com/ptun-vpn/ptun/wg/acl"
	"github.com/ptun-vpn/ptun/wg/noise"
)

// Password logins to the gateway's OpenConnect (TLS) engine. A user with a
// password (ptun gateway user passwd) logs in as USER or USER/DEVICE; the
// login's device is an openconnect device of the registry, made by the
// first login of that name and found again by the next ones, so its
// addresses stay. Its access rules are computed as a WireGuard peer's.
//
// An enrolled WireGuard device logs in with its key instead
// (enroll.DeviceLogin): the session is then that device's, with its
// addresses and rules, so that `ptun up` can carry a tunnel over TLS where
// UDP does not pass. Each proof is taken once.

// DefaultTLSDevice is the device name of a login that names none (USER
// rather than USER/DEVICE).
const DefaultTLSDevice = "openconnect"

// Limits of TLS logins. Every attempt takes a token from the bucket of its
// source address (an IPv6 source: its /64, which one client usually owns
// whole) and then one from the bucket of the user name it gives (all
// malformed names share one); an attempt that finds either empty is
// refused at once with ErrRateLimited, before any registry read or
// argon2 run, and written nowhere. The source limit is looser than the
// admin login's because offices share one address behind NAT; the name
// limit bounds guessing one user's password from many addresses to about
// 180 tries an hour.
const (
	tlsSourceRate  = 0.2 // attempts a second per source: one every 5 s…
	tlsSourceBurst = 30  // …after 30 at once
	tlsNameRate    = 0.05
	tlsNameBurst   = 10 // per user name, from anywhere: one every 20 s after 10
	// Failed attempts written to the audit log, gateway-wide: a flood
	// from many sources (each within its limits) grows the log by at
	// most one entry a second after the burst; the attempts past it are
	// refused as usual and only counted (TLSAuthStats.AuditSkipped).
	tlsFailAuditRate  = 1
	tlsFailAuditBurst = 100
	// tlsChecks bounds the password checks at once: each argon2 run
	// holds 19 MiB, and the engine may have thousands of logins in
	// flight. The others wait (for as long as their context lets them).
	tlsChecks = 4
)

// ErrRateLimited: a TLS login refused unchecked because its source address
// or its user name made too many attempts (see the limits above). It wraps
// openconnect.ErrLoginFailed, so the client is told what it is told for a
// wrong password; count it apart. Nothing was written to the audit log.
var ErrRateLimited = fmt.Errorf("gateway: too many TLS login attempts, wait and try again: %w", openconnect.ErrLoginFailed)

// TLSLogin is what a TLS login (or TLSAuth.Active) gives a session: whose
// device it is, its addresses and what it may reach.
type TLSLogin struct {
	User, Device string // the user's name and the device's
	DeviceID     int64
	// Addresses are the device's address in each pool, with the pool's
	// prefix length (100.80.3.7/16), in pool order.
	Addresses []netip.Prefix
	// Rules are what the device may reach, computed as the syncer
	// computes a WireGuard peer's (accessRules): a packet passes if any
	// rule allows it. Never nil. There is no "allow all": a device
	// whose groups have no rules gets one rule (any protocol) per route
	// the gateway offers, and one to the control service; an empty list
	// allows nothing. Enforce them always, as the WireGuard engine does.
	Rules []acl.Rule
}

// TLSAuthStats are TLSAuth's counts since it was made.
type TLSAuthStats struct {
	Logins         uint64 // attempts granted
	Failures       uint64 // attempts refused after a check (wrong password, unknown user, …)
	RateLimited    uint64 // attempts refused unchecked (ErrRateLimited)
	Errors         uint64 // attempts the registry did not answer
	DevicesCreated uint64 // openconnect devices made by a first login
	DeviceLogins   uint64 // of Logins, those by a WireGuard device's key
	AuditSkipped   uint64 // failures not written to the audit log (over the gateway-wide rate)
}

// TLSAuth authenticates TLS logins against the registry, and tells the
// engine which openconnect devices are still active. It is safe for
// concurrent use.
type TLSAuth struct {
	reg  registry.Registry
	key  noise.PrivateKey // the gateway's WireGuard key: device logins' proofs (zero: refused)
	logf func(format string, args ...any)
	cfg  atomic.Pointer[Config]
	now  func() time.Time // the limits' clock; tests set it

	bySource  *sourceLimiter
	byName    *keyLimiter[string]
	failAudit *keyLimiter[struct{}]
	checks    chan struct{} // a slot per password check in progress

	logins, failures, rateLimited, errs, created, auditSkipped, deviceLogins atomic.Uint64

	proofMu sync.Mutex
	proofs  map[[32]byte]time.Time // device proofs taken, until they expire

	mu     sync.Mutex // guards the fields below: Active's view
	seq    uint64
	active map[int64]TLSLogin // nil: to be read again
	viewOf *Config            // the configuration active was computed with
}

// NewTLSAuth is a TLSAuth over reg for the gateway of cfg (as the syncer
// has it, with Site.Control set: its routes, default access and control
// service make the rules); key is the gateway's WireGuard key, which
// checks device logins (zero: they are refused). logf (nil: none) gets the
// logins, and the failures that are audited.
func NewTLSAuth(reg registry.Registry, cfg *Config, key noise.PrivateKey, logf func(format string, args ...any)) *TLSAuth {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	a := &TLSAuth{reg: reg, key: key, logf: logf, now: time.Now, proofs: map[[32]byte]time.Time{},
		bySource:  newSourceLimiter(tlsSourceRate, tlsSourceBurst, maxLoginKeys),
		byName:    newKeyLimiter[string](tlsNameRate, tlsNameBurst, maxLoginKeys),
		failAudit: newKeyLimiter[struct{}](tlsFailAuditRate, tlsFailAuditBurst, 1),
		checks:    make(chan struct{}, tlsChecks)}
	a.cfg.Store(cfg)
	return a
}

// SetConfig makes cfg (reloaded) the one rules are computed with; the next
// Active computes every device's rules again.
func (a *TLSAuth) SetConfig(cfg *Config) { a.cfg.Store(cfg) }

// Stats returns the counts so far.
func (a *TLSAuth) Stats() TLSAuthStats {
	return TLSAuthStats{Logins: a.logins.Load(), Failures: a.failures.Load(), RateLimited: a.rateLimited.Load(),
		Errors: a.errs.Load(), DevicesCreated: a.created.Load(), AuditSkipped: a.auditSkipped.Load(),
		DeviceLogins: a.deviceLogins.Load()}
}

// ParseTLSLogin splits a TLS login name, USER or USER/DEVICE, into the
// user's name and the device's (DefaultTLSDevice when it names none),
// each valid by registry.ParseName; else an error wrapping
// registry.ErrInvalid.
func ParseTLSLogin(login string) (user, device string, err error) {
	user, device, named := strings.Cut(login, "/")
	if _, err := registry.ParseName(user); err != nil {
		return "", "", fmt.Errorf("login user: %w", err)
	}
	if !named {
		return user, DefaultTLSDevice, nil
	}
	if _, err := registry.ParseName(device); err != nil {
		return "", "", fmt.Errorf("login device (USER/DEVICE): %w", err)
	}
	return user, device, nil
}

// limitKey is the rate limits' key of a source address: an IPv4 address,
// or the /64 of an IPv6 one.
func limitKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		return netip.PrefixFrom(a, 64).Masked().Addr()
	}
	return a
}

// Authenticate checks a TLS login: login is USER or USER/DEVICE (device
// DefaultTLSDevice), password what the client typed, from its address.
//
//   - Over a rate limit: ErrRateLimited (wrapping
//     openconnect.ErrLoginFailed), at once, written nowhere.
//   - A malformed login, an unknown or removed user, a user with no
//     password, a wrong password: an error wrapping
//     openconnect.ErrLoginFailed, after an argon2 run all the same (so
//     that each takes as long as a wrong password), audited as
//     tls.login_failed (actor tls:SOURCE-ADDRESS, target USER/DEVICE,
//     detail the source and the reason).
//   - The right password: the user's active openconnect device of that
//     name, made now if there is none (with an address from every pool,
//     and a random key: never a WireGuard peer), audited as tls.login
//     (actor tls:USER, target USER/DEVICE, detail the source). An active
//     WireGuard device of that name refuses the login (ErrLoginFailed,
//     saying the name is taken by a WireGuard device), as does a pool
//     with no free address. A revoked device is gone: the next login of
//     its name makes a new device, with new addresses (to keep a user
//     out, clear their password or remove them).
//   - A device login (login starting enroll.DeviceLoginPrefix): see
//     deviceLogin.
//   - The registry unreachable (or ctx done while waiting for a check):
//     an error that does not wrap ErrLoginFailed; answer 503.
func (a *TLSAuth) Authenticate(ctx context.Context, login, password string, from netip.AddrPort) (TLSLogin, error) {
	now := a.now()
	if !a.bySource.allow(limitKey(from.Addr()), now) {
		a.rateLimited.Add(1)
		return TLSLogin{}, fmt.Errorf("%w (source %v)", ErrRateLimited, from.Addr())
	}
	if enroll.IsDeviceLogin(login) {
		return a.deviceLogin(ctx, login, password, from, now)
	}
	user, device, perr := ParseTLSLogin(login)
	if !a.byName.allow(user, now) { // "" for every malformed login
		a.rateLimited.Add(1)
		return TLSLogin{}, fmt.Errorf("%w (user %q)", ErrRateLimited, user)
	}
	select {
	case a.checks <- struct{}{}:
	case <-ctx.Done():
		return TLSLogin{}, fmt.Errorf("gateway: TLS login: waiting for a password check: %w", ctx.Err())
	}
	defer func() { <-a.checks }()

	var hash, reason string
	if perr != nil {
		reason = "malformed login: " + perr.Error()
	} else {
		h, err := a.reg.UserPassword(ctx, user)
		switch {
		case errors.Is(err, registry.ErrNotFound):
			reason = "no such user"
		case err != nil:
			a.errs.Add(1)
			return TLSLogin{}, fmt.Errorf("gateway: TLS login %s/%s: the registry: %w", user, device, err)
		case h == "":
			reason = "the user has no password (ptun gateway user passwd)"
		}
		hash = h
	}
	if !registry.PasswordMatches(hash, password) && reason == "" {
		reason = "wrong password"
	}
	if reason != "" {
		return TLSLogin{}, a.refuse(ctx, user, device, from, reason)
	}

	d, err := a.device(ctx, user, device, from)
	var lf *loginFailure
	if errors.As(err, &lf) {
		return TLSLogin{}, a.refuse(ctx, user, device, from, lf.reason)
	}
	if err != nil {
		a.errs.Add(1)
		return TLSLogin{}, err
	}
	l, err := a.loginOf(ctx, d)
	if errors.Is(err, registry.ErrNotFound) {
		return TLSLogin{}, a.refuse(ctx, user, device, from, "no such user (removed meanwhile)")
	}
	if err == nil {
		err = a.reg.NoteLogin(registry.WithActor(ctx, "tls:"+user), "tls.login", user+"/"+device, "from "+from.String())
	}
	if err != nil {
		// A login the registry did not record is not granted.
		a.errs.Add(1)
		return TLSLogin{}, fmt.Errorf("gateway: TLS login %s/%s: the registry: %w", user, device, err)
	}
	a.reg.SeenDevice(ctx, d.ID, a.now()) // an observation: its failure changes nothing
	a.logins.Add(1)
	a.logf("gateway: TLS login %s/%s from %v: device %d, %v", user, device, from, d.ID, l.Addresses)
	return l, nil
}

// deviceLogin checks a login by an enrolled WireGuard device's key, within
// the source limit already: the name limit is the key's. A malformed
// login, a proof that does not hold (another key, a clock more than
// enroll.MaxStatusSkew off) or was taken already, an unknown or revoked
// key: refused as a wrong password is (audited as tls.login_failed, target
// the device when known). A good one is that device's session, audited as
// tls.login with the detail "by its device key"; nothing is made.
func (a *TLSAuth) deviceLogin(ctx context.Context, login, password string, from netip.AddrPort, now time.Time) (TLSLogin, error) {
	p, perr := enroll.ParseDeviceLogin(login, password)
	limitAs := ""
	if perr == nil {
		limitAs = login
	}
	if !a.byName.allow(limitAs, now) {
		a.rateLimited.Add(1)
		return TLSLogin{}, fmt.Errorf("%w (device %.40q)", ErrRateLimited, limitAs)
	}
	switch {
	case perr != nil:
		return TLSLogin{}, a.refuse(ctx, "", "", from, "malformed device login: "+perr.Error())
	case a.key.IsZero():
		return TLSLogin{}, a.refuse(ctx, "", "", from, "device logins are not enabled on this gateway")
	}
	if err := p.Check(a.key, now); err != nil {
		return TLSLogin{}, a.refuse(ctx, "", "", from, fmt.Sprintf("device key %s: %v (is its clock right?)", p.PublicKey.Base64(), err))
	}
	d, err := a.reg.DeviceByKey(ctx, registry.Key(p.PublicKey))
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return TLSLogin{}, a.refuse(ctx, "", "", from, fmt.Sprintf("device key %s: not enrolled here", p.PublicKey.Base64()))
	case err != nil:
		a.errs.Add(1)
		return TLSLogin{}, fmt.Errorf("gateway: TLS login by device key %s: the registry: %w", p.PublicKey.Base64(), err)
	case d.Revoked():
		return TLSLogin{}, a.refuse(ctx, d.User, d.Name, from, "the device was revoked")
	case d.Protocol != registry.ProtocolWireGuard:
		return TLSLogin{}, a.refuse(ctx, d.User, d.Name, from, "not a WireGuard device")
	}
	if !a.takeProof(p, now) {
		return TLSLogin{}, a.refuse(ctx, d.User, d.Name, from, "its device proof was used already")
	}
	l, err := a.loginOf(ctx, d)
	if errors.Is(err, registry.ErrNotFound) {
		return TLSLogin{}, a.refuse(ctx, d.User, d.Name, from, "no such user (removed meanwhile)")
	}
	if err == nil {
		err = a.reg.NoteLogin(registry.WithActor(ctx, "tls:"+d.User), "tls.login", d.User+"/"+d.Name, "from "+from.String()+", by its device key")
	}
	if err != nil {
		a.errs.Add(1)
		return TLSLogin{}, fmt.Errorf("gateway: TLS login %s/%s: the registry: %w", d.User, d.Name, err)
	}
	a.logins.Add(1)
	a.deviceLogins.Add(1)
	a.logf("gateway: TLS login of device %s/%s by its key from %v: device %d, %v", d.User, d.Name, from, d.ID, l.Addresses)
	return l, nil
}

// maxProofs bounds the device proofs remembered: past it (a flood of good
// proofs, which only enrolled devices can make), the oldest is dropped.
const maxProofs = 1 << 16

// takeProof records p's MAC as taken, until it can no longer be good, and
// reports whether it was not taken before.
func (a *TLSAuth) takeProof(p enroll.DeviceLoginProof, now time.Time) bool {
	var k [32]byte
	copy(k[:], p.MAC)
	a.proofMu.Lock()
	defer a.proofMu.Unlock()
	if _, seen := a.proofs[k]; seen {
		return false
	}
	if len(a.proofs) >= maxProofs {
		var oldest [32]byte
		var at time.Time
		for mac, until := range a.proofs {
			if !now.Before(until) {
				delete(a.proofs, mac)
			} else if at.IsZero() || until.Before(at) {
				oldest, at = mac, until
			}
		}
		if len(a.proofs) >= maxProofs {
			delete(a.proofs, oldest)
		}
	}
	a.proofs[k] = time.Unix(p.Time, 0).Add(enroll.MaxStatusSkew + time.Second)
	return true
}

// loginFailure is a refusal with its reason, for the caller's log (the
// client is told only that the login failed).
type loginFailure struct{ reason string }

func (e *loginFailure) Error() string { return e.reason }
func (e *loginFailure) Unwrap() error { return openconnect.ErrLoginFailed }

// refuse counts a refused attempt, audits it (within the gateway-wide
// rate) and returns its error.
func (a *TLSAuth) refuse(ctx context.Context, user, device string, from netip.AddrPort, reason string) error {
	a.failures.Add(1)
	target := "-" // a malformed login: nothing of it goes into the log
	if user != "" {
		target = user + "/" + device
	}
	err := fmt.Errorf("%w: %s from %v: %s", openconnect.ErrLoginFailed, target, from, reason)
	if !a.failAudit.allow(struct{}{}, a.now()) {
		if a.auditSkipped.Add(1)%1000 == 1 {
			a.logf("gateway: TLS logins are failing faster than %d a second: the audit log records %d a second, %d refusals not recorded so far",
				tlsFailAuditRate, tlsFailAuditRate, a.auditSkipped.Load())
		}
		return err
	}
	detail := fmt.Sprintf("from %v: %s", from, reason)
	if len(detail) > registry.MaxNoteDetail {
		detail = detail[:registry.MaxNoteDetail] // the reasons are ASCII
	}
	if nerr := a.reg.NoteLogin(registry.WithActor(ctx, "tls:"+from.Addr().String()), "tls.login_failed", target, detail); nerr != nil {
		a.logf("gateway: recording a refused TLS login (%v): %v", err, nerr)
	}
	a.logf("gateway: %v", err)
	return err
}

// device finds user's active device named name, or makes it: an
// openconnect device, with a random key. An error wrapping
// openconnect.ErrLoginFailed (a *loginFailure) refuses the login; any
// other is the registry's.
func (a *TLSAuth) device(ctx context.Context, user, name string, from netip.AddrPort) (registry.Device, error) {
	fail := func(format string, args ...any) error { return &loginFailure{fmt.Sprintf(format, args...)} }
	for attempt := 0; attempt < 3; attempt++ {
		ds, err := a.reg.ListDevices(ctx, registry.DeviceFilter{User: user, Name: name})
		if errors.Is(err, registry.ErrNotFound) {
			return registry.Device{}, fail("no such user (removed meanwhile)")
		} else if err != nil {
			return registry.Device{}, fmt.Errorf("gateway: TLS login %s/%s: the registry: %w", user, name, err)
		}
		if len(ds) > 0 {
			if ds[0].Protocol != registry.ProtocolOpenConnect {
				return registry.Device{}, fail("the device name %q is taken by a %s device of %s: log in as %s/ANOTHER-NAME", name, ds[0].Protocol, user, user)
			}
			return ds[0], nil
		}
		var k registry.Key
		if _, err := rand.Read(k[:]); err != nil {
			return registry.Device{}, err
		}
		d, err := a.reg.CreateDevice(registry.WithActor(ctx, "tls:"+user), user, registry.DeviceSpec{Name: name, PublicKey: k,
			Protocol: registry.ProtocolOpenConnect, Via: "TLS login from " + from.Addr().String()})
		switch {
		case err == nil:
			a.created.Add(1)
			return d, nil
		case errors.Is(err, registry.ErrExists):
			continue // another login made it meanwhile: look again
		case errors.Is(err, registry.ErrPoolExhausted):
			return registry.Device{}, fail("no free address for a new device: %v", err)
		case errors.Is(err, registry.ErrNotFound):
			return registry.Device{}, fail("no such user (removed meanwhile)")
		default:
			return registry.Device{}, fmt.Errorf("gateway: TLS login %s/%s: the registry: %w", user, name, err)
		}
	}
	return registry.Device{}, fmt.Errorf("gateway: TLS login %s/%s: the device was made and gone again, three times", user, name)
}

// loginOf is d's TLSLogin: its rules from its user's groups now.
func (a *TLSAuth) loginOf(ctx context.Context, d registry.Device) (TLSLogin, error) {
	groups, err := a.reg.GroupsOf(ctx, d.User)
	if err != nil {
		return TLSLogin{}, err
	}
	byGroup, err := rulesByGroup(ctx, a.reg)
	if err != nil {
		return TLSLogin{}, err
	}
	pools, err := a.reg.ListPools(ctx)
	if err != nil {
		return TLSLogin{}, err
	}
	return makeTLSLogin(a.cfg.Load(), d, groups, byGroup, pools), nil
}

// makeTLSLogin is d's TLSLogin at a gateway of cfg.
func makeTLSLogin(cfg *Config, d registry.Device, groups []registry.Group, byGroup map[string][]registry.Rule, pools []registry.Pool) TLSLogin {
	l := TLSLogin{User: d.User, Device: d.Name, DeviceID: d.ID, Rules: accessRules(cfg, groups, byGroup)}
	for _, addr := range d.Addresses {
		p := netip.PrefixFrom(addr, addr.BitLen()) // no pool holds it: cannot be while it is the device's
		for _, pool := range pools {
			if pool.Prefix.Contains(addr) {
				p = netip.PrefixFrom(addr, pool.Prefix.Bits())
				break
			}
		}
		l.Addresses = append(l.Addresses, p)
	}
	return l
}

// Active is every active openconnect device whose user has a password, and
// every active WireGuard device (which may log in by its key), by device
// ID, with its current addresses and rules. The engine calls it
// every syncEvery and ends the sessions of devices no longer in it (the
// device revoked, its user removed or left without a password) and gives
// the others their rules, so that a revocation or a rule change reaches
// live sessions within a second.
//
// It costs one read of the change feed while nothing changed (the answer
// is then the same map as before); after a change (or SetConfig) it reads
// the devices, users, rules, groups and pools again, as a sync does. The
// map is shared: do not modify it. On error the previous answer stays for
// the next call, and the caller keeps its sessions as they are.
func (a *TLSAuth) Active(ctx context.Context) (map[int64]TLSLogin, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	changes, now, err := a.reg.Changes(ctx, a.seq)
	if err != nil {
		return nil, err
	}
	cfg := a.cfg.Load()
	if len(changes) == 0 && a.active != nil && a.viewOf == cfg {
		return a.active, nil
	}
	devs, err := a.reg.ListDevices(ctx, registry.DeviceFilter{})
	if err != nil {
		return nil, err
	}
	users, err := a.reg.ListUsers(ctx)
	if err != nil {
		return nil, err
	}
	withPassword := make(map[string]bool, len(users))
	for _, u := range users {
		withPassword[u.Name] = u.HasPassword
	}
	byGroup, err := rulesByGroup(ctx, a.reg)
	if err != nil {
		return nil, err
	}
	groupsOf, err := memberships(ctx, a.reg)
	if err != nil {
		return nil, err
	}
	pools, err := a.reg.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[int64]TLSLogin, len(devs))
	for _, d := range devs {
		if d.Protocol == registry.ProtocolWireGuard || d.Protocol == registry.ProtocolOpenConnect && withPassword[d.User] {
			m[d.ID] = makeTLSLogin(cfg, d, groupsOf[d.User], byGroup, pools)
		}
	}
	a.active, a.seq, a.viewOf = m, now, cfg
	return m, nil
}
