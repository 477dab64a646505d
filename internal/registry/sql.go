package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// sqlRegistry implements Registry for both backends over database/sql.
type sqlRegistry struct {
	db   *sql.DB
	d    *dialect
	now  func() time.Time
	rand io.Reader // address search starts
}

func newSQLRegistry(ctx context.Context, db *sql.DB, d *dialect, opts Options) (*sqlRegistry, error) {
	if err := migrate(ctx, db, d); err != nil {
		db.Close()
		return nil, err
	}
	r := &sqlRegistry{db: db, d: d, now: opts.Now, rand: opts.AddressRand}
	if r.now == nil {
		r.now = time.Now
	}
	if r.rand == nil {
		r.rand = rand.Reader
	}
	return r, nil
}

func (r *sqlRegistry) Close() error { return r.db.Close() }

func nowMicros() int64 { return time.Now().UnixMicro() }

func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

func fromNullMicros(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromMicros(v.Int64)
}

// --- transactions ---------------------------------------------------------------

// txn is one write transaction and the changes it records; write appends
// them (bumping the sequence, then the change and audit rows) just before
// it commits.
type txn struct {
	ctx     context.Context
	tx      *sql.Tx
	r       *sqlRegistry
	now     int64
	records []record
}

// record is one audit entry and, unless kind is "" (an event such as a
// login), one change.
type record struct {
	kind                   Kind
	id                     int64
	action, target, detail string
}

func (r *sqlRegistry) write(ctx context.Context, fn func(t *txn) error) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("registry: begin: %w", err)
	}
	defer tx.Rollback()
	t := &txn{ctx: ctx, tx: tx, r: r, now: r.now().UnixMicro()}
	if err := fn(t); err != nil {
		return err
	}
	if err := t.flush(actorOf(ctx)); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("registry: commit: %w", err)
	}
	return nil
}

func (t *txn) exec(q string, args ...any) (sql.Result, error) {
	return t.tx.ExecContext(t.ctx, t.r.d.rebind(q), args...)
}

func (t *txn) query(q string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(t.ctx, t.r.d.rebind(q), args...)
}

func (t *txn) queryRow(q string, args ...any) *sql.Row {
	return t.tx.QueryRowContext(t.ctx, t.r.d.rebind(q), args...)
}

// insert runs an INSERT … RETURNING id and returns the id.
func (t *txn) insert(q string, args ...any) (int64, error) {
	var id int64
	err := t.queryRow(q+" RETURNING id", args...).Scan(&id)
	return id, err
}

func (t *txn) record(kind Kind, id int64, action, target, detail string) {
	t.records = append(t.records, record{kind, id, action, target, detail})
}

// flush writes the recorded changes. Bumping registry_seq locks its row
// until commit (PostgreSQL) or runs under the write lock (SQLite), so
// sequence numbers and audit IDs commit in order: a follower reading
// "seq > N" never misses one committed later with a lower number.
func (t *txn) flush(actor string) error {
	for _, rec := range t.records {
		var seq int64
		if err := t.queryRow(`UPDATE registry_seq SET seq = seq + 1 WHERE id = 1 RETURNING seq`).Scan(&seq); err != nil {
			return fmt.Errorf("registry: bump change sequence: %w", err)
		}
		if rec.kind != "" {
			if _, err := t.exec(`INSERT INTO changes (seq, kind, object_id, at) VALUES (?, ?, ?, ?)`, seq, string(rec.kind), rec.id, t.now); err != nil {
				return fmt.Errorf("registry: record change: %w", err)
			}
		}
		if _, err := t.exec(`INSERT INTO audit (seq, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)`,
			seq, t.now, actor, rec.action, rec.target, rec.detail); err != nil {
			return fmt.Errorf("registry: append audit: %w", err)
		}
	}
	return nil
}

// dbErr turns a unique violation into ErrExists with what, and wraps any
// other database error.
func (r *sqlRegistry) dbErr(err error, what string) error {
	if err == nil {
		return nil
	}
	if r.d.isUnique(err) {
		return fmt.Errorf("%w: %s", ErrExists, what)
	}
	if errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) ||
		errors.Is(err, ErrConflict) || errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrInviteRefused) ||
		errors.Is(err, ErrUnauthorized) {
		return err
	}
	return fmt.Errorf("registry (%s): %w", r.d.name, err)
}

func (r *sqlRegistry) queryRows(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return r.db.QueryContext(ctx, r.d.rebind(q), args...)
}

// --- users ------------------------------------------------------------------------

func (t *txn) userID(name string) (int64, error) {
	if _, err := ParseName(name); err != nil {
		return 0, err
	}
	// Locked (PostgreSQL) so that a concurrent RemoveUser cannot slip
	// between this check and what the caller adds for the user.
	var id int64
	err := t.queryRow(`SELECT id FROM users WHERE name = ? AND removed_at IS NULL`+t.r.d.forUpdate, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: no user %q: list users, or add it first", ErrNotFound, name)
	}
	return id, err
}

func (r *sqlRegistry) AddUser(ctx context.Context, name string) (User, error) {
	if _, err := ParseName(name); err != nil {
		return User{}, err
	}
	var u User
	err := r.write(ctx, func(t *txn) error {
		id, err := t.insert(`INSERT INTO users (name, created_at) VALUES (?, ?)`, name, t.now)
		if err != nil {
			return err
		}
		u = User{ID: id, Name: name, CreatedAt: fromMicros(t.now)}
		t.record(KindUser, id, "user.add", name, "")
		return nil
	})
	return u, r.dbErr(err, fmt.Sprintf("user %q exists: choose another name", name))
}

