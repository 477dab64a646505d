// Package registry is the gateway's source of truth: users, groups, devices
// and their addresses, address pools, invites, access rules, gateways, an
// audit log of every change, and a change feed that gateways follow to stay
// in step.
//
// One interface, two backends sharing one implementation over database/sql:
// SQLite (a file, the default; pure Go, so CGO_ENABLED=0 builds work) and
// PostgreSQL (shared by several gateways). Both run the same numbered schema
// migrations on open; see docs/registry.md.
//
// Every method that changes something does it in one transaction that also
// appends its audit rows and its change rows, so either all of a change is
// visible (with its audit and its sequence number) or none of it is.
package registry

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// The sentinel errors. Errors returned by a Registry wrap one of them (test
// with errors.Is) and carry a message a person can act on; anything else is
// a database failure (unreachable, disk full), which the caller reports and
// may retry.
var (
	// ErrInvalid: an argument is malformed (a name, a CIDR, a rule, a key).
	// Fix the input; retrying the same call fails again.
	ErrInvalid = errors.New("invalid")
	// ErrNotFound: the named user, group, device, pool, rule, invite or
	// gateway does not exist (or, for a user, was removed).
	ErrNotFound = errors.New("not found")
	// ErrExists: a unique name or key is taken (user or group name, device
	// name of that user, public key, gateway name or key, pool CIDR).
	ErrExists = errors.New("already exists")
	// ErrConflict: the change contradicts what is there (a pool that
	// overlaps another, a pool still holding addresses). The message says
	// which object is in the way.
	ErrConflict = errors.New("conflict")
	// ErrPoolExhausted: a pool has no free address for a new device. Nothing
	// was written; revoke unused devices or add a larger pool.
	ErrPoolExhausted = errors.New("address pool exhausted")
	// ErrInviteRefused: an invite secret is unknown, forged, expired or used
	// up. Nothing was written. The message says which, for the operator's
	// log; an API should answer the enrolling device with one generic text.
	ErrInviteRefused = errors.New("invite refused")
	// ErrSchemaTooNew: the database was migrated by a newer ptun than this
	// one. Nothing was changed; run the newer ptun, or restore the backup
	// taken before the upgrade.
	ErrSchemaTooNew = errors.New("registry schema is newer than this ptun")
)

// Key is a WireGuard public key (Curve25519, 32 bytes). An openconnect
// device's Key is 32 random bytes instead (the registry wants every
// device to have a unique one): no one holds a private key for it, and
// the gateway never makes it a WireGuard peer.
type Key [32]byte

// The protocols a device speaks (Device.Protocol).
const (
	// ProtocolWireGuard: a device with a WireGuard key (ptun join, an
	// exported config); the gateway makes it a peer of its interface.
	ProtocolWireGuard = "wireguard"
	// ProtocolOpenConnect: a device made by a password login to the
	// gateway's OpenConnect (TLS) engine; its key is random, never a peer.
	ProtocolOpenConnect = "openconnect"
)

// User is a person (or a service) that owns devices.
type User struct {
	ID        int64
	Name      string
	CreatedAt time.Time
	// HasPassword: a password for TLS (OpenConnect) logins is set
	// (SetUserPassword).
	HasPassword bool
}

// Group is a named set of users; access rules are per group.
type Group struct {
	ID        int64
	Name      string
	CreatedAt time.Time
}

// Pool is a range that device addresses are allocated from. Its network
// address, its first address (the gateway's own) and, for IPv4, its
// broadcast address are never given to a device.
type Pool struct {
	ID        int64
	Prefix    netip.Prefix // masked (canonical)
	CreatedAt time.Time
}

// Device is one key of one user, with one address from every pool that
// existed when it was created. Revoked devices keep their row (for the
// audit trail and so their key can never be enrolled again) but hold no
// addresses.
type Device struct {
	ID         int64
	UserID     int64
	User       string
	Name       string
	Protocol   string // ProtocolWireGuard or ProtocolOpenConnect
	PublicKey  Key
	Addresses  []netip.Addr // one per pool, in pool order; empty once revoked
	CreatedAt  time.Time
	LastSeenAt time.Time // zero if never seen
	RevokedAt  time.Time // zero unless revoked
}

