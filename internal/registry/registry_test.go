package registry

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var bg = context.Background()

// must(f())(t) is f's value, or fails t with f's error.
func must[T any](v T, err error) func(t testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func wantErr(t *testing.T, err, sentinel error, what string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: got error %v, want %v", what, err, sentinel)
	}
	if err != nil && len(err.Error()) < len(sentinel.Error())+10 {
		t.Errorf("%s: error %q says too little to act on", what, err)
	}
}

func TestUsers(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		alice := must(r.AddUser(bg, "alice"))(t)
		must(r.AddUser(bg, "bob.smith_2-x"))(t)
		if got := must(r.User(bg, "alice"))(t); got.ID != alice.ID || got.Name != "alice" || got.CreatedAt.IsZero() {
			t.Errorf("User(alice) = %+v, want %+v", got, alice)
		}
		before := counts(t, r)
		_, err := r.AddUser(bg, "alice")
		wantErr(t, err, ErrExists, "duplicate user")
		_, err = r.AddUser(bg, "al ice")
		wantErr(t, err, ErrInvalid, "bad name")
		_, err = r.AddUser(bg, strings.Repeat("a", 65))
		wantErr(t, err, ErrInvalid, "long name")
		_, err = r.User(bg, "carol")
		wantErr(t, err, ErrNotFound, "unknown user")
		wantErr(t, r.RemoveUser(bg, "carol"), ErrNotFound, "remove unknown user")
		unchanged(t, r, before, "refused user changes")

		users := must(r.ListUsers(bg))(t)
		if len(users) != 2 || users[0].Name != "alice" || users[1].Name != "bob.smith_2-x" {
			t.Errorf("ListUsers = %+v", users)
		}
		if err := r.RemoveUser(bg, "alice"); err != nil {
			t.Fatal(err)
		}
		_, err = r.User(bg, "alice")
		wantErr(t, err, ErrNotFound, "removed user")
		again := must(r.AddUser(bg, "alice"))(t)
		if again.ID == alice.ID {
			t.Errorf("re-added user got the removed user's id %d", again.ID)
		}
	})
}

func TestRemoveUserRevokesDevices(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		must(r.AddPool(bg, netip.MustParsePrefix("100.64.0.0/24")))(t)
		must(r.AddUser(bg, "alice"))(t)
		must(r.AddGroup(bg, "eng"))(t)
		if err := r.AddMember(bg, "eng", "alice"); err != nil {
			t.Fatal(err)
		}
		d := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(1)}))(t)
		must3[Invite, string](t)(r.CreateInvite(bg, "alice", time.Hour, 1))
		if err := r.RemoveUser(bg, "alice"); err != nil {
			t.Fatal(err)
		}
		got := must(r.Device(bg, d.ID))(t)
		if !got.Revoked() || len(got.Addresses) != 0 {
			t.Errorf("device of a removed user: %+v, want revoked without addresses", got)
		}
		c := counts(t, r)
		if c["device_addresses"] != 0 || c["invites"] != 0 || c["group_members"] != 0 || c["devices"] != 1 {
			t.Errorf("after RemoveUser: %v", c)
		}
	})
}

func must3[A, B any](t *testing.T) func(A, B, error) (A, B) {
	return func(a A, b B, err error) (A, B) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

func TestGroups(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		must(r.AddUser(bg, "alice"))(t)
		must(r.AddUser(bg, "bob"))(t)
		eng := must(r.AddGroup(bg, "eng"))(t)
		must(r.AddGroup(bg, "ops"))(t)
		_, err := r.AddGroup(bg, "eng")
		wantErr(t, err, ErrExists, "duplicate group")
		_, err = r.AddGroup(bg, "")
		wantErr(t, err, ErrInvalid, "empty group name")
		for _, u := range []string{"alice", "bob"} {
			if err := r.AddMember(bg, "eng", u); err != nil {
				t.Fatal(err)
			}
		}
		before := counts(t, r)
		if err := r.AddMember(bg, "eng", "alice"); err != nil {
			t.Fatalf("AddMember twice: %v", err)
		}
		unchanged(t, r, before, "AddMember of a member")
		wantErr(t, r.AddMember(bg, "eng", "carol"), ErrNotFound, "unknown member")
		wantErr(t, r.AddMember(bg, "qa", "alice"), ErrNotFound, "unknown group")
		wantErr(t, r.RemoveMember(bg, "ops", "alice"), ErrNotFound, "not a member")
		unchanged(t, r, before, "refused group changes")

		members := must(r.Members(bg, "eng"))(t)
		if len(members) != 2 || members[0].Name != "alice" || members[1].Name != "bob" {
			t.Errorf("Members(eng) = %+v", members)
		}
		if err := r.AddMember(bg, "ops", "alice"); err != nil {
			t.Fatal(err)
		}
		gs := must(r.GroupsOf(bg, "alice"))(t)
		if len(gs) != 2 || gs[0].Name != "eng" || gs[1].Name != "ops" {
			t.Errorf("GroupsOf(alice) = %+v", gs)
		}
		if err := r.RemoveMember(bg, "eng", "bob"); err != nil {
			t.Fatal(err)
		}
		if m := must(r.Members(bg, "eng"))(t); len(m) != 1 {
			t.Errorf("after RemoveMember: %+v", m)
		}
		must(r.AddRule(bg, "eng", must(ParseRule("198.18.2.0/24 tcp/22"))(t)))(t)
		if err := r.RemoveGroup(bg, "eng"); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, r); c["rules"] != 0 || c["group_members"] != 1 {
			t.Errorf("RemoveGroup left rules or members: %v", c)
		}
		_, err = r.Members(bg, "eng")
		wantErr(t, err, ErrNotFound, "members of a removed group")
		if gs := must(r.ListGroups(bg))(t); len(gs) != 1 || gs[0].Name != "ops" || gs[0].ID == eng.ID {
			t.Errorf("ListGroups = %+v", gs)
		}
	})
}