func (r *sqlRegistry) RemoveUser(ctx context.Context, name string) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		id, err := t.userID(name)
		if err != nil {
			return err
		}
		// Invites first: deleting them waits for redeems in flight, so the
		// device list below includes what they enrolled.
		rows, err := t.query(`SELECT id FROM invites WHERE user_id = ?`, id)
		if err != nil {
			return err
		}
		invites, err := scanIDs(rows)
		if err != nil {
			return err
		}
		for _, inv := range invites {
			t.record(KindInvite, inv, "invite.delete", name, "user removed")
		}
		if _, err := t.exec(`DELETE FROM invites WHERE user_id = ?`, id); err != nil {
			return err
		}
		devs, err := t.r.listDevices(t.ctx, t.tx, DeviceFilter{User: name})
		if err != nil {
			return err
		}
		for _, d := range devs {
			if _, err := t.revoke(d); err != nil { // one revoked meanwhile is fine
				return err
			}
		}
		rows, err = t.query(`SELECT group_id FROM group_members WHERE user_id = ?`, id)
		if err != nil {
			return err
		}
		groups, err := scanIDs(rows)
		if err != nil {
			return err
		}
		for _, g := range groups {
			t.record(KindGroup, g, "group.member.remove", name, "user removed")
		}
		if _, err := t.exec(`DELETE FROM group_members WHERE user_id = ?`, id); err != nil {
			return err
		}
		if _, err := t.exec(`UPDATE users SET removed_at = ?, password_hash = NULL WHERE id = ?`, t.now, id); err != nil {
			return err
		}
		t.record(KindUser, id, "user.remove", name, "")
		return nil
	}), "")
}

func (r *sqlRegistry) SetUserPassword(ctx context.Context, user, hash string) error {
	if _, ok := parseArgon2(hash); !ok {
		return fmt.Errorf("%w: the password hash of user %q is not an argon2id string this ptun can check (make it with HashPassword)", ErrInvalid, user)
	}
	return r.setUserPassword(ctx, user, sql.NullString{String: hash, Valid: true})
}

func (r *sqlRegistry) ClearUserPassword(ctx context.Context, user string) error {
	return r.setUserPassword(ctx, user, sql.NullString{})
}

// setUserPassword sets (hash valid) or clears user's password.
func (r *sqlRegistry) setUserPassword(ctx context.Context, user string, hash sql.NullString) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		id, err := t.userID(user)
		if err != nil {
			return err
		}
		cond := ""
		if !hash.Valid {
			cond = " AND password_hash IS NOT NULL" // none to clear: nothing recorded
		}
		res, err := t.exec(`UPDATE users SET password_hash = ? WHERE id = ?`+cond, hash, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return nil
		}
		detail := "set"
		if !hash.Valid {
			detail = "cleared"
		}
		t.record(KindUser, id, "user.passwd", user, detail)
		return nil
	}), "")
}

func (r *sqlRegistry) UserPassword(ctx context.Context, user string) (string, error) {
	if _, err := ParseName(user); err != nil {
		return "", err
	}
	var hash sql.NullString
	err := r.db.QueryRowContext(ctx, r.d.rebind(`SELECT password_hash FROM users WHERE name = ? AND removed_at IS NULL`), user).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: no user %q: list users, or add it first", ErrNotFound, user)
	} else if err != nil {
		return "", r.dbErr(err, "")
	}
	return hash.String, nil
}

func scanIDs(rows *sql.Rows) ([]int64, error) {
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

func (r *sqlRegistry) User(ctx context.Context, name string) (User, error) {
	if _, err := ParseName(name); err != nil {
		return User{}, err
	}
	var u User
	var at, pw int64
	err := r.db.QueryRowContext(ctx, r.d.rebind(`SELECT id, name, created_at, `+hasPassword+` FROM users WHERE name = ? AND removed_at IS NULL`), name).
		Scan(&u.ID, &u.Name, &at, &pw)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("%w: no user %q: list users, or add it first", ErrNotFound, name)
	}
	u.CreatedAt, u.HasPassword = fromMicros(at), pw != 0
	return u, r.dbErr(err, "")
}

// hasPassword is a users row's User.HasPassword, as 0 or 1 (one type on
// both backends).
const hasPassword = `CASE WHEN password_hash IS NULL THEN 0 ELSE 1 END`

func (r *sqlRegistry) ListUsers(ctx context.Context) ([]User, error) {
	return r.users(ctx, `SELECT id, name, created_at, `+hasPassword+` FROM users WHERE removed_at IS NULL ORDER BY name`)
}

// users runs q, which selects id, name, created_at and HasPassword as 0
// or 1.
func (r *sqlRegistry) users(ctx context.Context, q string, args ...any) ([]User, error) {
	rows, err := r.queryRows(ctx, q, args...)
	if err != nil {
		return nil, r.dbErr(err, "")
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		var u User
		var at, pw int64
		if err := rows.Scan(&u.ID, &u.Name, &at, &pw); err != nil {
			return nil, r.dbErr(err, "")
		}
		u.CreatedAt, u.HasPassword = fromMicros(at), pw != 0
		out = append(out, u)
	}
	return out, r.dbErr(rows.Err(), "")
}

// --- groups -----------------------------------------------------------------------

func (t *txn) groupID(name string) (int64, error) {
	if _, err := ParseName(name); err != nil {
		return 0, err
	}
	// Locked (PostgreSQL) like userID: RemoveGroup and what adds to the
	// group take turns.
	var id int64
	err := t.queryRow(`SELECT id FROM user_groups WHERE name = ?`+t.r.d.forUpdate, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: no group %q: list groups, or add it first", ErrNotFound, name)
	}
	return id, err
}

func (r *sqlRegistry) AddGroup(ctx context.Context, name string) (Group, error) {
	if _, err := ParseName(name); err != nil {
		return Group{}, err
	}
	var g Group
	err := r.write(ctx, func(t *txn) error {
		id, err := t.insert(`INSERT INTO user_groups (name, created_at) VALUES (?, ?)`, name, t.now)
		if err != nil {
			return err
		}
		g = Group{ID: id, Name: name, CreatedAt: fromMicros(t.now)}
		t.record(KindGroup, id, "group.add", name, "")
		return nil
	})
	return g, r.dbErr(err, fmt.Sprintf("group %q exists: choose another name", name))
}

