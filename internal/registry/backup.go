package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Backup writes a consistent copy of the SQLite registry at dsn to file, a
// new file of mode 0600: it never overwrites one. It is safe while gateways
// use the registry: the copy is made by VACUUM INTO in one read
// transaction, so it holds every change committed before it began (also
// those still only in the write-ahead log) and none after, and writers are
// not blocked. Backup does not migrate the registry: a backup taken before
// an upgrade keeps the schema that was there. The copy opens with Open like
// the original.
//
// A PostgreSQL registry is refused (errors.ErrUnsupported): pg_dump backs
// it up.
func Backup(ctx context.Context, dsn, file string) (err error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return fmt.Errorf("%w: a PostgreSQL registry is backed up with pg_dump (pg_dump --format=custom --file=FILE DATABASE-URL; see docs/registry.md), not by ptun", errors.ErrUnsupported)
	}
	if dsn == "" || strings.ContainsAny(dsn, "?#") {
		return fmt.Errorf("%w: SQLite registry path %q: give a file path without '?' or '#'", ErrInvalid, dsn)
	}
	if fi, err := os.Stat(dsn); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("registry: no SQLite registry at %s", dsn)
	}
	// Absolute, so that SQLite never reads it as a file: URI.
	if file, err = filepath.Abs(file); err != nil {
		return fmt.Errorf("registry: backup file: %w", err)
	}
	// No journal_mode or foreign_keys: this connection only reads.
	db, err := sql.Open("sqlite", dsn+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return fmt.Errorf("registry: open SQLite %s: %w", dsn, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var version int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&version); err != nil {
		return fmt.Errorf("registry: %s is not a ptun registry (no schema version: %v)", dsn, err)
	}
	// Made here, empty, so that it is new and 0600; VACUUM INTO fills an
	// empty file.
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("registry: %s exists already: a backup never overwrites a file, choose another name", file)
	}
	if err != nil {
		return fmt.Errorf("registry: backup file: %w", err)
	}
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(file)
		}
	}()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, file); err != nil {
		return fmt.Errorf("registry: backing up %s to %s: %w", dsn, file, err)
	}
	// On disk before Backup says so, whatever SQLite's synchronous
	// setting made of the copy.
	if f, err = os.OpenFile(file, os.O_RDWR, 0); err != nil {
		return fmt.Errorf("registry: backup file: %w", err)
	}
	serr := f.Sync()
	if cerr := f.Close(); serr == nil {
		serr = cerr
	}
	if serr != nil {
		return fmt.Errorf("registry: backup file: %w", serr)
	}
	return nil
}
