package registry

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
)

// BenchmarkEnrollRevoke measures one enrollment (two addresses) and its
// revoke in a registry that holds 1,000 active devices, on each backend.
func BenchmarkEnrollRevoke(b *testing.B) {
	for _, name := range []string{"sqlite", "postgres"} {
		b.Run(name, func(b *testing.B) {
			var be backend
			if name == "sqlite" {
				path := filepath.Join(b.TempDir(), "registry.db")
				be.try = func(opts Options) (Registry, error) { return OpenSQLite(context.Background(), path, opts) }
			} else {
				dsn := postgresDatabase(b)
				be.try = func(opts Options) (Registry, error) { return OpenPostgres(context.Background(), dsn, opts) }
			}
			r := be.open(b, Options{})
			must(r.AddPool(bg, netip.MustParsePrefix("100.64.0.0/16")))(b)
			must(r.AddPool(bg, netip.MustParsePrefix("2001:db8:9::/64")))(b)
			must(r.AddUser(bg, "alice"))(b)
			for i := 0; i < 1000; i++ {
				must(r.CreateDevice(bg, "alice", DeviceSpec{Name: fmt.Sprintf("d%d", i), PublicKey: key(i + 1)}))(b)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d := must(r.CreateDevice(bg, "alice", DeviceSpec{Name: "extra", PublicKey: key(2000 + i)}))(b)
				if err := r.RevokeDevice(bg, d.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