func (r *sqlRegistry) RemoveGroup(ctx context.Context, name string) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		id, err := t.groupID(name)
		if err != nil {
			return err
		}
		rows, err := t.query(`SELECT id FROM rules WHERE group_id = ?`, id)
		if err != nil {
			return err
		}
		rules, err := scanIDs(rows)
		if err != nil {
			return err
		}
		for _, rule := range rules {
			t.record(KindRule, rule, "rule.remove", name, "group removed")
		}
		// Memberships and rules go with it (ON DELETE CASCADE).
		if _, err := t.exec(`DELETE FROM user_groups WHERE id = ?`, id); err != nil {
			return err
		}
		t.record(KindGroup, id, "group.remove", name, "")
		return nil
	}), "")
}

func (r *sqlRegistry) ListGroups(ctx context.Context) ([]Group, error) {
	return r.groups(ctx, `SELECT id, name, created_at, 0 FROM user_groups ORDER BY name`)
}

func (r *sqlRegistry) groups(ctx context.Context, q string, args ...any) ([]Group, error) {
	us, err := r.users(ctx, q, args...) // the same columns, 0 for HasPassword
	out := make([]Group, len(us))
	for i, u := range us {
		out[i] = Group{ID: u.ID, Name: u.Name, CreatedAt: u.CreatedAt}
	}
	return out, err
}

