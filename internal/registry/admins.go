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
	"strings"
	"time"
)

// ErrUnauthorized: a name and password, an API token or a session does
// not authenticate anyone (unknown, wrong, expired, revoked, or its admin
// was removed). Nothing was written. The message does not say which, so
// that guessing learns nothing; ask the person to log in again.
var ErrUnauthorized = errors.New("not authenticated: unknown name, wrong password, or an expired or revoked token or session")

// KindAdmin is the Change kind of admins, their tokens and sessions.
const KindAdmin Kind = "admin"

// Admin is an administrator of the gateway (its admin API).
type Admin struct {
	ID         int64
	Name       string
	CreatedAt  time.Time
	DisabledAt time.Time // zero unless removed
}

// AdminToken is an admin's API token. The secret is returned once by
// CreateAdminToken and never stored.
type AdminToken struct {
	ID        int64
	Prefix    string // public, the lookup key
	AdminID   int64
	Admin     string
	CreatedAt time.Time
	RevokedAt time.Time // zero unless revoked
}

// AdminSession is a login session of the admin API. Its secret (the
// cookie's value) is returned once by CreateAdminSession.
type AdminSession struct {
	ID        int64
	Prefix    string
	AdminID   int64
	Admin     string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// Admins manages the gateway's administrators, their API tokens and their
// sessions. Names are unique among admins not removed and valid by
// ParseName. Every change is in the audit log; authenticating a token or
// a session writes nothing.
type Admins interface {
	// AddAdmin adds an admin with password (MinPasswordLen to
	// MaxPasswordLen bytes), stored as an argon2id hash.
	AddAdmin(ctx context.Context, name, password string) (Admin, error)
	// RemoveAdmin disables the admin (its row stays), revokes its tokens
	// and ends its sessions, at once.
	RemoveAdmin(ctx context.Context, name string) error
	ListAdmins(ctx context.Context) ([]Admin, error) // active ones, by name
	// CheckAdminPassword is the admin named name if password is theirs,
	// else ErrUnauthorized (taking as long for an unknown name).
	CheckAdminPassword(ctx context.Context, name, password string) (Admin, error)
	// CreateAdminToken makes an API token for admin; the secret
	// (PREFIX.SECRET, 256 random bits) is shown once, only its SHA-256
	// is stored.
	CreateAdminToken(ctx context.Context, admin string) (tok AdminToken, secret string, err error)
	ListAdminTokens(ctx context.Context, admin string) ([]AdminToken, error) // "" = every admin's; by ID, revoked ones too
	// RevokeAdminToken revokes a token: it stops working at once.
	// Revoking a revoked token is ErrNotFound.
	RevokeAdminToken(ctx context.Context, id int64) error
	// AdminByToken is the admin whose live token secret is, else
	// ErrUnauthorized.
	AdminByToken(ctx context.Context, secret string) (Admin, AdminToken, error)
	// CreateAdminSession starts a session of admin valid for ttl (and
	// deletes sessions that expired); from (the client's address, or "")
	// goes into the audit entry.
	CreateAdminSession(ctx context.Context, admin string, ttl time.Duration, from string) (s AdminSession, secret string, err error)
	// AdminBySession is the admin of the live session secret, else
	// ErrUnauthorized.
	AdminBySession(ctx context.Context, secret string) (Admin, AdminSession, error)
	// EndAdminSession ends (deletes) the session secret: ErrUnauthorized
	// if it is not live.
	EndAdminSession(ctx context.Context, secret string) error
}

// newSecret makes a PREFIX.SECRET (as invites have) and returns it with
// its prefix and the SHA-256 of its secret part.
func newSecret() (secret, prefix string, hash [32]byte, err error) {
	var buf [invitePrefixBytes + inviteSecretBytes]byte
	if _, err := io.ReadFull(rand.Reader, buf[:]); err != nil {
		return "", "", hash, fmt.Errorf("registry: random secret: %w", err)
	}
	secret = formatInviteSecret(buf[:invitePrefixBytes], buf[invitePrefixBytes:])
	prefix, _, _ = strings.Cut(secret, ".")
	return secret, prefix, sha256.Sum256(buf[invitePrefixBytes:]), nil
}

// splitSecret is parseInviteSecret for tokens and sessions: any malformed
// secret is ErrUnauthorized.
func splitSecret(s string) (prefix string, hash [32]byte, err error) {
	p, sec, err := parseInviteSecret(s)
	if err != nil {
		return "", hash, ErrUnauthorized
	}
	return p, sha256.Sum256(sec), nil
}

func (t *txn) adminID(name string) (int64, error) {
	if _, err := ParseName(name); err != nil {
		return 0, err
	}
	var id int64
	err := t.queryRow(`SELECT id FROM admins WHERE name = ? AND disabled_at IS NULL`+t.r.d.forUpdate, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: no admin %q: list admins (ptun gateway admins), or add it first", ErrNotFound, name)
	}
	return id, err
}

func (r *sqlRegistry) AddAdmin(ctx context.Context, name, password string) (Admin, error) {
	if _, err := ParseName(name); err != nil {
		return Admin{}, err
	}
	if err := checkPassword(password); err != nil {
		return Admin{}, err
	}
	hash, err := hashPassword(password)
	if err != nil {
		return Admin{}, err
	}
	var a Admin
	err = r.write(ctx, func(t *txn) error {
		id, err := t.insert(`INSERT INTO admins (name, password_hash, created_at) VALUES (?, ?, ?)`, name, hash, t.now)
		if err != nil {
			return err
		}
		a = Admin{ID: id, Name: name, CreatedAt: fromMicros(t.now)}
		t.record(KindAdmin, id, "admin.add", name, "")
		return nil
	})
	return a, r.dbErr(err, fmt.Sprintf("admin %q exists: choose another name, or remove it first", name))
}

func (r *sqlRegistry) RemoveAdmin(ctx context.Context, name string) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		id, err := t.adminID(name)
		if err != nil {
			return err
		}
		res, err := t.exec(`UPDATE admin_tokens SET revoked_at = ? WHERE admin_id = ? AND revoked_at IS NULL`, t.now, id)
		if err != nil {
			return err
		}
		tokens, _ := res.RowsAffected()
		res, err = t.exec(`DELETE FROM admin_sessions WHERE admin_id = ?`, id)
		if err != nil {
			return err
		}
		sessions, _ := res.RowsAffected()
		if _, err := t.exec(`UPDATE admins SET disabled_at = ? WHERE id = ?`, t.now, id); err != nil {
			return err
		}
		t.record(KindAdmin, id, "admin.remove", name, fmt.Sprintf("%d tokens revoked, %d sessions ended", tokens, sessions))
		return nil
	}), "")
}

