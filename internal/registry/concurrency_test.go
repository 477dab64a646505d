package registry

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentEnrollment redeems one 100-use invite 100 times at once,
// through two registries on the same database (two *sql.DB: two gateways
// on one PostgreSQL, or two processes on one SQLite file). Every enrollment
// must succeed and no address may be handed out twice.
func TestConcurrentEnrollment(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		gwA := b.open(t, Options{})
		gwB := b.open(t, Options{})
		must(gwA.AddPool(bg, netip.MustParsePrefix("100.64.0.0/25")))(t)    // 125 usable
		must(gwA.AddPool(bg, netip.MustParsePrefix("2001:db8:7::/120")))(t) // 254 usable
		must(gwA.AddUser(bg, "alice"))(t)
		_, secret := must3[Invite, string](t)(gwA.CreateInvite(bg, "alice", time.Hour, 100))

		const n = 100
		devs, errs := enrollAll(n, func(ctx context.Context, i int) (Device, error) {
			gw := gwA
			if i%2 == 1 {
				gw = gwB
			}
			return gw.Redeem(ctx, secret, DeviceSpec{Name: fmt.Sprintf("dev%d", i), PublicKey: key(i + 1)})
		})
		for i, err := range errs {
			if err != nil {
				t.Errorf("enrollment %d: %v", i, err)
			}
		}
		checkUnique(t, devs, 2)
		if c := counts(t, gwB); c["devices"] != n || c["device_addresses"] != 2*n || c["uses_left"] != 0 || c["changes"] != 2*n+4 {
			t.Errorf("after %d enrollments: %v", n, c)
		}
		_, err := gwB.Redeem(bg, secret, DeviceSpec{Name: "late", PublicKey: key(n + 1)})
		wantErr(t, err, ErrInviteRefused, "the 101st use of a 100-use invite")
		t.Logf("%d concurrent enrollments over two connections: %d distinct IPv4 and IPv6 addresses each", n, n)
	})
}

// TestConcurrentExhaustion enrolls 130 devices at once into a pool with 125
// usable addresses: exactly 125 succeed, 5 get ErrPoolExhausted, and every
// address is given once.
func TestConcurrentExhaustion(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		gwA := b.open(t, Options{})
		gwB := b.open(t, Options{})
		must(gwA.AddPool(bg, netip.MustParsePrefix("100.64.1.0/25")))(t)
		must(gwA.AddUser(bg, "alice"))(t)
		const n = 130
		devs, errs := enrollAll(n, func(ctx context.Context, i int) (Device, error) {
			gw := gwA
			if i%2 == 1 {
				gw = gwB
			}
			return gw.CreateDevice(ctx, "alice", DeviceSpec{Name: fmt.Sprintf("dev%d", i), PublicKey: key(i + 1)})
		})
		var ok []Device
		exhausted := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok = append(ok, devs[i])
			case errors.Is(err, ErrPoolExhausted):
				exhausted++
			default:
				t.Errorf("enrollment %d: %v", i, err)
			}
		}
		if len(ok) != 125 || exhausted != 5 {
			t.Errorf("%d enrolled, %d refused as exhausted; want 125 and 5", len(ok), exhausted)
		}
		checkUnique(t, ok, 1)
		if c := counts(t, gwA); c["devices"] != len(ok) || c["device_addresses"] != len(ok) {
			t.Errorf("refused enrollments left rows: %v", c)
		}
	})
}

// enrollAll runs n enrollments at once, released together.
func enrollAll(n int, enroll func(ctx context.Context, i int) (Device, error)) ([]Device, []error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	devs := make([]Device, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			devs[i], errs[i] = enroll(ctx, i)
		}()
	}
	close(start)
	wg.Wait()
	return devs, errs
}

func checkUnique(t *testing.T, devs []Device, perDevice int) {
	t.Helper()
	owner := make(map[netip.Addr]string)
	for _, d := range devs {
		if len(d.Addresses) != perDevice {
			t.Errorf("device %s has %d addresses, want %d", d.Name, len(d.Addresses), perDevice)
		}
		for _, a := range d.Addresses {
			if other, dup := owner[a]; dup {
				t.Errorf("address %s given to %s and %s", a, other, d.Name)
			}
			owner[a] = d.Name
		}
	}
}