func TestPools(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		v4 := must(r.AddPool(bg, netip.MustParsePrefix("100.80.0.0/16")))(t)
		v6 := must(r.AddPool(bg, netip.MustParsePrefix("2001:db8:80::/64")))(t)
		before := counts(t, r)
		_, err := r.AddPool(bg, netip.MustParsePrefix("100.80.0.0/16"))
		wantErr(t, err, ErrExists, "the same pool again")
		for _, p := range []string{"100.80.5.0/24", "100.0.0.0/8", "2001:db8:80::1:0/112", "2001:db8::/32"} {
			_, err := r.AddPool(bg, netip.MustParsePrefix(p))
			wantErr(t, err, ErrConflict, "overlapping pool "+p)
		}
		for _, p := range []string{"100.81.0.0/31", "2001:db8:81::/127", "100.81.0.1/24"} {
			_, err := r.AddPool(bg, netip.MustParsePrefix(p))
			wantErr(t, err, ErrInvalid, "bad pool "+p)
		}
		_, err = r.AddPool(bg, netip.Prefix{})
		wantErr(t, err, ErrInvalid, "zero pool")
		unchanged(t, r, before, "refused pools")
		ps := must(r.ListPools(bg))(t)
		if len(ps) != 2 || ps[0] != v4 || ps[1] != v6 {
			t.Errorf("ListPools = %+v, want %+v %+v", ps, v4, v6)
		}

		must(r.AddUser(bg, "alice"))(t)
		d := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(1)}))(t)
		wantErr(t, r.RemovePool(bg, v4.ID), ErrConflict, "remove a pool in use")
		wantErr(t, r.RemovePool(bg, 999), ErrNotFound, "remove unknown pool")
		if err := r.RevokeDevice(bg, d.ID); err != nil {
			t.Fatal(err)
		}
		if err := r.RemovePool(bg, v4.ID); err != nil {
			t.Fatalf("remove an unused pool: %v", err)
		}
		if ps := must(r.ListPools(bg))(t); len(ps) != 1 || ps[0] != v6 {
			t.Errorf("after RemovePool: %+v", ps)
		}
		// The removed range is free again.
		must(r.AddPool(bg, netip.MustParsePrefix("100.80.0.0/24")))(t)
	})
}

func TestDevices(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		clk := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
		r := b.open(t, Options{Now: clk.now})
		v4 := netip.MustParsePrefix("100.80.0.0/16")
		v6 := netip.MustParsePrefix("2001:db8:80::/64")
		must(r.AddPool(bg, v4))(t)
		must(r.AddPool(bg, v6))(t)
		must(r.AddUser(bg, "alice"))(t)
		must(r.AddUser(bg, "bob"))(t)
		laptop := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(1)}))(t)
		if len(laptop.Addresses) != 2 || !v4.Contains(laptop.Addresses[0]) || !v6.Contains(laptop.Addresses[1]) {
			t.Fatalf("addresses %v, want one in %s then one in %s", laptop.Addresses, v4, v6)
		}
		for _, a := range laptop.Addresses {
			if a == netip.MustParseAddr("100.80.0.0") || a == netip.MustParseAddr("100.80.0.1") || a == netip.MustParseAddr("100.80.255.255") ||
				a == netip.MustParseAddr("2001:db8:80::") || a == netip.MustParseAddr("2001:db8:80::1") {
				t.Errorf("reserved address %s given to a device", a)
			}
		}
		if !laptop.CreatedAt.Equal(clk.t) || !laptop.LastSeenAt.IsZero() || laptop.Revoked() {
			t.Errorf("new device times: %+v", laptop)
		}
		got := must(r.Device(bg, laptop.ID))(t)
		if !equalDevice(got, laptop) {
			t.Errorf("Device = %+v, want %+v", got, laptop)
		}
		if got := must(r.DeviceByKey(bg, key(1)))(t); !equalDevice(got, laptop) {
			t.Errorf("DeviceByKey = %+v", got)
		}
		must(r.CreateDevice(bg, "bob", DeviceSpec{Name: "laptop", PublicKey: key(2)}))(t) // names are per user
		phone := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "phone", PublicKey: key(3)}))(t)

		before := counts(t, r)
		_, err := r.CreateDevice(bg, "alice", DeviceSpec{Name: "tablet", PublicKey: key(1)})
		wantErr(t, err, ErrExists, "duplicate key")
		_, err = r.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(9)})
		wantErr(t, err, ErrExists, "duplicate name")
		_, err = r.CreateDevice(bg, "carol", DeviceSpec{Name: "laptop", PublicKey: key(9)})
		wantErr(t, err, ErrNotFound, "unknown user")
		_, err = r.CreateDevice(bg, "alice", DeviceSpec{Name: "lap top", PublicKey: key(9)})
		wantErr(t, err, ErrInvalid, "bad device name")
		_, err = r.CreateDevice(bg, "alice", DeviceSpec{Name: "zero"})
		wantErr(t, err, ErrInvalid, "zero key")
		_, err = r.Device(bg, 999)
		wantErr(t, err, ErrNotFound, "unknown device")
		_, err = r.DeviceByKey(bg, key(99))
		wantErr(t, err, ErrNotFound, "unknown key")
		wantErr(t, r.RevokeDevice(bg, 999), ErrNotFound, "revoke unknown device")
		unchanged(t, r, before, "refused device changes")

		if ds := must(r.ListDevices(bg, DeviceFilter{User: "alice"}))(t); len(ds) != 2 || ds[0].Name != "laptop" || ds[1].Name != "phone" {
			t.Errorf("ListDevices(alice) = %+v", ds)
		}
		if ds := must(r.ListDevices(bg, DeviceFilter{Name: "laptop"}))(t); len(ds) != 2 || ds[0].User != "alice" || ds[1].User != "bob" {
			t.Errorf("ListDevices(name laptop) = %+v", ds)
		}
		_, err = r.ListDevices(bg, DeviceFilter{User: "carol"})
		wantErr(t, err, ErrNotFound, "list devices of an unknown user")

		clk.t = clk.t.Add(time.Minute)
		if err := r.RevokeDevice(bg, phone.ID); err != nil {
			t.Fatal(err)
		}
		wantErr(t, r.RevokeDevice(bg, phone.ID), ErrNotFound, "revoke twice")
		if ds := must(r.ListDevices(bg, DeviceFilter{User: "alice"}))(t); len(ds) != 1 || ds[0].ID != laptop.ID {
			t.Errorf("active devices after revoke = %+v", ds)
		}
		all := must(r.ListDevices(bg, DeviceFilter{IncludeRevoked: true}))(t)
		if len(all) != 3 || !all[1].Revoked() || !all[1].RevokedAt.Equal(clk.t) || len(all[1].Addresses) != 0 {
			t.Errorf("all devices after revoke = %+v", all)
		}
		// A revoked device's name may be enrolled again, its key never.
		must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "phone", PublicKey: key(4)}))(t)
		_, err = r.CreateDevice(bg, "alice", DeviceSpec{Name: "phone2", PublicKey: key(3)})
		wantErr(t, err, ErrExists, "re-enrolling a revoked key")

		before = counts(t, r)
		seen := clk.t.Add(time.Hour)
		if err := r.SeenDevice(bg, laptop.ID, seen); err != nil {
			t.Fatal(err)
		}
		if err := r.SeenDevice(bg, laptop.ID, seen.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		unchanged(t, r, before, "SeenDevice (an observation, not a change)")
		if got := must(r.Device(bg, laptop.ID))(t); !got.LastSeenAt.Equal(seen) {
			t.Errorf("LastSeenAt = %v, want %v (never backwards)", got.LastSeenAt, seen)
		}
		wantErr(t, r.SeenDevice(bg, 999, seen), ErrNotFound, "seen unknown device")
	})
}