func (r *sqlRegistry) ListAdmins(ctx context.Context) ([]Admin, error) {
	rows, err := r.queryRows(ctx, `SELECT id, name, created_at FROM admins WHERE disabled_at IS NULL ORDER BY name`)
	if err != nil {
		return nil, r.dbErr(err, "")
	}
	defer rows.Close()
	var out []Admin
	for rows.Next() {
		var a Admin
		var at int64
		if err := rows.Scan(&a.ID, &a.Name, &at); err != nil {
			return nil, r.dbErr(err, "")
		}
		a.CreatedAt = fromMicros(at)
		out = append(out, a)
	}
	return out, r.dbErr(rows.Err(), "")
}

func (r *sqlRegistry) CheckAdminPassword(ctx context.Context, name, password string) (Admin, error) {
	if _, err := ParseName(name); err != nil || len(password) > MaxPasswordLen {
		passwordMatches(dummyHash(), password[:min(len(password), MaxPasswordLen)])
		return Admin{}, ErrUnauthorized
	}
	var a Admin
	var hash string
	var at int64
	err := r.db.QueryRowContext(ctx, r.d.rebind(`SELECT id, name, password_hash, created_at FROM admins WHERE name = ? AND disabled_at IS NULL`), name).
		Scan(&a.ID, &a.Name, &hash, &at)
	if errors.Is(err, sql.ErrNoRows) {
		passwordMatches(dummyHash(), password)
		return Admin{}, ErrUnauthorized
	} else if err != nil {
		return Admin{}, r.dbErr(err, "")
	}
	if !passwordMatches(hash, password) {
		return Admin{}, ErrUnauthorized
	}
	a.CreatedAt = fromMicros(at)
	return a, nil
}

