package registry

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackup backs up a SQLite registry that is open and being written
// (its last changes still in the write-ahead log, as with a running
// gateway), opens the copy with Open and finds the user, her device with
// its addresses, and the pool; the copy is 0600; a second backup to the
// same file is refused and leaves it as it was; the original goes on.
func TestBackup(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.db")
	reg, err := OpenSQLite(bg, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	must(reg.AddPool(bg, netip.MustParsePrefix("100.80.0.0/16")))(t)
	must(reg.AddUser(bg, "alice"))(t)
	dev := must(reg.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(1)}))(t)
	if fi, err := os.Stat(path + "-wal"); err != nil || fi.Size() == 0 {
		t.Fatalf("the registry's changes are not in its write-ahead log (%v, %v): the test would not show that the backup reads it", fi, err)
	}

	backup := filepath.Join(dir, "backup.db")
	if err := Backup(bg, path, backup); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(backup)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup: %v, %v; want mode 0600", fi.Mode(), err)
	}
	// The original keeps working, and what it does after is not in the copy.
	must(reg.AddUser(bg, "bob"))(t)

	copyReg, err := Open(bg, backup, Options{})
	if err != nil {
		t.Fatalf("opening the backup: %v", err)
	}
	defer copyReg.Close()
	users := must(copyReg.ListUsers(bg))(t)
	if len(users) != 1 || users[0].Name != "alice" {
		t.Errorf("users in the backup: %+v, want alice alone", users)
	}
	devs := must(copyReg.ListDevices(bg, DeviceFilter{User: "alice"}))(t)
	if len(devs) != 1 || !equalDevice(devs[0], dev) {
		t.Errorf("devices in the backup: %+v, want %+v", devs, dev)
	}
	if ps := must(copyReg.ListPools(bg))(t); len(ps) != 1 || ps[0].Prefix.String() != "100.80.0.0/16" {
		t.Errorf("pools in the backup: %+v", ps)
	}

	before, _ := os.ReadFile(backup)
	err = Backup(bg, path, backup)
	if err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("a backup over an existing file: %v, want a refusal", err)
	}
	if after, _ := os.ReadFile(backup); string(after) != string(before) {
		t.Errorf("a refused backup changed the existing file")
	}
}

// TestBackupRefuses: a PostgreSQL registry (pg_dump's job), a file that is
// no registry and a missing one are refused with a message, and leave no
// backup file.
func TestBackupRefuses(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.db")
	err := Backup(bg, "postgres://ptun@db.example/ptun", out)
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "pg_dump") || strings.Contains(err.Error(), "\n") {
		t.Errorf("PostgreSQL: %v, want one line saying to use pg_dump", err)
	}
	notRegistry := filepath.Join(dir, "other.db")
	if err := os.WriteFile(notRegistry, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Backup(bg, notRegistry, out); err == nil || !strings.Contains(err.Error(), "not a ptun registry") {
		t.Errorf("a file that is not a registry: %v", err)
	}
	if err := Backup(bg, filepath.Join(dir, "missing.db"), out); err == nil || !strings.Contains(err.Error(), "no SQLite registry") {
		t.Errorf("a missing registry: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused backup left %s (%v)", out, err)
	}
}