// Revoked reports whether the device has been revoked.
func (d Device) Revoked() bool { return !d.RevokedAt.IsZero() }

// DeviceSpec is what a device brings to enrollment: its name (unique among
// its user's devices that are not revoked) and the public key it made.
type DeviceSpec struct {
	Name      string
	PublicKey Key
	// Protocol is ProtocolWireGuard ("" says the same) or
	// ProtocolOpenConnect (PublicKey then 32 random bytes).
	Protocol string
	// Via says, for the audit entry of CreateDevice, how the key came
	// ("export": the gateway made it for an app's config); "" says
	// nothing. Redeem ignores it and names the invite instead.
	Via string
}

// DeviceFilter selects devices for ListDevices; zero fields match all.
type DeviceFilter struct {
	User           string // only this user's devices
	Name           string // only devices with this name
	Protocol       string // only devices of this protocol (ProtocolWireGuard, ProtocolOpenConnect)
	IncludeRevoked bool   // also revoked devices (by default only active ones)
}

// Invite is an enrollment invitation for one user. The secret itself is
// returned once by CreateInvite and never stored.
type Invite struct {
	ID        int64
	Prefix    string // public, the lookup key; part of the secret
	UserID    int64
	User      string
	CreatedAt time.Time
	ExpiresAt time.Time
	UsesLeft  int
}

// Proto is a rule's transport protocol; ProtoAny matches every protocol.
type Proto string

// The protocols a rule can name.
const (
	ProtoAny  Proto = ""
	ProtoTCP  Proto = "tcp"
	ProtoUDP  Proto = "udp"
	ProtoICMP Proto = "icmp" // ICMP for IPv4 destinations, ICMPv6 for IPv6
)

// Rule lets a group's members reach Dest, optionally only with one protocol
// and (for tcp and udp) a destination port range.
type Rule struct {
	ID       int64
	GroupID  int64
	Group    string
	Dest     netip.Prefix // masked
	Proto    Proto
	PortFrom uint16 // 0 with PortTo 0: every port
	PortTo   uint16
}

// Gateway is one gateway that serves the registry's devices.
type Gateway struct {
	ID        int64
	Name      string
	PublicKey Key
	Endpoint  string // host:port that devices send to
	API       string // its enrollment API's https://HOST[:PORT] ("": none known)
	Pin       string // its API certificate's pin, pin-sha256:BASE64 ("": none known)
	// TLS is its OpenConnect listener's https://HOST:PORT ("": none). Its
	// certificate is the API's, pinned by Pin.
	TLS       string
	CreatedAt time.Time
}

// AuditEntry records one change: who made it, what it was, to what, when.
type AuditEntry struct {
	ID     int64
	At     time.Time
	Actor  string // from WithActor; "system" if none was given
	Action string // e.g. "user.add", "device.revoke"
	Target string // e.g. "alice", "alice/laptop", "100.80.0.0/16"
	Detail string // e.g. the addresses given, the rule
}

// Kind names the kind of object a Change is about.
type Kind string

// The kinds of Change.
const (
	KindUser    Kind = "user"
	KindGroup   Kind = "group" // also membership changes
	KindDevice  Kind = "device"
	KindPool    Kind = "pool"
	KindInvite  Kind = "invite"
	KindRule    Kind = "rule"
	KindGateway Kind = "gateway"
)

// Change says that the object Kind/ID changed at sequence number Seq. It
// does not carry the new state: a follower reads it again — a device with
// Device(ID) (revoked, or ErrNotFound), anything else by listing its kind
// (ListRules, ListGroups and Members, ListGateways…) — so a burst of
// changes to one object costs one read.
type Change struct {
	Seq  uint64
	Kind Kind
	ID   int64
}