func (r *sqlRegistry) CreateAdminToken(ctx context.Context, admin string) (AdminToken, string, error) {
	secret, prefix, hash, err := newSecret()
	if err != nil {
		return AdminToken{}, "", err
	}
	var tok AdminToken
	err = r.write(ctx, func(t *txn) error {
		aid, err := t.adminID(admin)
		if err != nil {
			return err
		}
		id, err := t.insert(`INSERT INTO admin_tokens (prefix, secret_hash, admin_id, created_at) VALUES (?, ?, ?, ?)`, prefix, hash[:], aid, t.now)
		if err != nil {
			return err
		}
		tok = AdminToken{ID: id, Prefix: prefix, AdminID: aid, Admin: admin, CreatedAt: fromMicros(t.now)}
		t.record(KindAdmin, aid, "admin.token.create", admin, "token "+prefix)
		return nil
	})
	if err != nil {
		return AdminToken{}, "", r.dbErr(err, "token prefix collision: try again")
	}
	return tok, secret, nil
}

func (r *sqlRegistry) ListAdminTokens(ctx context.Context, admin string) ([]AdminToken, error) {
	q := `SELECT t.id, t.prefix, t.admin_id, a.name, t.created_at, t.revoked_at FROM admin_tokens t JOIN admins a ON a.id = t.admin_id`
	var args []any
	if admin != "" {
		if _, err := ParseName(admin); err != nil {
			return nil, err
		}
		q += ` WHERE a.name = ? AND a.disabled_at IS NULL`
		args = append(args, admin)
	}
	rows, err := r.queryRows(ctx, q+` ORDER BY t.id`, args...)
	if err != nil {
		return nil, r.dbErr(err, "")
	}
	defer rows.Close()
	var out []AdminToken
	for rows.Next() {
		var tok AdminToken
		var at int64
		var revoked sql.NullInt64
		if err := rows.Scan(&tok.ID, &tok.Prefix, &tok.AdminID, &tok.Admin, &at, &revoked); err != nil {
			return nil, r.dbErr(err, "")
		}
		tok.CreatedAt, tok.RevokedAt = fromMicros(at), fromNullMicros(revoked)
		out = append(out, tok)
	}
	return out, r.dbErr(rows.Err(), "")
}

func (r *sqlRegistry) RevokeAdminToken(ctx context.Context, id int64) error {
	return r.dbErr(r.write(ctx, func(t *txn) error {
		var prefix, admin string
		var aid int64
		err := t.queryRow(`SELECT t.prefix, t.admin_id, a.name FROM admin_tokens t JOIN admins a ON a.id = t.admin_id
			WHERE t.id = ? AND t.revoked_at IS NULL`+t.r.d.forUpdate, id).Scan(&prefix, &aid, &admin)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no live API token with id %d: list the tokens", ErrNotFound, id)
		} else if err != nil {
			return err
		}
		if _, err := t.exec(`UPDATE admin_tokens SET revoked_at = ? WHERE id = ?`, t.now, id); err != nil {
			return err
		}
		t.record(KindAdmin, aid, "admin.token.revoke", admin, "token "+prefix)
		return nil
	}), "")
}

func (r *sqlRegistry) AdminByToken(ctx context.Context, secret string) (Admin, AdminToken, error) {
	prefix, hash, err := splitSecret(secret)
	if err != nil {
		return Admin{}, AdminToken{}, err
	}
	var tok AdminToken
	var a Admin
	var stored []byte
	var tokAt, adminAt int64
	err = r.db.QueryRowContext(ctx, r.d.rebind(`SELECT t.id, t.prefix, t.secret_hash, t.created_at, a.id, a.name, a.created_at
		FROM admin_tokens t JOIN admins a ON a.id = t.admin_id
		WHERE t.prefix = ? AND t.revoked_at IS NULL AND a.disabled_at IS NULL`), prefix).
		Scan(&tok.ID, &tok.Prefix, &stored, &tokAt, &a.ID, &a.Name, &adminAt)
	if errors.Is(err, sql.ErrNoRows) {
		return Admin{}, AdminToken{}, ErrUnauthorized
	} else if err != nil {
		return Admin{}, AdminToken{}, r.dbErr(err, "")
	}
	if subtle.ConstantTimeCompare(stored, hash[:]) != 1 {
		return Admin{}, AdminToken{}, ErrUnauthorized
	}
	tok.AdminID, tok.Admin, tok.CreatedAt = a.ID, a.Name, fromMicros(tokAt)
	a.CreatedAt = fromMicros(adminAt)
	return a, tok, nil
}