// TestRenameDevice: a rename keeps the device's key and addresses, is
// audited with its actor (target user/new, the old name as detail) and is
// a device change; the old name is free at once; a bad name, a revoked or
// unknown device and a name the user's other active device has are
// refused and write nothing; the same name again writes nothing.
func TestRenameDevice(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		ctx := WithActor(bg, "admin:root")
		must(r.AddPool(bg, netip.MustParsePrefix("100.80.0.0/16")))(t)
		must(r.AddUser(bg, "alice"))(t)
		must(r.AddUser(bg, "bob"))(t)
		laptop := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(1)}))(t)
		phone := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "phone", PublicKey: key(2)}))(t)
		old := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "tablet", PublicKey: key(3)}))(t)
		if err := r.RevokeDevice(bg, old.ID); err != nil {
			t.Fatal(err)
		}
		must(r.CreateDevice(bg, "bob", DeviceSpec{Name: "desk", PublicKey: key(4)}))(t)

		before := counts(t, r)
		_, err := r.RenameDevice(ctx, laptop.ID, "phone")
		wantErr(t, err, ErrExists, "the name of the user's other device")
		_, err = r.RenameDevice(ctx, laptop.ID, "lap top")
		wantErr(t, err, ErrInvalid, "a bad name")
		_, err = r.RenameDevice(ctx, laptop.ID, "<b>x</b>")
		wantErr(t, err, ErrInvalid, "markup")
		_, err = r.RenameDevice(ctx, laptop.ID, "")
		wantErr(t, err, ErrInvalid, "an empty name")
		_, err = r.RenameDevice(ctx, laptop.ID, strings.Repeat("a", 65))
		wantErr(t, err, ErrInvalid, "a long name")
		_, err = r.RenameDevice(ctx, 999, "desk")
		wantErr(t, err, ErrNotFound, "an unknown device")
		_, err = r.RenameDevice(ctx, old.ID, "tablet2")
		wantErr(t, err, ErrNotFound, "a revoked device")
		if got := must(r.RenameDevice(ctx, laptop.ID, "laptop"))(t); !equalDevice(got, laptop) {
			t.Errorf("renamed to its own name: %+v", got)
		}
		unchanged(t, r, before, "refused renames")

		_, seq, _ := r.Changes(bg, 0)
		entries := must(r.Audit(bg, 0, 1000))(t)
		lastAudit := entries[len(entries)-1].ID
		// bob's desk and alice's revoked tablet do not stand in the way.
		got := must(r.RenameDevice(ctx, laptop.ID, "desk"))(t)
		want := laptop
		want.Name = "desk"
		if !equalDevice(got, want) {
			t.Errorf("RenameDevice = %+v, want %+v", got, want)
		}
		if d := must(r.Device(bg, laptop.ID))(t); !equalDevice(d, want) {
			t.Errorf("Device after the rename = %+v", d)
		}
		if ds := must(r.ListDevices(bg, DeviceFilter{User: "alice", Name: "laptop"}))(t); len(ds) != 0 {
			t.Errorf("the old name still lists %+v", ds)
		}
		entries = must(r.Audit(bg, lastAudit, 100))(t)
		if len(entries) != 1 || entries[0].Action != "device.rename" || entries[0].Actor != "admin:root" ||
			entries[0].Target != "alice/desk" || entries[0].Detail != "laptop" {
			t.Errorf("audit of the rename: %+v", entries)
		}
		changes, _, _ := r.Changes(bg, seq)
		if len(changes) != 1 || changes[0].Kind != KindDevice || changes[0].ID != laptop.ID {
			t.Errorf("changes of the rename: %+v", changes)
		}
		// The old name is free at once; the new one is taken.
		must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(5)}))(t)
		_, err = r.CreateDevice(bg, "alice", DeviceSpec{Name: "desk", PublicKey: key(6)})
		wantErr(t, err, ErrExists, "enrolling the new name")
		_, err = r.RenameDevice(ctx, phone.ID, "desk")
		wantErr(t, err, ErrExists, "renaming another device to the new name")
	})
}

func equalDevice(a, b Device) bool {
	if a.ID != b.ID || a.UserID != b.UserID || a.User != b.User || a.Name != b.Name || a.Protocol != b.Protocol || a.PublicKey != b.PublicKey ||
		!a.CreatedAt.Equal(b.CreatedAt) || !a.LastSeenAt.Equal(b.LastSeenAt) || !a.RevokedAt.Equal(b.RevokedAt) || len(a.Addresses) != len(b.Addresses) {
		return false
	}
	for i := range a.Addresses {
		if a.Addresses[i] != b.Addresses[i] {
			return false
		}
	}
	return true
}

