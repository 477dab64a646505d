package registry

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// postgresEnv names the DSN of a PostgreSQL server the tests may create
// databases on (.ci/run starts one and sets it). Unset: the PostgreSQL half
// of every test skips, or fails under CI=true.
const postgresEnv = "PTUN_TEST_POSTGRES"

// backend opens the test's database.
type backend struct {
	// try opens the database once more (every call a new *sql.DB, as a
	// second gateway or a restart would); the caller closes it.
	try func(opts Options) (Registry, error)
	// raw opens the database without migrating it; the caller closes it.
	raw func() (*sql.DB, *dialect, error)
}

// open is try that fails t on error and closes the registry at cleanup.
func (b *backend) open(t testing.TB, opts Options) *sqlRegistry {
	t.Helper()
	r, err := b.try(opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r.(*sqlRegistry)
}

// eachBackend runs fn as subtests "sqlite" (a file in t.TempDir()) and
// "postgres" (a database of its own, dropped at the end), in parallel.
func eachBackend(t *testing.T, fn func(t *testing.T, b *backend)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "registry.db")
		fn(t, &backend{try: func(opts Options) (Registry, error) { return OpenSQLite(context.Background(), path, opts) },
			raw: func() (*sql.DB, *dialect, error) {
				db, err := sql.Open("sqlite", path+"?_pragma=foreign_keys(1)&_txlock=immediate")
				return db, sqliteDialect, err
			}})
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		dsn := postgresDatabase(t)
		fn(t, &backend{try: func(opts Options) (Registry, error) { return OpenPostgres(context.Background(), dsn, opts) },
			raw: func() (*sql.DB, *dialect, error) {
				db, err := sql.Open("pgx", dsn)
				return db, postgresDialect, err
			}})
	})
}

// postgresDatabase creates an empty database for t on the server of
// $PTUN_TEST_POSTGRES and returns its DSN; cleanup drops it.
func postgresDatabase(t testing.TB) string {
	t.Helper()
	admin := os.Getenv(postgresEnv)
	if admin == "" {
		testenv.SkipOrFail(t, "%s is not set: give the DSN of a PostgreSQL server the tests may create databases on (see .ci/run)", postgresEnv)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "ptun_test_" + hex.EncodeToString(b[:])
	db, err := sql.Open("pgx", admin)
	if err != nil {
		t.Fatalf("%s: %v", postgresEnv, err)
	}
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		db.Close()
		t.Fatalf("create database on $%s: %v", postgresEnv, err)
	}
	t.Cleanup(func() {
		defer db.Close()
		// Registries are closed by cleanups registered later, which run first.
		if _, err := db.ExecContext(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return withDatabase(t, admin, name)
}

// withDatabase returns dsn with its database replaced by name.
func withDatabase(t testing.TB, dsn, name string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("%s: %v", postgresEnv, err)
		}
		u.Path = "/" + name
		return u.String()
	}
	return dsn + " dbname=" + name
}

// counts is the number of rows in every table, and the change sequence.
func counts(t testing.TB, r *sqlRegistry) map[string]int {
	t.Helper()
	out := make(map[string]int)
	for _, table := range []string{"users", "user_groups", "group_members", "pools", "devices", "device_addresses",
		"invites", "rules", "gateways", "audit", "changes", "schema_version", "admins", "admin_tokens", "admin_sessions"} {
		var n int
		if err := r.db.QueryRow("SELECT COUNT(*) FROM " + table).Scan(&n); err != nil {
			t.Fatalf("count %s: %v", table, err)
		}
		out[table] = n
	}
	var seq, uses int
	if err := r.db.QueryRow("SELECT seq FROM registry_seq").Scan(&seq); err != nil {
		t.Fatal(err)
	}
	out["seq"] = seq
	if err := r.db.QueryRow("SELECT COALESCE(SUM(uses_left), 0) FROM invites").Scan(&uses); err != nil {
		t.Fatal(err)
	}
	out["uses_left"] = uses
	return out
}

// unchanged fails t if the counts differ from before.
func unchanged(t *testing.T, r *sqlRegistry, before map[string]int, what string) {
	t.Helper()
	after := counts(t, r)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s wrote something: %s went from %d to %d", what, k, v, after[k])
		}
	}
}

// clock is a settable test clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// zeros makes every address search start at the first usable address.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// key returns a distinct non-zero public key for every n.
func key(n int) Key {
	var k Key
	k[0], k[1], k[31] = byte(n>>8), byte(n), 0x42
	return k
}