func (r *sqlRegistry) CreateAdminSession(ctx context.Context, admin string, ttl time.Duration, from string) (AdminSession, string, error) {
	if ttl <= 0 {
		return AdminSession{}, "", fmt.Errorf("%w: session lifetime %v: give a positive duration", ErrInvalid, ttl)
	}
	secret, prefix, hash, err := newSecret()
	if err != nil {
		return AdminSession{}, "", err
	}
	var s AdminSession
	err = r.write(ctx, func(t *txn) error {
		aid, err := t.adminID(admin)
		if err != nil {
			return err
		}
		if _, err := t.exec(`DELETE FROM admin_sessions WHERE expires_at <= ?`, t.now); err != nil {
			return err
		}
		expires := t.now + ttl.Microseconds()
		id, err := t.insert(`INSERT INTO admin_sessions (prefix, secret_hash, admin_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)`,
			prefix, hash[:], aid, t.now, expires)
		if err != nil {
			return err
		}
		s = AdminSession{ID: id, Prefix: prefix, AdminID: aid, Admin: admin, CreatedAt: fromMicros(t.now), ExpiresAt: fromMicros(expires)}
		detail := fmt.Sprintf("session %s, expires %s", prefix, s.ExpiresAt.Format(time.RFC3339))
		if from != "" {
			detail += ", from " + from
		}
		t.record(KindAdmin, aid, "admin.login", admin, detail)
		return nil
	})
	if err != nil {
		return AdminSession{}, "", r.dbErr(err, "session prefix collision: try again")
	}
	return s, secret, nil
}

func (r *sqlRegistry) AdminBySession(ctx context.Context, secret string) (Admin, AdminSession, error) {
	prefix, hash, err := splitSecret(secret)
	if err != nil {
		return Admin{}, AdminSession{}, err
	}
	var s AdminSession
	var a Admin
	var stored []byte
	var created, expires, adminAt int64
	err = r.db.QueryRowContext(ctx, r.d.rebind(`SELECT s.id, s.prefix, s.secret_hash, s.created_at, s.expires_at, a.id, a.name, a.created_at
		FROM admin_sessions s JOIN admins a ON a.id = s.admin_id
		WHERE s.prefix = ? AND a.disabled_at IS NULL`), prefix).
		Scan(&s.ID, &s.Prefix, &stored, &created, &expires, &a.ID, &a.Name, &adminAt)
	if errors.Is(err, sql.ErrNoRows) {
		return Admin{}, AdminSession{}, ErrUnauthorized
	} else if err != nil {
		return Admin{}, AdminSession{}, r.dbErr(err, "")
	}
	if subtle.ConstantTimeCompare(stored, hash[:]) != 1 || r.now().UnixMicro() >= expires {
		return Admin{}, AdminSession{}, ErrUnauthorized
	}
	s.AdminID, s.Admin, s.CreatedAt, s.ExpiresAt = a.ID, a.Name, fromMicros(created), fromMicros(expires)
	a.CreatedAt = fromMicros(adminAt)
	return a, s, nil
}

func (r *sqlRegistry) EndAdminSession(ctx context.Context, secret string) error {
	prefix, hash, err := splitSecret(secret)
	if err != nil {
		return err
	}
	return r.dbErr(r.write(ctx, func(t *txn) error {
		var id, aid int64
		var stored []byte
		var admin string
		err := t.queryRow(`SELECT s.id, s.secret_hash, a.id, a.name FROM admin_sessions s JOIN admins a ON a.id = s.admin_id
			WHERE s.prefix = ?`+t.r.d.forUpdate, prefix).Scan(&id, &stored, &aid, &admin)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrUnauthorized
		} else if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(stored, hash[:]) != 1 {
			return ErrUnauthorized
		}
		if _, err := t.exec(`DELETE FROM admin_sessions WHERE id = ?`, id); err != nil {
			return err
		}
		t.record(KindAdmin, aid, "admin.logout", admin, "session "+prefix)
		return nil
	}), "")
}