// TestAllocationOrder pins the allocation rule: from the (here fixed) start,
// the next free address upwards, wrapping; a revoked device's address is
// free again and found by the same walk; an address never changes while its
// device lives (also across a reopen).
func TestAllocationOrder(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{AddressRand: zeros{}})
		must(r.AddPool(bg, netip.MustParsePrefix("100.64.0.0/29")))(t)    // usable .2 to .6
		must(r.AddPool(bg, netip.MustParsePrefix("2001:db8:1::/125")))(t) // usable ::2 to ::7
		must(r.AddUser(bg, "alice"))(t)
		var devs []Device
		for i := 0; i < 4; i++ {
			devs = append(devs, must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "d" + string(rune('0'+i)), PublicKey: key(i + 1)}))(t))
		}
		for i, d := range devs {
			want4 := netip.AddrFrom4([4]byte{100, 64, 0, byte(2 + i)})
			want6 := netip.MustParseAddr("2001:db8:1::").Next().Next()
			for j := 0; j < i; j++ {
				want6 = want6.Next()
			}
			if len(d.Addresses) != 2 || d.Addresses[0] != want4 || d.Addresses[1] != want6 {
				t.Errorf("device %d: %v, want [%s %s]", i, d.Addresses, want4, want6)
			}
		}
		if err := r.RevokeDevice(bg, devs[1].ID); err != nil {
			t.Fatal(err)
		}
		next := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "d9", PublicKey: key(9)}))(t)
		if next.Addresses[0] != devs[1].Addresses[0] || next.Addresses[1] != devs[1].Addresses[1] {
			t.Errorf("after a revoke the next device got %v, want the freed %v", next.Addresses, devs[1].Addresses)
		}
		last := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "d10", PublicKey: key(10)}))(t)
		if last.Addresses[0] != netip.MustParseAddr("100.64.0.6") {
			t.Errorf("then %v, want 100.64.0.6", last.Addresses)
		}
		// Reopened (a gateway restart), every device has its address still.
		r2 := b.open(t, Options{})
		for _, d := range []Device{devs[0], devs[2], devs[3], next, last} {
			got := must(r2.Device(bg, d.ID))(t)
			if !equalDevice(got, d) {
				t.Errorf("after reopen: %+v, want %+v", got, d)
			}
		}
	})
}

func TestPoolExhausted(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		must(r.AddUser(bg, "alice"))(t)
		v4 := must(r.AddPool(bg, netip.MustParsePrefix("100.64.0.0/30")))(t) // one usable: .2
		d := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "one", PublicKey: key(1)}))(t)
		if d.Addresses[0] != netip.MustParseAddr("100.64.0.2") {
			t.Errorf("only usable address of a /30: got %s, want 100.64.0.2", d.Addresses[0])
		}
		before := counts(t, r)
		_, err := r.CreateDevice(bg, "alice", DeviceSpec{Name: "two", PublicKey: key(2)})
		wantErr(t, err, ErrPoolExhausted, "second device in a /30")
		if !strings.Contains(err.Error(), "100.64.0.0/30") {
			t.Errorf("exhaustion error %q does not name the pool", err)
		}
		unchanged(t, r, before, "an enrollment into a full pool")
		_, secret := must3[Invite, string](t)(r.CreateInvite(bg, "alice", time.Hour, 1))
		before = counts(t, r)
		_, err = r.Redeem(bg, secret, DeviceSpec{Name: "two", PublicKey: key(2)})
		wantErr(t, err, ErrPoolExhausted, "invite into a full pool")
		unchanged(t, r, before, "a redeem into a full pool (the use is not taken)")

		// IPv6: a /126 has two usable addresses (::2 and ::3: no broadcast).
		if err := r.RevokeDevice(bg, d.ID); err != nil {
			t.Fatal(err)
		}
		if err := r.RemovePool(bg, v4.ID); err != nil {
			t.Fatal(err)
		}
		must(r.AddPool(bg, netip.MustParsePrefix("2001:db8::/126")))(t)
		d1 := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "a", PublicKey: key(3)}))(t)
		d2 := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "b", PublicKey: key(4)}))(t)
		got := map[netip.Addr]bool{d1.Addresses[0]: true, d2.Addresses[0]: true}
		if !got[netip.MustParseAddr("2001:db8::2")] || !got[netip.MustParseAddr("2001:db8::3")] {
			t.Errorf("a /126 gave %v and %v, want ::2 and ::3", d1.Addresses, d2.Addresses)
		}
		_, err = r.CreateDevice(bg, "alice", DeviceSpec{Name: "c", PublicKey: key(5)})
		wantErr(t, err, ErrPoolExhausted, "third device in a /126")
	})
}

