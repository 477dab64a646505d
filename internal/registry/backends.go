package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Options tune a registry; the zero value is what the product uses.
type Options struct {
	// Now is the clock (invite expiry, created and revoked times);
	// time.Now if nil.
	Now func() time.Time
	// AddressRand chooses where the search for a free address starts;
	// crypto/rand if nil. Tests pass a fixed stream to make allocation
	// order predictable. (Invite secrets always come from crypto/rand.)
	AddressRand io.Reader
}

// Open opens (creating if need be) and migrates the registry at dsn: a
// postgres:// or postgresql:// URL for PostgreSQL, anything else is the
// path of a SQLite file.
func Open(ctx context.Context, dsn string, opts Options) (Registry, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return OpenPostgres(ctx, dsn, opts)
	}
	return OpenSQLite(ctx, dsn, opts)
}

// OpenSQLite opens the registry in the SQLite file at path, creating it if
// it does not exist. It uses one connection (SQLite has one writer at a
// time anyway, and that connection serialises address allocation), WAL
// journaling, a 10 s busy timeout for other processes holding the file, and
// foreign keys on; transactions start IMMEDIATE so they take the write lock
// up front instead of failing to upgrade a read lock.
func OpenSQLite(ctx context.Context, path string, opts Options) (Registry, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("%w: SQLite registry path %q: give a file path without '?' or '#'", ErrInvalid, path)
	}
	// busy_timeout first: switching to WAL needs the lock another opener may hold.
	dsn := path + "?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	// Two openers of a new file can both be switching it to WAL: SQLite
	// then answers one with SQLITE_BUSY at once, without waiting out the
	// busy timeout. That opener tries again (for as long as the timeout).
	deadline := time.Now().Add(10 * time.Second)
	for {
		db, err := sql.Open("sqlite", dsn)
		if err != nil {
			return nil, fmt.Errorf("registry: open SQLite %s: %w", path, err)
		}
		db.SetMaxOpenConns(1)
		db.SetMaxIdleConns(1)
		db.SetConnMaxLifetime(0)
		db.SetConnMaxIdleTime(0)
		err = db.PingContext(ctx)
		if err == nil {
			return newSQLRegistry(ctx, db, sqliteDialect, opts)
		}
		db.Close()
		if !strings.Contains(err.Error(), "SQLITE_BUSY") || time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("registry: open SQLite %s: %w: check that its folder exists and is writable", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// OpenPostgres opens the registry in the PostgreSQL database at dsn (a URL
// or a key=value string as libpq takes). It goes through pgx's database/sql
// driver, so both backends share one implementation of every query and
// differ only in their dialect.
func OpenPostgres(ctx context.Context, dsn string, opts Options) (Registry, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: PostgreSQL DSN: %v: write postgres://USER@HOST:PORT/DATABASE", ErrInvalid, err)
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(8)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("registry: cannot reach PostgreSQL database %q on %s port %d as %q: %w: check --db and that the server runs",
			cfg.Database, cfg.Host, cfg.Port, cfg.User, err)
	}
	return newSQLRegistry(ctx, db, postgresDialect, opts)
}

// dialect is everything the two backends do differently.
type dialect struct {
	name string
	// tokens in the migrations, replaced by expand.
	tokens map[string]string
	// dollar: placeholders are $1, $2… instead of ?.
	dollar bool
	// forUpdate ends a SELECT that locks the rows it reads ("" where the
	// transaction holds the database's only write lock already).
	forUpdate string
	// lock takes a transaction-scoped lock on key, or does nothing where
	// the transaction holds the database's only write lock already.
	lock func(ctx context.Context, tx *sql.Tx, key int64) error
	// isUnique reports whether err is a UNIQUE or PRIMARY KEY violation.
	isUnique func(err error) bool
}

// Lock keys (PostgreSQL advisory locks in class lockClass): one per pool
// (its ID), and these for the whole registry.
const (
	lockClass      = 0x70747231 // "ptr1"
	lockMigrations = -1
	lockPoolSet    = -2 // adding and removing pools (the overlap check)
)

var sqliteDialect = &dialect{
	name: "sqlite",
	tokens: map[string]string{
		"{{ID}}":    "INTEGER PRIMARY KEY AUTOINCREMENT",
		"{{BYTES}}": "BLOB",
	},
	lock: func(context.Context, *sql.Tx, int64) error { return nil }, // BEGIN IMMEDIATE holds the write lock
	isUnique: func(err error) bool {
		var se *sqlite.Error
		if !errors.As(err, &se) {
			return false
		}
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	},
}

var postgresDialect = &dialect{
	name: "postgres",
	tokens: map[string]string{
		"{{ID}}":    "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
		"{{BYTES}}": "BYTEA",
	},
	dollar:    true,
	forUpdate: " FOR NO KEY UPDATE", // not FOR UPDATE: that would also block foreign-key checks
	lock: func(ctx context.Context, tx *sql.Tx, key int64) error {
		// Two-int4 form: our class, and the key folded into an int4 (a
		// collision only makes two pools share a lock).
		_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1::int4, $2::int4)`, lockClass, int32(key))
		return err
	},
	isUnique: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "23505"
	},
}

func (d *dialect) expand(script string) string {
	for k, v := range d.tokens {
		script = strings.ReplaceAll(script, k, v)
	}
	return script
}

// rebind turns ? placeholders into $1, $2… for PostgreSQL. The queries in
// this package have no '?' inside string literals.
func (d *dialect) rebind(q string) string {
	if !d.dollar || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}