func (r *sqlRegistry) AddMember(ctx context.Context, group, user string) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		gid, err := t.groupID(group)
		if err != nil {
			return err
		}
		uid, err := t.userID(user)
		if err != nil {
			return err
		}
		res, err := t.exec(`INSERT INTO group_members (group_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, gid, uid)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return nil // already a member: nothing changes, nothing recorded
		}
		t.record(KindGroup, gid, "group.member.add", group+"/"+user, "")
		return nil
	}), fmt.Sprintf("user %q is in group %q already", user, group))
}

func (r *sqlRegistry) RemoveMember(ctx context.Context, group, user string) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		gid, err := t.groupID(group)
		if err != nil {
			return err
		}
		uid, err := t.userID(user)
		if err != nil {
			return err
		}
		res, err := t.exec(`DELETE FROM group_members WHERE group_id = ? AND user_id = ?`, gid, uid)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: user %q is not in group %q", ErrNotFound, user, group)
		}
		t.record(KindGroup, gid, "group.member.remove", group+"/"+user, "")
		return nil
	}), "")
}

func (r *sqlRegistry) Members(ctx context.Context, group string) ([]User, error) {
	if _, err := ParseName(group); err != nil {
		return nil, err
	}
	var n int
	if err := r.db.QueryRowContext(ctx, r.d.rebind(`SELECT COUNT(*) FROM user_groups WHERE name = ?`), group).Scan(&n); err != nil {
		return nil, r.dbErr(err, "")
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: no group %q: list groups, or add it first", ErrNotFound, group)
	}
	return r.users(ctx, `SELECT u.id, u.name, u.created_at, CASE WHEN u.password_hash IS NULL THEN 0 ELSE 1 END FROM users u
		JOIN group_members m ON m.user_id = u.id JOIN user_groups g ON g.id = m.group_id
		WHERE g.name = ? AND u.removed_at IS NULL ORDER BY u.name`, group)
}

func (r *sqlRegistry) GroupsOf(ctx context.Context, user string) ([]Group, error) {
	if _, err := r.User(ctx, user); err != nil {
		return nil, err
	}
	return r.groups(ctx, `SELECT g.id, g.name, g.created_at, 0 FROM user_groups g
		JOIN group_members m ON m.group_id = g.id JOIN users u ON u.id = m.user_id
		WHERE u.name = ? AND u.removed_at IS NULL ORDER BY g.name`, user)
}

// --- pools ------------------------------------------------------------------------

func (r *sqlRegistry) AddPool(ctx context.Context, prefix netip.Prefix) (Pool, error) {
	prefix, err := checkPool(prefix)
	if err != nil {
		return Pool{}, err
	}
	var p Pool
	err = r.write(ctx, func(t *txn) error {
		if err := t.r.d.lock(t.ctx, t.tx, lockPoolSet); err != nil {
			return err
		}
		pools, err := t.r.listPools(t.ctx, t.tx)
		if err != nil {
			return err
		}
		for _, other := range pools {
			if other.Prefix == prefix {
				return fmt.Errorf("%w: pool %s exists (id %d)", ErrExists, prefix, other.ID)
			}
			if other.Prefix.Overlaps(prefix) {
				return fmt.Errorf("%w: pool %s overlaps pool %s (id %d): choose a range outside it", ErrConflict, prefix, other.Prefix, other.ID)
			}
		}
		id, err := t.insert(`INSERT INTO pools (cidr, created_at) VALUES (?, ?)`, prefix.String(), t.now)
		if err != nil {
			return err
		}
		p = Pool{ID: id, Prefix: prefix, CreatedAt: fromMicros(t.now)}
		t.record(KindPool, id, "pool.add", prefix.String(), "")
		return nil
	})
	return p, r.dbErr(err, fmt.Sprintf("pool %s exists", prefix))
}

func (r *sqlRegistry) RemovePool(ctx context.Context, id int64) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		if err := t.r.d.lock(t.ctx, t.tx, lockPoolSet); err != nil {
			return err
		}
		if err := t.r.d.lock(t.ctx, t.tx, id); err != nil {
			return err
		}
		var cidr string
		err := t.queryRow(`SELECT cidr FROM pools WHERE id = ?`, id).Scan(&cidr)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no pool with id %d: list pools", ErrNotFound, id)
		} else if err != nil {
			return err
		}
		var n int
		if err := t.queryRow(`SELECT COUNT(*) FROM device_addresses WHERE pool_id = ?`, id).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: pool %s still holds %d device addresses: revoke those devices first", ErrConflict, cidr, n)
		}
		if _, err := t.exec(`DELETE FROM pools WHERE id = ?`, id); err != nil {
			return err
		}
		t.record(KindPool, id, "pool.remove", cidr, "")
		return nil
	}), "")
}

// querier is what both *sql.DB and *sql.Tx offer, so reads can run inside a
// write transaction (where SQLite's single connection is taken).
type querier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

func (r *sqlRegistry) ListPools(ctx context.Context) ([]Pool, error) {
	ps, err := r.listPools(ctx, r.db)
	return ps, r.dbErr(err, "")
}

func (r *sqlRegistry) listPools(ctx context.Context, q querier) ([]Pool, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, cidr, created_at FROM pools ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Pool
	for rows.Next() {
		var p Pool
		var cidr string
		var at int64
		if err := rows.Scan(&p.ID, &cidr, &at); err != nil {
			return nil, err
		}
		if p.Prefix, err = netip.ParsePrefix(cidr); err != nil {
			return nil, fmt.Errorf("pool %d has a malformed CIDR %q in the database: %w", p.ID, cidr, err)
		}
		p.CreatedAt = fromMicros(at)
		out = append(out, p)
	}
	return out, rows.Err()
}

// --- devices ----------------------------------------------------------------------

// checkSpec checks spec and returns it with its protocol spelled out.
func checkSpec(spec DeviceSpec) (DeviceSpec, error) {
	if _, err := ParseName(spec.Name); err != nil {
		return spec, fmt.Errorf("device: %w", err)
	}
	if spec.PublicKey == (Key{}) {
		return spec, fmt.Errorf("%w: device %q has an all-zero public key: send the key the device generated", ErrInvalid, spec.Name)
	}
	switch spec.Protocol {
	case "":
		spec.Protocol = ProtocolWireGuard
	case ProtocolWireGuard, ProtocolOpenConnect:
	default:
		return spec, fmt.Errorf("%w: device %q: protocol %q: give %s or %s", ErrInvalid, spec.Name, spec.Protocol, ProtocolWireGuard, ProtocolOpenConnect)
	}
	return spec, nil
}

func (r *sqlRegistry) CreateDevice(ctx context.Context, user string, spec DeviceSpec) (Device, error) {
	spec, err := checkSpec(spec)
	if err != nil {
		return Device{}, err
	}
	var d Device
	err = r.write(ctx, func(t *txn) error {
		uid, err := t.userID(user)
		if err != nil {
			return err
		}
		d, err = t.createDevice(uid, user, spec, spec.Via)
		return err
	})
	return d, r.dbErr(err, fmt.Sprintf("device %s/%s: its name or its public key is taken", user, spec.Name))
}

// createDevice inserts the device and allocates its addresses. Pools are
// locked in ID order (every transaction takes pool locks in that order, so
// two never wait on each other); the lock is held until commit, and the
// UNIQUE (pool_id, addr) constraint backs it up. spec has been through
// checkSpec.
func (t *txn) createDevice(uid int64, user string, spec DeviceSpec, via string) (Device, error) {
	var n int
	if err := t.queryRow(`SELECT COUNT(*) FROM devices WHERE public_key = ?`, spec.PublicKey[:]).Scan(&n); err != nil {
		return Device{}, err
	}
	if n > 0 {
		return Device{}, fmt.Errorf("%w: this public key is enrolled already (keys are never reused, even after a revoke): generate a new key on the device", ErrExists)
	}
	if err := t.queryRow(`SELECT COUNT(*) FROM devices WHERE user_id = ? AND name = ? AND revoked_at IS NULL`, uid, spec.Name).Scan(&n); err != nil {
		return Device{}, err
	}
	if n > 0 {
		return Device{}, fmt.Errorf("%w: user %q has a device named %q: choose another name, or revoke that device first", ErrExists, user, spec.Name)
	}
	id, err := t.insert(`INSERT INTO devices (user_id, name, protocol, public_key, created_at) VALUES (?, ?, ?, ?, ?)`,
		uid, spec.Name, spec.Protocol, spec.PublicKey[:], t.now)
	if err != nil {
		return Device{}, err
	}
	d := Device{ID: id, UserID: uid, User: user, Name: spec.Name, Protocol: spec.Protocol, PublicKey: spec.PublicKey, CreatedAt: fromMicros(t.now)}
	pools, err := t.r.listPools(t.ctx, t.tx)
	if err != nil {
		return Device{}, err
	}
	var addrs []string
	for _, p := range pools {
		if err := t.r.d.lock(t.ctx, t.tx, p.ID); err != nil {
			return Device{}, err
		}
		// RemovePool takes the same lock: the pool may be gone now.
		if err := t.queryRow(`SELECT COUNT(*) FROM pools WHERE id = ?`, p.ID).Scan(&n); err != nil {
			return Device{}, err
		}
		if n == 0 {
			continue
		}
		used, err := t.usedAddrs(p.ID)
		if err != nil {
			return Device{}, err
		}
		a, err := pickAddr(p.Prefix, used, t.r.rand)
		if err != nil {
			return Device{}, err
		}
		if _, err := t.exec(`INSERT INTO device_addresses (device_id, pool_id, addr) VALUES (?, ?, ?)`, id, p.ID, a.String()); err != nil {
			return Device{}, err
		}
		d.Addresses = append(d.Addresses, a)
		addrs = append(addrs, a.String())
	}
	detail := strings.Join(addrs, " ")
	if spec.Protocol != ProtocolWireGuard {
		detail = strings.TrimSpace(detail + " " + spec.Protocol)
	}
	if via != "" {
		detail = strings.TrimSpace(detail + " via " + via)
	}
	t.record(KindDevice, id, "device.create", user+"/"+spec.Name, detail)
	return d, nil
}

func (t *txn) usedAddrs(pool int64) (map[netip.Addr]bool, error) {
	rows, err := t.query(`SELECT addr FROM device_addresses WHERE pool_id = ?`, pool)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	used := make(map[netip.Addr]bool)
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("pool %d has a malformed address %q in the database: %w", pool, s, err)
		}
		used[a] = true
	}
	return used, rows.Err()
}

func (r *sqlRegistry) Device(ctx context.Context, id int64) (Device, error) {
	ds, err := r.listDevicesWhere(ctx, r.db, `d.id = ?`, id)
	if err != nil {
		return Device{}, r.dbErr(err, "")
	}
	if len(ds) == 0 {
		return Device{}, fmt.Errorf("%w: no device with id %d: list devices", ErrNotFound, id)
	}
	return ds[0], nil
}

func (r *sqlRegistry) DeviceByKey(ctx context.Context, key Key) (Device, error) {
	ds, err := r.listDevicesWhere(ctx, r.db, `d.public_key = ?`, key[:])
	if err != nil {
		return Device{}, r.dbErr(err, "")
	}
	if len(ds) == 0 {
		return Device{}, fmt.Errorf("%w: no device has this public key", ErrNotFound)
	}
	return ds[0], nil
}

func (r *sqlRegistry) ListDevices(ctx context.Context, f DeviceFilter) ([]Device, error) {
	if f.User != "" {
		if _, err := r.User(ctx, f.User); err != nil {
			return nil, err
		}
	}
	ds, err := r.listDevices(ctx, r.db, f)
	return ds, r.dbErr(err, "")
}

func (r *sqlRegistry) listDevices(ctx context.Context, q querier, f DeviceFilter) ([]Device, error) {
	var conds []string
	var args []any
	if f.User != "" {
		conds = append(conds, `u.name = ? AND u.removed_at IS NULL`)
		args = append(args, f.User)
	}
	if f.Name != "" {
		conds = append(conds, `d.name = ?`)
		args = append(args, f.Name)
	}
	if f.Protocol != "" {
		conds = append(conds, `d.protocol = ?`)
		args = append(args, f.Protocol)
	}
	if !f.IncludeRevoked {
		conds = append(conds, `d.revoked_at IS NULL`)
	}
	if len(conds) == 0 {
		conds = append(conds, `1 = 1`)
	}
	return r.listDevicesWhere(ctx, q, strings.Join(conds, " AND "), args...)
}

func (r *sqlRegistry) listDevicesWhere(ctx context.Context, q querier, where string, args ...any) ([]Device, error) {
	rows, err := q.QueryContext(ctx, r.d.rebind(`SELECT d.id, d.user_id, u.name, d.name, d.protocol, d.public_key, d.created_at, d.last_seen_at, d.revoked_at
		FROM devices d JOIN users u ON u.id = d.user_id WHERE `+where+` ORDER BY u.name, d.name, d.id`), args...)
	if err != nil {
		return nil, err
	}
	var out []Device
	index := make(map[int64]int)
	for rows.Next() {
		var d Device
		var key []byte
		var created int64
		var seen, revoked sql.NullInt64
		if err := rows.Scan(&d.ID, &d.UserID, &d.User, &d.Name, &d.Protocol, &key, &created, &seen, &revoked); err != nil {
			rows.Close()
			return nil, err
		}
		if len(key) != len(d.PublicKey) {
			rows.Close()
			return nil, fmt.Errorf("device %d has a %d-byte public key in the database", d.ID, len(key))
		}
		copy(d.PublicKey[:], key)
		d.CreatedAt, d.LastSeenAt, d.RevokedAt = fromMicros(created), fromNullMicros(seen), fromNullMicros(revoked)
		index[d.ID] = len(out)
		out = append(out, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, nil
	}
	rows, err = q.QueryContext(ctx, r.d.rebind(`SELECT a.device_id, a.addr FROM device_addresses a
		JOIN devices d ON d.id = a.device_id JOIN users u ON u.id = d.user_id
		WHERE `+where+` ORDER BY a.device_id, a.pool_id`), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var s string
		if err := rows.Scan(&id, &s); err != nil {
			return nil, err
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("device %d has a malformed address %q in the database: %w", id, s, err)
		}
		if i, ok := index[id]; ok {
			out[i].Addresses = append(out[i].Addresses, a)
		}
	}
	return out, rows.Err()
}

func (r *sqlRegistry) RevokeDevice(ctx context.Context, id int64) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		ds, err := t.r.listDevicesWhere(t.ctx, t.tx, `d.id = ?`, id)
		if err != nil {
			return err
		}
		if len(ds) == 0 {
			return fmt.Errorf("%w: no device with id %d: list devices", ErrNotFound, id)
		}
		if ds[0].Revoked() {
			return fmt.Errorf("%w: device %s/%s was revoked already (at %s)", ErrNotFound, ds[0].User, ds[0].Name, ds[0].RevokedAt.Format(time.RFC3339))
		}
		if done, err := t.revoke(ds[0]); err != nil {
			return err
		} else if !done {
			return fmt.Errorf("%w: device %s/%s was revoked already", ErrNotFound, ds[0].User, ds[0].Name)
		}
		return nil
	}), "")
}

func (r *sqlRegistry) RenameDevice(ctx context.Context, id int64, name string) (Device, error) {
	if _, err := ParseName(name); err != nil {
		return Device{}, fmt.Errorf("device: %w", err)
	}
	var d Device
	err := r.write(ctx, func(t *txn) error {
		ds, err := t.r.listDevicesWhere(t.ctx, t.tx, `d.id = ?`, id)
		if err != nil {
			return err
		}
		if len(ds) == 0 {
			return fmt.Errorf("%w: no device with id %d: list devices", ErrNotFound, id)
		}
		d = ds[0]
		if d.Revoked() {
			return fmt.Errorf("%w: device %s/%s was revoked (at %s): a revoked device keeps its name", ErrNotFound, d.User, d.Name, d.RevokedAt.Format(time.RFC3339))
		}
		if d.Name == name {
			return nil // nothing changes, nothing recorded
		}
		var n int
		if err := t.queryRow(`SELECT COUNT(*) FROM devices WHERE user_id = ? AND name = ? AND revoked_at IS NULL`, d.UserID, name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: user %q has a device named %q: choose another name, or revoke that device first", ErrExists, d.User, name)
		}
		// Checked again under the row lock: a revoke meanwhile wins.
		res, err := t.exec(`UPDATE devices SET name = ? WHERE id = ? AND revoked_at IS NULL`, name, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: device %s/%s was revoked meanwhile", ErrNotFound, d.User, d.Name)
		}
		old := d.Name
		d.Name = name
		t.record(KindDevice, id, "device.rename", d.User+"/"+name, old)
		return nil
	})
	if err != nil {
		// The unique index backs the check up against a concurrent rename
		// or enrollment.
		return Device{}, r.dbErr(err, fmt.Sprintf("device %s/%s: the name is taken", d.User, name))
	}
	return d, nil
}

// revoke revokes d and frees its addresses; done is false (and nothing
// written) if another transaction revoked it first.
func (t *txn) revoke(d Device) (done bool, err error) {
	// The condition is checked again under the row lock: of two revokes at
	// once, one does it and the other finds it done.
	res, err := t.exec(`UPDATE devices SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`, t.now, d.ID)
	if err != nil {
		return false, err
	}
	if n, err := res.RowsAffected(); err != nil {
		return false, err
	} else if n == 0 {
		return false, nil
	}
	if _, err := t.exec(`DELETE FROM device_addresses WHERE device_id = ?`, d.ID); err != nil {
		return false, err
	}
	addrs := make([]string, len(d.Addresses))
	for i, a := range d.Addresses {
		addrs[i] = a.String()
	}
	t.record(KindDevice, d.ID, "device.revoke", d.User+"/"+d.Name, "freed "+strings.Join(addrs, " "))
	return true, nil
}

func (r *sqlRegistry) SeenDevice(ctx context.Context, id int64, at time.Time) error {
	res, err := r.db.ExecContext(ctx, r.d.rebind(`UPDATE devices SET last_seen_at = ?
		WHERE id = ? AND (last_seen_at IS NULL OR last_seen_at < ?)`), at.UnixMicro(), id, at.UnixMicro())
	if err != nil {
		return r.dbErr(err, "")
	}
	if n, err := res.RowsAffected(); err != nil {
		return r.dbErr(err, "")
	} else if n == 0 {
		if _, err := r.Device(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// --- invites ----------------------------------------------------------------------

func (r *sqlRegistry) CreateInvite(ctx context.Context, user string, ttl time.Duration, uses int) (Invite, string, error) {
	if ttl <= 0 {
		return Invite{}, "", fmt.Errorf("%w: invite lifetime %v: give a positive duration, e.g. 24h", ErrInvalid, ttl)
	}
	if uses < 1 {
		return Invite{}, "", fmt.Errorf("%w: invite uses %d: give at least 1", ErrInvalid, uses)
	}
	var buf [invitePrefixBytes + inviteSecretBytes]byte
	if _, err := io.ReadFull(rand.Reader, buf[:]); err != nil {
		return Invite{}, "", fmt.Errorf("registry: random invite secret: %w", err)
	}
	prefixBytes, secretBytes := buf[:invitePrefixBytes], buf[invitePrefixBytes:]
	secret := formatInviteSecret(prefixBytes, secretBytes)
	prefix, _, _ := strings.Cut(secret, ".")
	hash := sha256.Sum256(secretBytes)
	var inv Invite
	err := r.write(ctx, func(t *txn) error {
		uid, err := t.userID(user)
		if err != nil {
			return err
		}
		expires := t.now + ttl.Microseconds()
		id, err := t.insert(`INSERT INTO invites (prefix, secret_hash, user_id, created_at, expires_at, uses_left) VALUES (?, ?, ?, ?, ?, ?)`,
			prefix, hash[:], uid, t.now, expires, uses)
		if err != nil {
			return err
		}
		inv = Invite{ID: id, Prefix: prefix, UserID: uid, User: user, CreatedAt: fromMicros(t.now), ExpiresAt: fromMicros(expires), UsesLeft: uses}
		t.record(KindInvite, id, "invite.create", user, fmt.Sprintf("prefix %s, %d uses, expires %s", prefix, uses, inv.ExpiresAt.Format(time.RFC3339)))
		return nil
	})
	if err != nil {
		return Invite{}, "", r.dbErr(err, "invite prefix collision: try again")
	}
	return inv, secret, nil
}

func (r *sqlRegistry) Redeem(ctx context.Context, secret string, spec DeviceSpec) (Device, error) {
	prefix, secretBytes, err := parseInviteSecret(secret)
	if err != nil {
		return Device{}, err
	}
	if spec, err = checkSpec(spec); err != nil {
		return Device{}, err
	}
	hash := sha256.Sum256(secretBytes)
	var d Device
	err = r.write(ctx, func(t *txn) error {
		var id, uid, expires int64
		var uses int
		var stored []byte
		var user string
		err := t.queryRow(`SELECT i.id, i.user_id, u.name, i.secret_hash, i.expires_at, i.uses_left
			FROM invites i JOIN users u ON u.id = i.user_id WHERE i.prefix = ?`, prefix).Scan(&id, &uid, &user, &stored, &expires, &uses)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no invite with prefix %s (unknown, revoked, or its user was removed)", ErrInviteRefused, prefix)
		} else if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(stored, hash[:]) != 1 {
			return fmt.Errorf("%w: invite %s: the secret does not match (forged or mistyped)", ErrInviteRefused, prefix)
		}
		if t.now >= expires {
			return fmt.Errorf("%w: invite %s expired at %s: ask for a new one", ErrInviteRefused, prefix, fromMicros(expires).Format(time.RFC3339))
		}
		// The WHERE re-checks under the row lock, so two redeems of the last
		// use cannot both pass.
		res, err := t.exec(`UPDATE invites SET uses_left = uses_left - 1 WHERE id = ? AND uses_left > 0`, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: invite %s is used up: ask for a new one", ErrInviteRefused, prefix)
		}
		t.record(KindInvite, id, "invite.redeem", user, "prefix "+prefix)
		d, err = t.createDevice(uid, user, spec, "invite "+prefix)
		return err
	})
	return d, r.dbErr(err, fmt.Sprintf("device %q: its name or its public key is taken", spec.Name))
}

func (r *sqlRegistry) ListInvites(ctx context.Context, user string) ([]Invite, error) {
	q := `SELECT i.id, i.prefix, i.user_id, u.name, i.created_at, i.expires_at, i.uses_left
		FROM invites i JOIN users u ON u.id = i.user_id`
	var args []any
	if user != "" {
		if _, err := r.User(ctx, user); err != nil {
			return nil, err
		}
		q += ` WHERE u.name = ? AND u.removed_at IS NULL`
		args = append(args, user)
	}
	rows, err := r.queryRows(ctx, q+` ORDER BY i.id`, args...)
	if err != nil {
		return nil, r.dbErr(err, "")
	}
	defer rows.Close()
	var out []Invite
	for rows.Next() {
		var inv Invite
		var created, expires int64
		if err := rows.Scan(&inv.ID, &inv.Prefix, &inv.UserID, &inv.User, &created, &expires, &inv.UsesLeft); err != nil {
			return nil, r.dbErr(err, "")
		}
		inv.CreatedAt, inv.ExpiresAt = fromMicros(created), fromMicros(expires)
		out = append(out, inv)
	}
	return out, r.dbErr(rows.Err(), "")
}

func (r *sqlRegistry) RevokeInvite(ctx context.Context, id int64) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		var prefix string
		err := t.queryRow(`SELECT prefix FROM invites WHERE id = ?`, id).Scan(&prefix)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no invite with id %d: list invites", ErrNotFound, id)
		} else if err != nil {
			return err
		}
		if _, err := t.exec(`DELETE FROM invites WHERE id = ?`, id); err != nil {
			return err
		}
		t.record(KindInvite, id, "invite.revoke", prefix, "")
		return nil
	}), "")
}

// --- rules ------------------------------------------------------------------------

func (r *sqlRegistry) AddRule(ctx context.Context, group string, rule Rule) (Rule, error) {
	rule, err := checkRule(Rule{Dest: rule.Dest, Proto: rule.Proto, PortFrom: rule.PortFrom, PortTo: rule.PortTo})
	if err != nil {
		return Rule{}, err
	}
	err = r.write(ctx, func(t *txn) error {
		gid, err := t.groupID(group)
		if err != nil {
			return err
		}
		id, err := t.insert(`INSERT INTO rules (group_id, dest, proto, port_from, port_to, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
			gid, rule.Dest.String(), string(rule.Proto), int(rule.PortFrom), int(rule.PortTo), t.now)
		if err != nil {
			return err
		}
		rule.ID, rule.GroupID, rule.Group = id, gid, group
		t.record(KindRule, id, "rule.add", group, rule.String())
		return nil
	})
	if err != nil {
		return Rule{}, r.dbErr(err, "")
	}
	return rule, nil
}