func TestInvites(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		clk := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
		r := b.open(t, Options{Now: clk.now})
		must(r.AddPool(bg, netip.MustParsePrefix("100.64.0.0/24")))(t)
		must(r.AddUser(bg, "alice"))(t)
		must(r.AddUser(bg, "bob"))(t)
		_, _, err := r.CreateInvite(bg, "carol", time.Hour, 1)
		wantErr(t, err, ErrNotFound, "invite for an unknown user")
		_, _, err = r.CreateInvite(bg, "alice", 0, 1)
		wantErr(t, err, ErrInvalid, "zero ttl")
		_, _, err = r.CreateInvite(bg, "alice", time.Hour, 0)
		wantErr(t, err, ErrInvalid, "zero uses")

		inv, secret := must3[Invite, string](t)(r.CreateInvite(bg, "alice", time.Hour, 2))
		if !strings.HasPrefix(secret, inv.Prefix+".") || inv.UsesLeft != 2 || !inv.ExpiresAt.Equal(clk.t.Add(time.Hour)) {
			t.Errorf("invite %+v, secret %q", inv, secret)
		}
		if _, s, err := parseInviteSecret(secret); err != nil || len(s)*8 < 128 {
			t.Errorf("secret %q: %d random bits, %v", secret, len(s)*8, err)
		}
		var stored []byte
		if err := r.db.QueryRow(r.d.rebind("SELECT secret_hash FROM invites WHERE id = ?"), inv.ID).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(stored), secret[len(inv.Prefix)+1:]) || len(stored) != 32 {
			t.Errorf("stored %x: want only a SHA-256", stored)
		}

		d := must(r.Redeem(bg, secret, DeviceSpec{Name: "laptop", PublicKey: key(1)}))(t)
		if d.User != "alice" || len(d.Addresses) != 1 {
			t.Errorf("redeemed device %+v", d)
		}
		if invs := must(r.ListInvites(bg, "alice"))(t); len(invs) != 1 || invs[0].UsesLeft != 1 {
			t.Errorf("after one redeem: %+v", invs)
		}

		forged := inv.Prefix + "." + strings.Repeat("A", 43)
		other, otherSecret := must3[Invite, string](t)(r.CreateInvite(bg, "bob", time.Hour, 1))
		swapped := inv.Prefix + otherSecret[len(other.Prefix):] // a real secret under another prefix
		before := counts(t, r)
		for _, c := range []struct{ name, secret string }{
			{"forged secret", forged},
			{"secret of another invite", swapped},
			{"unknown prefix", "AAAAAAAA." + strings.Repeat("A", 43)},
			{"malformed", "not-a-secret"},
			{"empty", ""},
			{"truncated", secret[:len(secret)-1]},
		} {
			_, err := r.Redeem(bg, c.secret, DeviceSpec{Name: "x" + c.name[:3], PublicKey: key(50)})
			wantErr(t, err, ErrInviteRefused, c.name)
		}
		// A key that is enrolled already: refused, and the use is not taken.
		_, err = r.Redeem(bg, secret, DeviceSpec{Name: "other", PublicKey: key(1)})
		wantErr(t, err, ErrExists, "redeem with an enrolled key")
		unchanged(t, r, before, "refused redeems")

		must(r.Redeem(bg, secret, DeviceSpec{Name: "phone", PublicKey: key(2)}))(t)
		before = counts(t, r)
		_, err = r.Redeem(bg, secret, DeviceSpec{Name: "tablet", PublicKey: key(3)})
		wantErr(t, err, ErrInviteRefused, "used-up invite")
		unchanged(t, r, before, "a used-up invite")

		clk.t = clk.t.Add(time.Hour)
		_, err = r.Redeem(bg, otherSecret, DeviceSpec{Name: "laptop", PublicKey: key(4)})
		wantErr(t, err, ErrInviteRefused, "expired invite")
		if !strings.Contains(err.Error(), "expired") {
			t.Errorf("expired invite: %v", err)
		}
		unchanged(t, r, before, "an expired invite")

		if invs := must(r.ListInvites(bg, ""))(t); len(invs) != 2 {
			t.Errorf("ListInvites = %+v", invs)
		}
		if err := r.RevokeInvite(bg, other.ID); err != nil {
			t.Fatal(err)
		}
		wantErr(t, r.RevokeInvite(bg, other.ID), ErrNotFound, "revoke an invite twice")
		clk.t = clk.t.Add(-time.Minute)
		_, err = r.Redeem(bg, otherSecret, DeviceSpec{Name: "laptop", PublicKey: key(4)})
		wantErr(t, err, ErrInviteRefused, "revoked invite")
	})
}

func TestRules(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		must(r.AddGroup(bg, "eng"))(t)
		must(r.AddGroup(bg, "ops"))(t)
		var added []Rule
		for _, s := range []string{"198.18.2.0/24", "198.18.2.10 tcp/22", "2001:db8:2::/64 udp/5000-5100", "198.18.3.0/24 icmp"} {
			added = append(added, must(r.AddRule(bg, "eng", must(ParseRule(s))(t)))(t))
		}
		must(r.AddRule(bg, "ops", Rule{Dest: netip.MustParsePrefix("198.18.4.0/24"), Proto: ProtoTCP}))(t)
		before := counts(t, r)
		_, err := r.AddRule(bg, "qa", added[0])
		wantErr(t, err, ErrNotFound, "rule for an unknown group")
		_, err = r.AddRule(bg, "eng", Rule{Dest: netip.MustParsePrefix("198.18.2.0/24"), Proto: ProtoICMP, PortFrom: 1, PortTo: 2})
		wantErr(t, err, ErrInvalid, "icmp with ports")
		_, err = r.AddRule(bg, "eng", Rule{Dest: netip.MustParsePrefix("198.18.2.1/24")})
		wantErr(t, err, ErrInvalid, "host bits")
		_, err = r.AddRule(bg, "eng", Rule{Dest: netip.MustParsePrefix("198.18.2.0/24"), Proto: ProtoTCP, PortFrom: 9, PortTo: 1})
		wantErr(t, err, ErrInvalid, "reversed ports")
		wantErr(t, r.RemoveRule(bg, 999), ErrNotFound, "remove unknown rule")
		_, err = r.ListRules(bg, "qa")
		wantErr(t, err, ErrNotFound, "rules of an unknown group")
		unchanged(t, r, before, "refused rules")

		got := must(r.ListRules(bg, "eng"))(t)
		if len(got) != len(added) {
			t.Fatalf("ListRules(eng) = %+v", got)
		}
		for i := range got {
			if got[i] != added[i] {
				t.Errorf("rule %d: %+v, want %+v", i, got[i], added[i])
			}
		}
		if got[2].String() != "2001:db8:2::/64 udp/5000-5100" || got[1].String() != "198.18.2.10 tcp/22" {
			t.Errorf("rule texts %q %q", got[2], got[1])
		}
		if all := must(r.ListRules(bg, ""))(t); len(all) != 5 {
			t.Errorf("ListRules(all) = %d rules, want 5", len(all))
		}
		if err := r.RemoveRule(bg, added[0].ID); err != nil {
			t.Fatal(err)
		}
		if got := must(r.ListRules(bg, "eng"))(t); len(got) != 3 {
			t.Errorf("after RemoveRule: %+v", got)
		}
	})
}

