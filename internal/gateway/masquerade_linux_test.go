package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/testenv"
)

// TestMasqueradeAfterACrash: a gateway that starts where one died (its
// nftables table left behind, as after a SIGKILL and a restart by systemd)
// has one masquerade rule, not two, and removes the table when it stops.
func TestMasqueradeAfterACrash(t *testing.T) {
	testenv.RequireRoot(t)
	var b [4]byte
	rand.Read(b[:])
	ns, err := netns.New("ptun-gwtest-" + hex.EncodeToString(b[:]))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	const ifname = "ptun-gw"
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: "ptun_gateway_" + ifname}
	rules := func() (int, error) {
		c, err := nftables.New()
		if err != nil {
			return 0, err
		}
		rs, err := c.GetRules(table, &nftables.Chain{Name: "postrouting", Table: table})
		return len(rs), err
	}
	err = ns.Do(func() error {
		var crashed hostState // never undone
		if err := crashed.masquerade(ifname); err != nil {
			return err
		}
		var restarted hostState
		if err := restarted.masquerade(ifname); err != nil {
			return err
		}
		if n, err := rules(); err != nil || n != 1 {
			t.Errorf("after a restart: %d masquerade rules (%v), want 1", n, err)
		}
		restarted.undo(t.Logf)
		c, err := nftables.New()
		if err != nil {
			return err
		}
		ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, tb := range ts {
			if tb.Name == table.Name {
				t.Errorf("table %s is left after the gateway stopped", tb.Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestForwardingAfterACrash: a gateway that starts after one died with
// forwarding on (its host.json left behind) still puts back the value from
// before the first one when it stops, and removes the record.
func TestForwardingAfterACrash(t *testing.T) {
	testenv.RequireRoot(t)
	var b [4]byte
	rand.Read(b[:])
	ns, err := netns.New("ptun-gwtest-" + hex.EncodeToString(b[:]))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	record := filepath.Join(t.TempDir(), "host.json")
	const path = "/proc/sys/net/ipv4/ip_forward"
	read := func() string {
		b, _ := os.ReadFile(path)
		return strings.TrimSpace(string(b))
	}
	err = ns.Do(func() error {
		if v := read(); v != "0" {
			t.Fatalf("a new namespace forwards: %q", v)
		}
		crashed := hostState{record: record} // never undone
		if err := crashed.forward(); err != nil {
			return err
		}
		if v := read(); v != "1" {
			t.Errorf("forwarding after the first start: %q", v)
		}
		restarted := hostState{record: record}
		if err := restarted.forward(); err != nil {
			return err
		}
		restarted.undo(t.Logf)
		if v := read(); v != "0" {
			t.Errorf("forwarding after the restarted gateway stopped: %q, want the 0 from before the crash", v)
		}
		if _, err := os.Stat(record); !os.IsNotExist(err) {
			t.Errorf("host.json left after a clean stop: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