func (r *sqlRegistry) RemoveRule(ctx context.Context, id int64) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		rules, err := t.r.rules(t.ctx, t.tx, ` WHERE r.id = ?`, id)
		if err != nil {
			return err
		}
		if len(rules) == 0 {
			return fmt.Errorf("%w: no rule with id %d: list rules", ErrNotFound, id)
		}
		if _, err := t.exec(`DELETE FROM rules WHERE id = ?`, id); err != nil {
			return err
		}
		t.record(KindRule, id, "rule.remove", rules[0].Group, rules[0].String())
		return nil
	}), "")
}

func (r *sqlRegistry) ListRules(ctx context.Context, group string) ([]Rule, error) {
	if group == "" {
		rs, err := r.rules(ctx, r.db, "")
		return rs, r.dbErr(err, "")
	}
	if _, err := ParseName(group); err != nil {
		return nil, err
	}
	var n int
	if err := r.db.QueryRowContext(ctx, r.d.rebind(`SELECT COUNT(*) FROM user_groups WHERE name = ?`), group).Scan(&n); err != nil {
		return nil, r.dbErr(err, "")
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: no group %q: list groups, or add it first", ErrNotFound, group)
	}
	rs, err := r.rules(ctx, r.db, ` WHERE g.name = ?`, group)
	return rs, r.dbErr(err, "")
}