func TestGateways(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		gwA := must(r.AddGateway(bg, Gateway{Name: "gw-a", PublicKey: key(1), Endpoint: "198.18.0.1:51820"}))(t)
		gwB := must(r.AddGateway(bg, Gateway{Name: "gw-b", PublicKey: key(2), Endpoint: "[2001:db8::1]:51820", API: "https://[2001:db8::1]:8443", Pin: "pin-sha256:AAAA",
			TLS: "https://[2001:db8::1]:443"}))(t)
		must(r.AddGateway(bg, Gateway{Name: "gw-c", PublicKey: key(3), Endpoint: "vpn.example.com:443"}))(t)
		before := counts(t, r)
		_, err := r.AddGateway(bg, Gateway{Name: "gw-a", PublicKey: key(9), Endpoint: "198.18.0.9:51820"})
		wantErr(t, err, ErrExists, "duplicate gateway name")
		_, err = r.AddGateway(bg, Gateway{Name: "gw-d", PublicKey: key(1), Endpoint: "198.18.0.9:51820"})
		wantErr(t, err, ErrExists, "duplicate gateway key")
		_, err = r.AddGateway(bg, Gateway{Name: "gw-d", PublicKey: key(9), Endpoint: "198.18.0.9"})
		wantErr(t, err, ErrInvalid, "endpoint without a port")
		_, err = r.AddGateway(bg, Gateway{Name: "gw-d", Endpoint: "198.18.0.9:1"})
		wantErr(t, err, ErrInvalid, "zero gateway key")
		badURLs := []string{"http://198.18.0.9:8443", "https://", "https://198.18.0.9/x", "https://198.18.0.9/", "https://198.18.0.9?q",
			"https://198.18.0.9#f", "https://u@198.18.0.9", "198.18.0.9:8443", "https:198.18.0.9", "https://198.18.0.9:x:y"}
		for _, u := range badURLs {
			_, err = r.AddGateway(bg, Gateway{Name: "gw-d", PublicKey: key(9), Endpoint: "198.18.0.9:1", API: u})
			wantErr(t, err, ErrInvalid, "API "+u)
			_, err = r.AddGateway(bg, Gateway{Name: "gw-d", PublicKey: key(9), Endpoint: "198.18.0.9:1", TLS: u})
			wantErr(t, err, ErrInvalid, "TLS "+u)
			wantErr(t, r.SetGatewayTLS(bg, "gw-a", u), ErrInvalid, "SetGatewayTLS "+u)
		}
		wantErr(t, r.RemoveGateway(bg, "gw-x"), ErrNotFound, "remove unknown gateway")
		wantErr(t, r.SetGatewayTLS(bg, "gw-x", "https://198.18.0.9:443"), ErrNotFound, "SetGatewayTLS on an unknown gateway")
		wantErr(t, r.SetGatewayTLS(bg, "gw x", ""), ErrInvalid, "SetGatewayTLS on a bad name")
		if err := r.SetGatewayTLS(bg, "gw-b", gwB.TLS); err != nil { // no change: nothing written
			t.Fatal(err)
		}
		unchanged(t, r, before, "refused gateways")
		gs := must(r.ListGateways(bg))(t)
		if len(gs) != 3 || gs[0] != gwA || gs[1] != gwB || gs[2].Endpoint != "vpn.example.com:443" {
			t.Errorf("ListGateways = %+v", gs)
		}
		if gs[0].TLS != "" || gs[1].TLS != "https://[2001:db8::1]:443" || gs[2].TLS != "" {
			t.Errorf("ListGateways TLS: %q %q %q", gs[0].TLS, gs[1].TLS, gs[2].TLS)
		}
		// Set, change and clear a gateway's TLS listener; each is audited.
		ctx := WithActor(bg, "gateway:gw-a")
		for _, want := range []string{"https://198.18.0.1:443", "https://vpn.example.com", ""} {
			if err := r.SetGatewayTLS(ctx, "gw-a", want); err != nil {
				t.Fatalf("SetGatewayTLS %q: %v", want, err)
			}
			gs := must(r.ListGateways(bg))(t)
			if gs[0].TLS != want || gs[1].TLS != gwB.TLS {
				t.Errorf("after SetGatewayTLS(gw-a, %q): TLS %q, gw-b's %q", want, gs[0].TLS, gs[1].TLS)
			}
			gs[0].TLS = ""
			if gs[0] != gwA {
				t.Errorf("SetGatewayTLS changed more than TLS: %+v, was %+v", gs[0], gwA)
			}
			detail := want
			if want == "" {
				detail = "none"
			}
			if a := must(r.Audit(bg, 0, 1000))(t); a[len(a)-1].Action != "gateway.tls" || a[len(a)-1].Target != "gw-a" ||
				a[len(a)-1].Detail != detail || a[len(a)-1].Actor != "gateway:gw-a" {
				t.Errorf("audit after SetGatewayTLS(%q): %+v", want, a[len(a)-1])
			}
		}
		if c := counts(t, r); c["audit"] != before["audit"]+3 || c["changes"] != before["changes"]+3 {
			t.Errorf("three TLS changes made %d audit entries and %d changes", c["audit"]-before["audit"], c["changes"]-before["changes"])
		}
		if err := r.NoteGatewayChange(WithActor(bg, "cli:root"), "gw-b", "gateway.route.add", "198.18.3.0/24"); err != nil {
			t.Fatal(err)
		}
		if a := must(r.Audit(bg, 0, 1000))(t); a[len(a)-1].Action != "gateway.route.add" || a[len(a)-1].Target != "gw-b" ||
			a[len(a)-1].Detail != "198.18.3.0/24" || a[len(a)-1].Actor != "cli:root" {
			t.Errorf("audit after NoteGatewayChange: %+v", a[len(a)-1])
		}
		wantErr(t, r.NoteGatewayChange(bg, "gw-x", "gateway.route.add", ""), ErrNotFound, "a change to an unknown gateway")
		wantErr(t, r.NoteGatewayChange(bg, "gw-b", "user.add", ""), ErrInvalid, "a change that is not a gateway's")
		if err := r.RemoveGateway(bg, "gw-a"); err != nil {
			t.Fatal(err)
		}
		if gs := must(r.ListGateways(bg))(t); len(gs) != 2 {
			t.Errorf("after RemoveGateway: %+v", gs)
		}
	})
}

