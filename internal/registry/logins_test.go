package registry

import (
	"net/netip"
	"strings"
	"testing"
)

// TestMigrationTo4: a registry at schema 3 with a user and a device
// (made by that schema's own statements) opens as schema 4: the device is
// a WireGuard device with its key and address, the user has no password,
// and both work as before.
func TestMigrationTo4(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		db, d, err := b.raw()
		if err != nil {
			t.Fatal(err)
		}
		ms := must(migrations())(t)
		if len(ms) < 4 || ms[3].name != "0004_tls_logins.sql" {
			t.Fatalf("migrations: want 0004_tls_logins.sql fourth, have %d", len(ms))
		}
		if err := migrateTo(bg, db, d, ms[:3]); err != nil {
			t.Fatal(err)
		}
		k := key(1)
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{`INSERT INTO users (name, created_at) VALUES (?, ?)`, []any{"alice", 1}},
			{`INSERT INTO pools (cidr, created_at) VALUES (?, ?)`, []any{"100.64.0.0/24", 1}},
			{`INSERT INTO devices (user_id, name, public_key, created_at) VALUES (?, ?, ?, ?)`, []any{1, "laptop", k[:], 1}},
			{`INSERT INTO device_addresses (device_id, pool_id, addr) VALUES (?, ?, ?)`, []any{1, 1, "100.64.0.7"}},
		} {
			if _, err := db.Exec(d.rebind(q.sql), q.args...); err != nil {
				t.Fatalf("%s: %v", q.sql, err)
			}
		}
		db.Close()

		r := b.open(t, Options{})
		if c := counts(t, r); c["schema_version"] != SchemaVersion() {
			t.Fatalf("schema_version rows %d, want %d", c["schema_version"], SchemaVersion())
		}
		dev := must(r.DeviceByKey(bg, k))(t)
		if dev.Protocol != ProtocolWireGuard || dev.Name != "laptop" || len(dev.Addresses) != 1 || dev.Addresses[0] != netip.MustParseAddr("100.64.0.7") {
			t.Errorf("the schema-3 device after the upgrade: %+v", dev)
		}
		if h := must(r.UserPassword(bg, "alice"))(t); h != "" {
			t.Errorf("the schema-3 user has password %q after the upgrade, want none", h)
		}
		if ds := must(r.ListDevices(bg, DeviceFilter{Protocol: ProtocolWireGuard}))(t); len(ds) != 1 {
			t.Errorf("WireGuard devices after the upgrade: %+v", ds)
		}
		must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "phone", PublicKey: key(2)}))(t)
		// The schema refuses a protocol it does not know, whatever the code says.
		if _, err := r.db.Exec(r.d.rebind(`UPDATE devices SET protocol = ? WHERE id = 1`), "ipsec"); err == nil {
			t.Error("the schema took the protocol ipsec")
		}
	})
}

// TestDeviceProtocol: a device is WireGuard unless its spec says
// openconnect; the protocol is stored, listed, filtered on, and in the
// audit entry of an openconnect device; an unknown protocol is refused
// and writes nothing.
func TestDeviceProtocol(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		must(r.AddPool(bg, netip.MustParsePrefix("100.64.0.0/24")))(t)
		must(r.AddUser(bg, "alice"))(t)
		wg := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(1)}))(t)
		explicit := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "desk", PublicKey: key(2), Protocol: ProtocolWireGuard}))(t)
		oc := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "openconnect", PublicKey: key(3), Protocol: ProtocolOpenConnect, Via: "TLS login"}))(t)
		if wg.Protocol != ProtocolWireGuard || explicit.Protocol != ProtocolWireGuard || oc.Protocol != ProtocolOpenConnect || len(oc.Addresses) != 1 {
			t.Errorf("protocols: %q %q %q (%v)", wg.Protocol, explicit.Protocol, oc.Protocol, oc.Addresses)
		}
		if got := must(r.Device(bg, oc.ID))(t); !equalDevice(got, oc) {
			t.Errorf("Device = %+v, want %+v", got, oc)
		}
		before := counts(t, r)
		_, err := r.CreateDevice(bg, "alice", DeviceSpec{Name: "tablet", PublicKey: key(4), Protocol: "ipsec"})
		wantErr(t, err, ErrInvalid, "an unknown protocol")
		unchanged(t, r, before, "a refused protocol")

		if ds := must(r.ListDevices(bg, DeviceFilter{Protocol: ProtocolOpenConnect}))(t); len(ds) != 1 || ds[0].ID != oc.ID {
			t.Errorf("openconnect devices: %+v", ds)
		}
		if ds := must(r.ListDevices(bg, DeviceFilter{User: "alice", Protocol: ProtocolWireGuard}))(t); len(ds) != 2 {
			t.Errorf("alice's WireGuard devices: %+v", ds)
		}
		entries := must(r.Audit(bg, 0, 100))(t)
		last := entries[len(entries)-1]
		if last.Action != "device.create" || last.Target != "alice/openconnect" || !strings.Contains(last.Detail, "openconnect via TLS login") {
			t.Errorf("the openconnect device's audit entry: %+v", last)
		}
		if strings.Contains(entries[len(entries)-2].Detail, "openconnect") || strings.Contains(entries[len(entries)-2].Detail, "wireguard") {
			t.Errorf("a WireGuard device's audit entry names a protocol: %+v", entries[len(entries)-2])
		}
	})
}