// Users manages users. Names are unique among users that exist (a removed
// user's name may be used again) and valid by ParseName.
type Users interface {
	AddUser(ctx context.Context, name string) (User, error)
	// RemoveUser revokes the user's devices (freeing their addresses),
	// deletes their invites and memberships, and removes the user.
	RemoveUser(ctx context.Context, name string) error
	User(ctx context.Context, name string) (User, error)
	ListUsers(ctx context.Context) ([]User, error) // by name
	// SetUserPassword gives user the password whose argon2id string is
	// hash (made by HashPassword), for logins to the gateway's
	// OpenConnect (TLS) engine, in place of any other. The audit entry
	// user.passwd says "set", never the hash. ErrNotFound for an unknown
	// or removed user; ErrInvalid for a string that is not an argon2id
	// hash this ptun can check.
	SetUserPassword(ctx context.Context, user, hash string) error
	// ClearUserPassword removes user's password: TLS logins are refused
	// from then on (audited as user.passwd "cleared"). A user with none
	// changes nothing and records nothing. ErrNotFound as above.
	ClearUserPassword(ctx context.Context, user string) error
	// UserPassword is user's argon2id string (check it with
	// PasswordMatches), "" if none is set. ErrNotFound for an unknown or
	// removed user, ErrInvalid for a malformed name.
	UserPassword(ctx context.Context, user string) (hash string, err error)
}

// Groups manages groups and their members.
type Groups interface {
	AddGroup(ctx context.Context, name string) (Group, error)
	// RemoveGroup removes the group with its memberships and its rules.
	RemoveGroup(ctx context.Context, name string) error
	ListGroups(ctx context.Context) ([]Group, error) // by name
	// AddMember is idempotent: adding a member twice is not an error.
	AddMember(ctx context.Context, group, user string) error
	RemoveMember(ctx context.Context, group, user string) error
	Members(ctx context.Context, group string) ([]User, error)  // by name
	GroupsOf(ctx context.Context, user string) ([]Group, error) // by name
}

// Devices manages devices and their addresses.
type Devices interface {
	// CreateDevice enrolls a device for user and gives it one address from
	// every pool, in the same transaction. ErrPoolExhausted if a pool is
	// full, ErrExists if the key or the name is taken.
	CreateDevice(ctx context.Context, user string, spec DeviceSpec) (Device, error)
	Device(ctx context.Context, id int64) (Device, error)
	DeviceByKey(ctx context.Context, key Key) (Device, error)
	ListDevices(ctx context.Context, f DeviceFilter) ([]Device, error) // by user, then name, then id
	// RevokeDevice frees the device's addresses and marks it revoked; its
	// row stays. Revoking a revoked device is ErrNotFound.
	RevokeDevice(ctx context.Context, id int64) error
	// RenameDevice gives an active device a new name, valid by ParseName
	// (as at enrollment), and returns it renamed. ErrNotFound if there is
	// no such device or it is revoked, ErrExists if its user has another
	// active device of that name, ErrInvalid for a bad name. Its key and
	// addresses stay; the audit entry device.rename names it user/new
	// with the old name as detail. The device's own name again changes
	// nothing and records nothing.
	RenameDevice(ctx context.Context, id int64, name string) (Device, error)
	// SeenDevice records when the gateway last heard from the device. It is
	// an observation, not a change: it writes no audit row and no Change,
	// and never moves the time backwards.
	SeenDevice(ctx context.Context, id int64, at time.Time) error
}

// Pools manages address pools. Pools never overlap one another.
type Pools interface {
	// AddPool adds an IPv4 prefix of at most /30 or an IPv6 prefix of at
	// most /126. ErrExists if that very pool exists, ErrConflict if it
	// overlaps another. Devices that exist already get no address from it.
	AddPool(ctx context.Context, prefix netip.Prefix) (Pool, error)
	// RemovePool is ErrConflict while an active device holds an address
	// from the pool.
	RemovePool(ctx context.Context, id int64) error
	ListPools(ctx context.Context) ([]Pool, error) // by ID
}