// TestMigrationTo5: a registry at schema 4 with a gateway (made by that
// schema's own statements) opens as schema 5: the gateway is as it was,
// with no TLS listener, and takes one.
func TestMigrationTo5(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		db, d, err := b.raw()
		if err != nil {
			t.Fatal(err)
		}
		ms := must(migrations())(t)
		if len(ms) < 5 || ms[4].name != "0005_gateway_tls.sql" {
			t.Fatalf("migrations: want 0005_gateway_tls.sql fifth, have %d", len(ms))
		}
		if err := migrateTo(bg, db, d, ms[:4]); err != nil {
			t.Fatal(err)
		}
		k := key(1)
		if _, err := db.Exec(d.rebind(`INSERT INTO gateways (name, public_key, endpoint, api, pin, created_at) VALUES (?, ?, ?, ?, ?, ?)`),
			"gw1", k[:], "198.18.0.1:51820", "https://198.18.0.1:8443", "pin-sha256:AAAA", 1); err != nil {
			t.Fatal(err)
		}
		db.Close()

		r := b.open(t, Options{})
		if c := counts(t, r); c["schema_version"] != SchemaVersion() || SchemaVersion() < 5 {
			t.Fatalf("schema_version rows %d, want %d", c["schema_version"], SchemaVersion())
		}
		gs := must(r.ListGateways(bg))(t)
		if len(gs) != 1 || gs[0].Name != "gw1" || gs[0].PublicKey != k || gs[0].Endpoint != "198.18.0.1:51820" || gs[0].API != "https://198.18.0.1:8443" ||
			gs[0].Pin != "pin-sha256:AAAA" || gs[0].TLS != "" {
			t.Fatalf("the schema-4 gateway after the upgrade: %+v", gs)
		}
		if err := r.SetGatewayTLS(bg, "gw1", "https://198.18.0.1:443"); err != nil {
			t.Fatal(err)
		}
		if gs := must(r.ListGateways(bg))(t); gs[0].TLS != "https://198.18.0.1:443" {
			t.Errorf("TLS after SetGatewayTLS: %q", gs[0].TLS)
		}
	})
}

// TestAuditAndChanges checks that every kind of change appends one audit
// entry (with its actor) and one Change, in the same transaction, with
// sequence numbers that only grow.
func TestAuditAndChanges(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		ctx := WithActor(bg, "cli:root")
		_, now, err := r.Changes(bg, 0)
		if err != nil || now != 0 {
			t.Fatalf("fresh registry: Changes = %d, %v", now, err)
		}
		type step struct {
			action string
			kind   Kind
			do     func() error
		}
		var dev Device
		var inv Invite
		var secret string
		var rule Rule
		var pool Pool
		steps := []step{
			{"user.add", KindUser, func() error { _, err := r.AddUser(ctx, "alice"); return err }},
			{"group.add", KindGroup, func() error { _, err := r.AddGroup(ctx, "eng"); return err }},
			{"group.member.add", KindGroup, func() error { return r.AddMember(ctx, "eng", "alice") }},
			{"pool.add", KindPool, func() (err error) { pool, err = r.AddPool(ctx, netip.MustParsePrefix("100.64.0.0/24")); return err }},
			{"device.create", KindDevice, func() (err error) {
				dev, err = r.CreateDevice(ctx, "alice", DeviceSpec{Name: "laptop", PublicKey: key(1)})
				return err
			}},
			{"invite.create", KindInvite, func() (err error) { inv, secret, err = r.CreateInvite(ctx, "alice", time.Hour, 1); return err }},
			{"rule.add", KindRule, func() (err error) { rule, err = r.AddRule(ctx, "eng", must(ParseRule("198.18.2.0/24"))(t)); return err }},
			{"rule.remove", KindRule, func() error { return r.RemoveRule(ctx, rule.ID) }},
			{"gateway.add", KindGateway, func() error {
				_, err := r.AddGateway(ctx, Gateway{Name: "gw", PublicKey: key(7), Endpoint: "198.18.0.1:51820"})
				return err
			}},
			{"gateway.tls", KindGateway, func() error { return r.SetGatewayTLS(ctx, "gw", "https://198.18.0.1:443") }},
			{"gateway.remove", KindGateway, func() error { return r.RemoveGateway(ctx, "gw") }},
			{"device.rename", KindDevice, func() (err error) { dev, err = r.RenameDevice(ctx, dev.ID, "desk"); return err }},
			{"device.revoke", KindDevice, func() error { return r.RevokeDevice(ctx, dev.ID) }},
			{"invite.revoke", KindInvite, func() error { return r.RevokeInvite(ctx, inv.ID) }},
			{"group.member.remove", KindGroup, func() error { return r.RemoveMember(ctx, "eng", "alice") }},
			{"group.remove", KindGroup, func() error { return r.RemoveGroup(ctx, "eng") }},
			{"pool.remove", KindPool, func() error { return r.RemovePool(ctx, pool.ID) }},
			{"user.remove", KindUser, func() error { return r.RemoveUser(ctx, "alice") }},
		}
		_ = secret
		var lastAudit int64
		var lastSeq uint64
		for _, s := range steps {
			if err := s.do(); err != nil {
				t.Fatalf("%s: %v", s.action, err)
			}
			entries := must(r.Audit(bg, lastAudit, 100))(t)
			if len(entries) != 1 || entries[0].Action != s.action || entries[0].Actor != "cli:root" || entries[0].Target == "" || entries[0].At.IsZero() {
				t.Fatalf("%s: audit %+v, want one %s entry by cli:root", s.action, entries, s.action)
			}
			lastAudit = entries[0].ID
			changes, now, err := r.Changes(bg, lastSeq)
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) != 1 || changes[0].Kind != s.kind || changes[0].Seq != lastSeq+1 || now != lastSeq+1 {
				t.Fatalf("%s: changes since %d = %+v (now %d), want one %s change", s.action, lastSeq, changes, now, s.kind)
			}
			lastSeq = now
		}
		// A redeem records the invite's use and the device; no actor: system.
		must(r.AddUser(bg, "bob"))(t)
		must(r.AddPool(bg, netip.MustParsePrefix("100.64.1.0/24")))(t)
		_, secret = must3[Invite, string](t)(r.CreateInvite(bg, "bob", time.Hour, 1))
		_, lastSeq, _ = r.Changes(bg, 0)
		entries := must(r.Audit(bg, 0, 1000))(t)
		lastAudit = entries[len(entries)-1].ID
		must(r.Redeem(bg, secret, DeviceSpec{Name: "phone", PublicKey: key(2)}))(t)
		entries = must(r.Audit(bg, lastAudit, 100))(t)
		if len(entries) != 2 || entries[0].Action != "invite.redeem" || entries[1].Action != "device.create" || entries[1].Actor != "system" ||
			!strings.Contains(entries[1].Detail, "100.64.1.") {
			t.Errorf("redeem audit: %+v", entries)
		}
		changes, _, _ := r.Changes(bg, lastSeq)
		if len(changes) != 2 || changes[0].Kind != KindInvite || changes[1].Kind != KindDevice {
			t.Errorf("redeem changes: %+v", changes)
		}
		all, _, _ := r.Changes(bg, 0)
		for i := 1; i < len(all); i++ {
			if all[i].Seq != all[i-1].Seq+1 {
				t.Errorf("sequence gap or reorder: %d then %d", all[i-1].Seq, all[i].Seq)
			}
		}
		if _, err := r.Audit(bg, 0, 0); !errors.Is(err, ErrInvalid) {
			t.Errorf("Audit limit 0: %v", err)
		}
	})
}