// TestUserPasswords: a user's TLS password is stored as the argon2id
// string given, read back, replaced and cleared, each audited as
// user.passwd (never with the hash) and a user change; refusals (unknown
// or removed user, a string that is not argon2id) write nothing; a
// removed user's password goes with them.
func TestUserPasswords(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		ctx := WithActor(bg, "cli:root")
		alice := must(r.AddUser(ctx, "alice"))(t)
		if h := must(r.UserPassword(bg, "alice"))(t); h != "" {
			t.Fatalf("a new user's password: %q", h)
		}
		_, err := HashPassword("short")
		wantErr(t, err, ErrInvalid, "a short password")
		h1 := must(HashPassword("correct horse battery"))(t)
		_, seq, _ := r.Changes(bg, 0)
		audit := must(r.Audit(bg, 0, 100))(t)
		if err := r.SetUserPassword(ctx, "alice", h1); err != nil {
			t.Fatal(err)
		}
		got := must(r.UserPassword(bg, "alice"))(t)
		if got != h1 || !PasswordMatches(got, "correct horse battery") || PasswordMatches(got, "correct horse batterY") {
			t.Fatalf("UserPassword = %q, want %q, matching only its password", got, h1)
		}
		must(r.AddUser(ctx, "carol"))(t)
		must(r.AddGroup(ctx, "eng"))(t)
		if err := r.AddMember(ctx, "eng", "alice"); err != nil {
			t.Fatal(err)
		}
		if err := r.AddMember(ctx, "eng", "carol"); err != nil {
			t.Fatal(err)
		}
		if u := must(r.User(bg, "alice"))(t); !u.HasPassword {
			t.Error("User(alice): no password")
		}
		for what, us := range map[string][]User{"ListUsers": must(r.ListUsers(bg))(t), "Members": must(r.Members(bg, "eng"))(t)} {
			if len(us) != 2 || us[0].Name != "alice" || !us[0].HasPassword || us[1].HasPassword {
				t.Errorf("%s = %+v: want alice with a password, carol without", what, us)
			}
		}
		if gs := must(r.GroupsOf(bg, "alice"))(t); len(gs) != 1 || gs[0].Name != "eng" {
			t.Errorf("GroupsOf(alice) = %+v", gs)
		}
		_, seq, _ = r.Changes(bg, 0)
		audit = must(r.Audit(bg, 0, 100))(t)
		if err := r.SetUserPassword(ctx, "alice", h1); err != nil { // the same again: recorded again
			t.Fatal(err)
		}
		entries := must(r.Audit(bg, audit[len(audit)-1].ID, 100))(t)
		if len(entries) != 1 || entries[0].Action != "user.passwd" || entries[0].Target != "alice" || entries[0].Detail != "set" || entries[0].Actor != "cli:root" {
			t.Errorf("audit of the password: %+v", entries)
		}
		if changes, _, _ := r.Changes(bg, seq); len(changes) != 1 || changes[0].Kind != KindUser || changes[0].ID != alice.ID {
			t.Errorf("changes of the password: %+v", changes)
		}

		before := counts(t, r)
		wantErr(t, r.SetUserPassword(ctx, "bob", h1), ErrNotFound, "an unknown user's password")
		wantErr(t, r.SetUserPassword(ctx, "alice", "correct horse battery"), ErrInvalid, "a password in clear")
		wantErr(t, r.SetUserPassword(ctx, "alice", ""), ErrInvalid, "an empty hash")
		wantErr(t, r.SetUserPassword(ctx, "alice", "$argon2id$v=19$m=9999999,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"), ErrInvalid, "a hash beyond the limits")
		wantErr(t, r.ClearUserPassword(ctx, "bob"), ErrNotFound, "clearing an unknown user's password")
		_, err = r.UserPassword(bg, "bob")
		wantErr(t, err, ErrNotFound, "an unknown user's password")
		_, err = r.UserPassword(bg, "b b")
		wantErr(t, err, ErrInvalid, "a malformed name's password")
		unchanged(t, r, before, "refused password changes")

		h2 := must(HashPassword("another good password"))(t)
		if err := r.SetUserPassword(ctx, "alice", h2); err != nil {
			t.Fatal(err)
		}
		if got := must(r.UserPassword(bg, "alice"))(t); got != h2 || PasswordMatches(got, "correct horse battery") {
			t.Errorf("after a new password: %q", got)
		}
		if err := r.ClearUserPassword(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		if got := must(r.UserPassword(bg, "alice"))(t); got != "" || must(r.User(bg, "alice"))(t).HasPassword {
			t.Errorf("after clearing: %q", got)
		}
		before = counts(t, r)
		if err := r.ClearUserPassword(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		unchanged(t, r, before, "clearing a password that is not set")
		entries = must(r.Audit(bg, 0, 100))(t)
		var passwd []string
		for _, e := range entries {
			if strings.Contains(e.Detail, "argon2") || strings.Contains(e.Target, "argon2") {
				t.Errorf("an audit entry holds a hash: %+v", e)
			}
			if e.Action == "user.passwd" {
				passwd = append(passwd, e.Detail)
			}
		}
		if strings.Join(passwd, ",") != "set,set,set,cleared" {
			t.Errorf("user.passwd entries: %v, want set,set,set,cleared", passwd)
		}

		// Removing the user removes the password; a new alice has none.
		if err := r.SetUserPassword(ctx, "alice", h1); err != nil {
			t.Fatal(err)
		}
		if err := r.RemoveUser(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		_, err = r.UserPassword(bg, "alice")
		wantErr(t, err, ErrNotFound, "a removed user's password")
		var left int
		if err := r.db.QueryRow("SELECT COUNT(*) FROM users WHERE password_hash IS NOT NULL").Scan(&left); err != nil || left != 0 {
			t.Errorf("%d password hashes left after the user's removal (%v)", left, err)
		}
		must(r.AddUser(ctx, "alice"))(t)
		if h := must(r.UserPassword(bg, "alice"))(t); h != "" {
			t.Errorf("a new alice has the old one's password")
		}
	})
}

// TestPasswordMatchesEmpty: no hash, a malformed one and an overlong
// password match nothing (and still cost an argon2 run: not timed here,
// see PasswordMatches).
func TestPasswordMatchesEmpty(t *testing.T) {
	h := must(HashPassword("correct horse battery"))(t)
	for _, c := range []struct{ hash, pw string }{{"", ""}, {"", "correct horse battery"}, {"$argon2id$", "x"},
		{h, strings.Repeat("x", MaxPasswordLen+1)}, {h, ""}} {
		if PasswordMatches(c.hash, c.pw) {
			t.Errorf("PasswordMatches(%q, %.10q) = true", c.hash, c.pw)
		}
	}
}

// TestNoteLogin: a login is one audit entry with the context's actor and a
// sequence number but no change, so the change feed has nothing for
// followers; a malformed action, an overlong or non-UTF-8 target or
// detail is refused and writes nothing.
func TestNoteLogin(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		must(r.AddUser(bg, "alice"))(t)
		_, seq, _ := r.Changes(bg, 0)
		before := counts(t, r)
		ctx := WithActor(bg, "tls:alice")
		if err := r.NoteLogin(ctx, "tls.login", "alice/openconnect", "from 198.18.0.7:40000"); err != nil {
			t.Fatal(err)
		}
		if err := r.NoteLogin(WithActor(bg, "tls:bob"), "tls.login_failed", "bob", "from 198.18.0.7:40001: no such user"); err != nil {
			t.Fatal(err)
		}
		after := counts(t, r)
		if after["audit"] != before["audit"]+2 || after["changes"] != before["changes"] || after["seq"] != before["seq"]+2 {
			t.Errorf("two logins: audit %d→%d, changes %d→%d, seq %d→%d; want 2 audit entries, no change, 2 sequence numbers",
				before["audit"], after["audit"], before["changes"], after["changes"], before["seq"], after["seq"])
		}
		changes, now, err := r.Changes(bg, seq)
		if err != nil || len(changes) != 0 || now != seq+2 {
			t.Errorf("Changes after two logins: %+v now %d (%v), want none and now %d", changes, now, err, seq+2)
		}
		entries := must(r.Audit(bg, 0, 100))(t)
		e := entries[len(entries)-2:]
		if e[0].Actor != "tls:alice" || e[0].Action != "tls.login" || e[0].Target != "alice/openconnect" || e[0].Detail != "from 198.18.0.7:40000" ||
			e[1].Actor != "tls:bob" || e[1].Action != "tls.login_failed" {
			t.Errorf("login entries: %+v", e)
		}

		before = counts(t, r)
		for _, c := range []struct{ action, target, detail string }{
			{"user.add", "x", ""}, {"tls.logout", "x", ""}, {".login", "x", ""}, {"TLS.login", "x", ""}, {"a-b.login", "x", ""},
			{strings.Repeat("x", 17) + ".login", "x", ""}, {"tls.login", strings.Repeat("x", MaxNoteTarget+1), ""},
			{"tls.login", "x", strings.Repeat("x", MaxNoteDetail+1)}, {"tls.login", "\xff", ""}, {"tls.login", "x", "\xc3"},
		} {
			wantErr(t, r.NoteLogin(ctx, c.action, c.target, c.detail), ErrInvalid, "NoteLogin "+c.action)
		}
		unchanged(t, r, before, "refused NoteLogin entries")
		// A change after the logins is found as usual.
		must(r.AddUser(bg, "bob"))(t)
		if changes, _, _ := r.Changes(bg, seq); len(changes) != 1 || changes[0].Seq != seq+3 {
			t.Errorf("a change after two logins: %+v", changes)
		}
	})
}