func (r *sqlRegistry) rules(ctx context.Context, q querier, where string, args ...any) ([]Rule, error) {
	rows, err := q.QueryContext(ctx, r.d.rebind(`SELECT r.id, r.group_id, g.name, r.dest, r.proto, r.port_from, r.port_to
		FROM rules r JOIN user_groups g ON g.id = r.group_id`+where+` ORDER BY r.id`), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Rule
	for rows.Next() {
		var rule Rule
		var dest, proto string
		var from, to int
		if err := rows.Scan(&rule.ID, &rule.GroupID, &rule.Group, &dest, &proto, &from, &to); err != nil {
			return nil, err
		}
		if rule.Dest, err = netip.ParsePrefix(dest); err != nil {
			return nil, fmt.Errorf("rule %d has a malformed destination %q in the database: %w", rule.ID, dest, err)
		}
		rule.Proto, rule.PortFrom, rule.PortTo = Proto(proto), uint16(from), uint16(to)
		out = append(out, rule)
	}
	return out, rows.Err()
}

// --- gateways ---------------------------------------------------------------------

func (r *sqlRegistry) AddGateway(ctx context.Context, g Gateway) (Gateway, error) {
	if _, err := ParseName(g.Name); err != nil {
		return Gateway{}, fmt.Errorf("gateway: %w", err)
	}
	if g.PublicKey == (Key{}) {
		return Gateway{}, fmt.Errorf("%w: gateway %q has an all-zero public key", ErrInvalid, g.Name)
	}
	ep, err := ParseEndpoint(g.Endpoint)
	if err != nil {
		return Gateway{}, err
	}
	g.Endpoint = ep
	if err := checkGatewayURL(g.Name, "API", g.API); err != nil {
		return Gateway{}, err
	}
	if err := checkGatewayURL(g.Name, "TLS listener", g.TLS); err != nil {
		return Gateway{}, err
	}
	if len(g.Pin) > 100 {
		return Gateway{}, fmt.Errorf("%w: gateway %q's pin is too long", ErrInvalid, g.Name)
	}
	err = r.write(ctx, func(t *txn) error {
		id, err := t.insert(`INSERT INTO gateways (name, public_key, endpoint, api, pin, tls, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`, g.Name, g.PublicKey[:], g.Endpoint, g.API, g.Pin, g.TLS, t.now)
		if err != nil {
			return err
		}
		g.ID, g.CreatedAt = id, fromMicros(t.now)
		t.record(KindGateway, id, "gateway.add", g.Name, g.Endpoint)
		return nil
	})
	if err != nil {
		return Gateway{}, r.dbErr(err, fmt.Sprintf("gateway %q: its name or its public key is taken", g.Name))
	}
	return g, nil
}

// checkGatewayURL checks gateway name's URL what ("" allowed): an
// https://HOST[:PORT] URL, with no path, query, fragment or user.
func checkGatewayURL(name, what, s string) error {
	if s == "" {
		return nil
	}
	if u, err := url.Parse(s); err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%w: gateway %q's %s %q is not an https://HOST[:PORT] URL", ErrInvalid, name, what, s)
	}
	return nil
}