// TestRemoveUserDuringEnrollment removes a user while 40 enrollments for
// them run (20 by invite, 20 by CreateDevice, over two connections): every
// enrollment either happens before the removal (and its device is revoked
// with the user) or is refused; no active device of a removed user is left.
func TestRemoveUserDuringEnrollment(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		gwA := b.open(t, Options{})
		gwB := b.open(t, Options{})
		must(gwA.AddPool(bg, netip.MustParsePrefix("100.64.2.0/24")))(t)
		must(gwA.AddUser(bg, "alice"))(t)
		_, secret := must3[Invite, string](t)(gwA.CreateInvite(bg, "alice", time.Hour, 20))
		const n = 40
		removed := make(chan error, 1)
		_, errs := enrollAll(n, func(ctx context.Context, i int) (Device, error) {
			gw := gwA
			if i%2 == 1 {
				gw = gwB
			}
			if i == n/2 {
				removed <- gwB.RemoveUser(ctx, "alice")
			}
			spec := DeviceSpec{Name: fmt.Sprintf("dev%d", i), PublicKey: key(i + 1)}
			if i%4 < 2 {
				return gw.Redeem(ctx, secret, spec)
			}
			return gw.CreateDevice(ctx, "alice", spec)
		})
		if err := <-removed; err != nil {
			t.Fatalf("RemoveUser: %v", err)
		}
		for i, err := range errs {
			if err != nil && !errors.Is(err, ErrInviteRefused) && !errors.Is(err, ErrNotFound) {
				t.Errorf("enrollment %d: %v", i, err)
			}
		}
		all := must(gwA.ListDevices(bg, DeviceFilter{IncludeRevoked: true}))(t)
		for _, d := range all {
			if !d.Revoked() || len(d.Addresses) != 0 {
				t.Errorf("device %s of the removed user is active: %+v", d.Name, d)
			}
		}
		if c := counts(t, gwA); c["device_addresses"] != 0 || c["invites"] != 0 {
			t.Errorf("after removing the user: %v", c)
		}
		t.Logf("%d of %d enrollments happened before the removal (and were revoked with it)", len(all), n)
	})
}

// TestConcurrentRevoke revokes one device from two connections at once, ten
// times over: each time exactly one revoke succeeds and one audit row says so.
func TestConcurrentRevoke(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		gwA := b.open(t, Options{})
		gwB := b.open(t, Options{})
		must(gwA.AddPool(bg, netip.MustParsePrefix("100.64.3.0/24")))(t)
		must(gwA.AddUser(bg, "alice"))(t)
		for i := 0; i < 10; i++ {
			d := must(gwA.CreateDevice(bg, "alice", DeviceSpec{Name: "laptop", PublicKey: key(i + 1)}))(t)
			before := counts(t, gwA)
			_, errs := enrollAll(2, func(ctx context.Context, j int) (Device, error) {
				gw := []*sqlRegistry{gwA, gwB}[j]
				return Device{}, gw.RevokeDevice(ctx, d.ID)
			})
			okCount := 0
			for _, err := range errs {
				if err == nil {
					okCount++
				} else if !errors.Is(err, ErrNotFound) {
					t.Errorf("revoke: %v", err)
				}
			}
			after := counts(t, gwA)
			if okCount != 1 || after["audit"] != before["audit"]+1 || after["device_addresses"] != before["device_addresses"]-1 {
				t.Errorf("two revokes at once: %d succeeded, audit %d -> %d", okCount, before["audit"], after["audit"])
			}
		}
	})
}

// helperEnv makes the test binary a helper process for
// TestSQLiteTwoProcesses: PATH,FIRSTKEY enrolls 50 devices there.
const helperEnv = "PTUN_REGISTRY_TEST_ENROLL"

// TestSQLiteTwoProcesses enrolls 50 devices from this process and 50 from
// another at the same time into one SQLite file: the file's write lock
// (BEGIN IMMEDIATE, busy_timeout) must serialise them across processes.
func TestSQLiteTwoProcesses(t *testing.T) {
	if spec := os.Getenv(helperEnv); spec != "" {
		path, first, _ := strings.Cut(spec, ",")
		n, err := strconv.Atoi(first)
		if err != nil {
			t.Fatal(err)
		}
		enrollFifty(t, path, n)
		return
	}
	path := filepath.Join(t.TempDir(), "registry.db")
	r, err := OpenSQLite(bg, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	must(r.AddPool(bg, netip.MustParsePrefix("100.64.4.0/24")))(t)
	must(r.AddUser(bg, "alice"))(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestSQLiteTwoProcesses$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+path+",1000")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	enrollFifty(t, path, 0)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the other process: %v\n%s", err, out)
	}
	devs := must(r.ListDevices(bg, DeviceFilter{}))(t)
	if len(devs) != 100 {
		t.Errorf("%d devices, want 100", len(devs))
	}
	checkUnique(t, devs, 1)
}

func enrollFifty(t *testing.T, path string, first int) {
	r, err := OpenSQLite(bg, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, errs := enrollAll(50, func(ctx context.Context, i int) (Device, error) {
		return r.CreateDevice(ctx, "alice", DeviceSpec{Name: fmt.Sprintf("p%d", first+i), PublicKey: key(first + i + 1)})
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("enrollment %d in process %d: %v", i, os.Getpid(), err)
		}
	}
}