func TestMigrations(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		must(r.AddUser(bg, "alice"))(t)
		r.Close()
		r2 := b.open(t, Options{}) // again: nothing to do, data kept
		if c := counts(t, r2); c["schema_version"] != SchemaVersion() || c["users"] != 1 {
			t.Errorf("after a second open: %v, want %d schema_version rows and the user", c, SchemaVersion())
		}
		if _, err := r2.db.Exec(r2.d.rebind("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)"),
			SchemaVersion()+1, "9999_future.sql", nowMicros()); err != nil {
			t.Fatal(err)
		}
		r2.Close()
		_, err := b.try(Options{})
		wantErr(t, err, ErrSchemaTooNew, "opening a newer database")
		if !strings.Contains(err.Error(), "upgrade") && !strings.Contains(err.Error(), "newer") {
			t.Errorf("error %q does not say what to do", err)
		}
	})
}

// TestConcurrentOpen opens a fresh database from four registries at once
// (gateways starting together): each must succeed and the schema must be
// migrated once.
func TestConcurrentOpen(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		const n = 4
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			go func() {
				r, err := b.try(Options{})
				if err == nil {
					_, err = r.AddUser(bg, fmt.Sprintf("user%d", i))
					r.Close()
				}
				errs <- err
			}()
		}
		for i := 0; i < n; i++ {
			if err := <-errs; err != nil {
				t.Errorf("concurrent open: %v", err)
			}
		}
		r := b.open(t, Options{})
		if c := counts(t, r); c["schema_version"] != SchemaVersion() || c["users"] != n {
			t.Errorf("after %d concurrent opens: %v", n, c)
		}
	})
}

func TestSQLitePragmas(t *testing.T) {
	reg, err := OpenSQLite(bg, t.TempDir()+"/r.db", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	r := reg.(*sqlRegistry)
	for pragma, want := range map[string]string{"journal_mode": "wal", "foreign_keys": "1", "busy_timeout": "10000"} {
		var got string
		if err := r.db.QueryRow("PRAGMA " + pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
	if _, err := OpenSQLite(bg, t.TempDir()+"/r.db?mode=ro", Options{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a path with '?': %v", err)
	}
	if _, err := OpenSQLite(bg, t.TempDir()+"/missing/dir/r.db", Options{}); err == nil {
		t.Errorf("a file in a missing folder opened")
	}
}

// TestMigrationUpgrade runs an upgrade from schema 1 with a second migration
// made up here: a failing one leaves schema 1 as it was (one transaction),
// a good one is applied once and the data stays.
func TestMigrationUpgrade(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		r := b.open(t, Options{})
		must(r.AddUser(bg, "alice"))(t)
		ms := must(migrations())(t)
		bad := append(ms[:len(ms):len(ms)], migration{version: len(ms) + 1, name: "0002_bad.sql",
			sql: "CREATE TABLE extra (id INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"})
		if err := migrateTo(bg, r.db, r.d, bad); err == nil || !strings.Contains(err.Error(), "0002_bad.sql") {
			t.Fatalf("a failing migration: %v, want an error naming it", err)
		}
		var n int
		if err := r.db.QueryRow("SELECT COUNT(*) FROM schema_version").Scan(&n); err != nil || n != len(ms) {
			t.Errorf("after a failed upgrade: %d schema_version rows (%v), want %d", n, err, len(ms))
		}
		if _, err := r.db.Exec("SELECT COUNT(*) FROM extra"); err == nil {
			t.Errorf("the failed migration's first statement was kept")
		}
		good := append(ms[:len(ms):len(ms)], migration{version: len(ms) + 1, name: "0002_good.sql",
			sql: "-- a comment\nCREATE TABLE extra (\n\tid {{ID}},\n\tdata {{BYTES}}\n);\nCREATE INDEX extra_data ON extra (data);\n"})
		for i := 0; i < 2; i++ {
			if err := migrateTo(bg, r.db, r.d, good); err != nil {
				t.Fatalf("upgrade, run %d: %v", i+1, err)
			}
		}
		if _, err := r.db.Exec("INSERT INTO extra (data) VALUES (NULL)"); err != nil {
			t.Errorf("the upgraded schema: %v", err)
		}
		if c := counts(t, r); c["schema_version"] != len(ms)+1 || c["users"] != 1 {
			t.Errorf("after the upgrade: %v", c)
		}
		// This binary knows only len(ms) versions: it refuses the upgraded database.
		_, err := b.try(Options{})
		wantErr(t, err, ErrSchemaTooNew, "a database one migration ahead")
	})
}