func (r *sqlRegistry) SetGatewayTLS(ctx context.Context, name, tls string) error {
	if _, err := ParseName(name); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if err := checkGatewayURL(name, "TLS listener", tls); err != nil {
		return err
	}
	return r.dbErr(r.write(ctx, func(t *txn) error {
		var id int64
		var was string
		err := t.queryRow(`SELECT id, tls FROM gateways WHERE name = ?`, name).Scan(&id, &was)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no gateway %q: list gateways", ErrNotFound, name)
		} else if err != nil {
			return err
		}
		if was == tls {
			return nil // no change: nothing to record
		}
		if _, err := t.exec(`UPDATE gateways SET tls = ? WHERE id = ?`, tls, id); err != nil {
			return err
		}
		detail := tls
		if detail == "" {
			detail = "none"
		}
		t.record(KindGateway, id, "gateway.tls", name, detail)
		return nil
	}), "")
}

func (r *sqlRegistry) RemoveGateway(ctx context.Context, name string) error {
	if _, err := ParseName(name); err != nil {
		return err
	}
	return r.dbErr(r.write(ctx, func(t *txn) error {
		var id int64
		err := t.queryRow(`SELECT id FROM gateways WHERE name = ?`, name).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no gateway %q: list gateways", ErrNotFound, name)
		} else if err != nil {
			return err
		}
		if _, err := t.exec(`DELETE FROM gateways WHERE id = ?`, id); err != nil {
			return err
		}
		t.record(KindGateway, id, "gateway.remove", name, "")
		return nil
	}), "")
}