// Invites manages enrollment invites.
type Invites interface {
	// CreateInvite makes an invite for user, valid for ttl and uses
	// enrollments. The returned secret (at least 128 random bits after its
	// public prefix) is shown once; only its SHA-256 is stored.
	CreateInvite(ctx context.Context, user string, ttl time.Duration, uses int) (inv Invite, secret string, err error)
	// Redeem checks the secret (prefix, hash in constant time, expiry, uses
	// left) and, in one transaction, takes one use and creates the device.
	// ErrInviteRefused (and nothing written) if the secret does not pass.
	Redeem(ctx context.Context, secret string, spec DeviceSpec) (Device, error)
	// ListInvites lists the user's invites ("" = every user's), by ID,
	// expired and used-up ones too until they are revoked.
	ListInvites(ctx context.Context, user string) ([]Invite, error)
	RevokeInvite(ctx context.Context, id int64) error
}

// Rules manages access rules.
type Rules interface {
	AddRule(ctx context.Context, group string, r Rule) (Rule, error) // r.ID, r.Group(ID) ignored
	RemoveRule(ctx context.Context, id int64) error
	ListRules(ctx context.Context, group string) ([]Rule, error) // "" = all groups; by ID
}

// Gateways manages the gateways that serve the registry.
type Gateways interface {
	AddGateway(ctx context.Context, g Gateway) (Gateway, error) // g.ID, g.CreatedAt ignored
	RemoveGateway(ctx context.Context, name string) error
	ListGateways(ctx context.Context) ([]Gateway, error) // by name
	// SetGatewayTLS sets gateway name's OpenConnect listener URL,
	// https://HOST[:PORT] ("": none), checked as AddGateway checks
	// Gateway.TLS, and records the change; setting the URL it has
	// already records nothing.
	SetGatewayTLS(ctx context.Context, name, tls string) error
	// NoteGatewayChange records, in the audit log and the change feed, a
	// change made to gateway name's own configuration (the routes it
	// offers, say), which lives outside the registry.
	NoteGatewayChange(ctx context.Context, name, action, detail string) error
}

// Log is the audit log and the change feed.
type Log interface {
	// Audit returns up to limit audit entries with ID > after, oldest first.
	Audit(ctx context.Context, after int64, limit int) ([]AuditEntry, error)
	// Changes returns every change with Seq > since, by Seq, and the
	// current sequence number (pass it as since next time). Sequence
	// numbers are committed in order, so a follower that asks again never
	// misses a change, even with several writers on one PostgreSQL.
	Changes(ctx context.Context, since uint64) (changes []Change, now uint64, err error)
	// NoteLogin appends one audit entry for a login attempt, made by the
	// actor of ctx: action is PROTOCOL.login or PROTOCOL.login_failed
	// (e.g. "tls.login"), target and detail at most MaxNoteTarget and
	// MaxNoteDetail bytes of UTF-8, else ErrInvalid. A login is an event,
	// not a change: the entry takes a sequence number (so audit entries
	// still commit in order) but writes no Change, so followers of the
	// change feed do nothing for it.
	NoteLogin(ctx context.Context, action, target, detail string) error
}

// Limits of a NoteLogin entry (bytes).
const (
	MaxNoteTarget = 256
	MaxNoteDetail = 1024
)

// Registry is the whole registry. It is safe for concurrent use.
type Registry interface {
	Users
	Groups
	Devices
	Pools
	Invites
	Rules
	Gateways
	Admins
	Log
	// Close releases the database. Calls after Close fail.
	Close() error
}

type actorKey struct{}

// WithActor returns a context under which changes are recorded in the audit
// log as made by actor (e.g. "cli:root", "api:admin"). Without it the actor
// is "system".
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorOf(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "system"
}
