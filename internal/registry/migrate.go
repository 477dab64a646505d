package registry

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in order. Their file names are
// NNNN_what.sql, numbered 1, 2, 3… with no gap; a file once released is
// never edited, only followed by a new one.
func migrations() ([]migration, error) {
	entries, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, path := range entries {
		name := strings.TrimPrefix(path, "migrations/")
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("registry: migration %s is not named NNNN_what.sql", name)
		}
		b, err := migrationFiles.ReadFile(path)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("registry: migration %s: expected version %d", m.name, i+1)
		}
	}
	return ms, nil
}

// SchemaVersion is the schema version this ptun creates and understands.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil {
		panic(err) // the embedded files are part of the build
	}
	return len(ms)
}

// statements splits a migration into statements: each ends with a ';' at
// the end of a line. Comment lines are dropped. (The migrations hold no
// function bodies, so no statement has a ';' at a line's end inside it.)
func statements(script string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(script, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// migrate brings the database to the newest schema in one transaction (on
// PostgreSQL DDL is transactional too), so a failed upgrade leaves the old
// schema. Concurrent openers are serialised (a PostgreSQL advisory lock,
// SQLite's write lock), so two gateways starting together migrate once.
func migrate(ctx context.Context, db *sql.DB, d *dialect) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	return migrateTo(ctx, db, d, ms)
}

// migrateTo applies ms (in order, numbered from 1); tests pass their own.
func migrateTo(ctx context.Context, db *sql.DB, d *dialect, ms []migration) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("registry: start migration: %w", err)
	}
	defer tx.Rollback()
	if err := d.lock(ctx, tx, lockMigrations); err != nil {
		return fmt.Errorf("registry: lock for migration: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version INTEGER PRIMARY KEY,
		name TEXT NOT NULL,
		applied_at BIGINT NOT NULL
	)`); err != nil {
		return fmt.Errorf("registry: create schema_version: %w", err)
	}
	var have int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&have); err != nil {
		return fmt.Errorf("registry: read schema_version: %w", err)
	}
	if have > len(ms) {
		return fmt.Errorf("%w: the database is at schema version %d, this ptun knows versions up to %d: run a ptun at least as new as the one that upgraded it, or restore the backup made before the upgrade",
			ErrSchemaTooNew, have, len(ms))
	}
	for _, m := range ms[have:] {
		for _, stmt := range statements(d.expand(m.sql)) {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("registry: migration %s: %w (statement: %.80s)", m.name, err, stmt)
			}
		}
		if _, err := tx.ExecContext(ctx, d.rebind(`INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)`),
			m.version, m.name, nowMicros()); err != nil {
			return fmt.Errorf("registry: record migration %s: %w", m.name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("registry: commit migration: %w", err)
	}
	return nil
}