func (r *sqlRegistry) NoteGatewayChange(ctx context.Context, name, action, detail string) error {
	if _, err := ParseName(name); err != nil {
		return err
	}
	if !strings.HasPrefix(action, "gateway.") || len(action) > 64 || len(detail) > 4096 {
		return fmt.Errorf("%w: a gateway change's action is gateway.* and short", ErrInvalid)
	}
	return r.dbErr(r.write(ctx, func(t *txn) error {
		var id int64
		err := t.queryRow(`SELECT id FROM gateways WHERE name = ?`, name).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no gateway %q", ErrNotFound, name)
		} else if err != nil {
			return err
		}
		t.record(KindGateway, id, action, name, detail)
		return nil
	}), "")
}

func (r *sqlRegistry) ListGateways(ctx context.Context) ([]Gateway, error) {
	rows, err := r.queryRows(ctx, `SELECT id, name, public_key, endpoint, api, pin, tls, created_at FROM gateways ORDER BY name`)
	if err != nil {
		return nil, r.dbErr(err, "")
	}
	defer rows.Close()
	var out []Gateway
	for rows.Next() {
		var g Gateway
		var key []byte
		var at int64
		if err := rows.Scan(&g.ID, &g.Name, &key, &g.Endpoint, &g.API, &g.Pin, &g.TLS, &at); err != nil {
			return nil, r.dbErr(err, "")
		}
		copy(g.PublicKey[:], key)
		g.CreatedAt = fromMicros(at)
		out = append(out, g)
	}
	return out, r.dbErr(rows.Err(), "")
}

// --- log --------------------------------------------------------------------------

func (r *sqlRegistry) NoteLogin(ctx context.Context, action, target, detail string) error {
	proto, outcome, _ := strings.Cut(action, ".")
	if (outcome != "login" && outcome != "login_failed") || proto == "" || len(proto) > 16 || strings.Trim(proto, "abcdefghijklmnopqrstuvwxyz") != "" {
		return fmt.Errorf("%w: a login's audit action %q: give PROTOCOL.login or PROTOCOL.login_failed", ErrInvalid, action)
	}
	if len(target) > MaxNoteTarget || len(detail) > MaxNoteDetail || !utf8.ValidString(target) || !utf8.ValidString(detail) {
		return fmt.Errorf("%w: a login's audit target or detail is too long or not UTF-8", ErrInvalid)
	}
	return r.dbErr(r.write(ctx, func(t *txn) error {
		t.record("", 0, action, target, detail)
		return nil
	}), "")
}

func (r *sqlRegistry) Audit(ctx context.Context, after int64, limit int) ([]AuditEntry, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("%w: audit limit %d: give a positive number", ErrInvalid, limit)
	}
	rows, err := r.queryRows(ctx, `SELECT id, at, actor, action, target, detail FROM audit WHERE id > ? ORDER BY id LIMIT ?`, after, limit)
	if err != nil {
		return nil, r.dbErr(err, "")
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.Target, &e.Detail); err != nil {
			return nil, r.dbErr(err, "")
		}
		e.At = fromMicros(at)
		out = append(out, e)
	}
	return out, r.dbErr(rows.Err(), "")
}

func (r *sqlRegistry) Changes(ctx context.Context, since uint64) ([]Change, uint64, error) {
	// No transaction needed: sequence numbers commit in order (see flush),
	// so once "now" is read every change up to it is visible.
	var now int64
	if err := r.db.QueryRowContext(ctx, `SELECT seq FROM registry_seq WHERE id = 1`).Scan(&now); err != nil {
		return nil, 0, r.dbErr(err, "")
	}
	rows, err := r.queryRows(ctx, `SELECT seq, kind, object_id FROM changes WHERE seq > ? AND seq <= ? ORDER BY seq`, int64(since), now)
	if err != nil {
		return nil, 0, r.dbErr(err, "")
	}
	defer rows.Close()
	var out []Change
	for rows.Next() {
		var c Change
		var seq int64
		var kind string
		if err := rows.Scan(&seq, &kind, &c.ID); err != nil {
			return nil, 0, r.dbErr(err, "")
		}
		c.Seq, c.Kind = uint64(seq), Kind(kind)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, r.dbErr(err, "")
	}
	return out, uint64(now), nil
}
